"""prune-channels at 30% on the real CNN models of shared/MODELS.md, on real inputs.

Each model is first brought to the lossless fixed point (pruning wants the
simplified graph: before it, run-time ``Shape`` arithmetic pins more groups),
then ``prune-channels`` runs (ratio 0.3, activation-aware importance from real
calibration inputs, seed 100) in strict mode. The result must pass ``onnx.checker`` full check, load in onnxruntime,
keep its interface and metadata, run on real inputs (seed 7) with unchanged
output shapes, and cost far fewer MACs. Latency (1 thread, median) and the task
metric without distillation are printed; the metric guards are set at the
measured levels (pruning alone, before any distillation, wrecks the compact OCR
networks at 30%: that is what the ``distill`` pass is for).
"""
from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxpress
from onnxpress.runtime_check import make_session
from onnxpress.testing import realmodels as rm

pytestmark = pytest.mark.real

MODELS = ["magika", "ppocr_det", "ppocr_rec", "ddddocr"]
N_CALIB = {"magika": 16, "ppocr_det": 4, "ppocr_rec": 16, "ddddocr": 8}
N_EVAL = {"magika": 64, "ppocr_det": 8, "ppocr_rec": 48, "ddddocr": 32}
# MACs after / before, measured 0.512, 0.504, 0.567, 0.728.
MAX_MACS_FRACTION = {"magika": 0.53, "ppocr_det": 0.52, "ppocr_rec": 0.59, "ddddocr": 0.75}
# (groups, pruned) as measured; every skipped group is pinned by a graph output,
# an attention-head Reshape or a softmax over channels (see test_report_reasons).
GROUPS = {"magika": (3, 2), "ppocr_det": (37, 36), "ppocr_rec": (27, 24), "ddddocr": (14, 13)}


@pytest.fixture(scope="module", params=MODELS)
def pruned(request):
    name = request.param
    path = rm.fetch(name)
    calib = rm.real_inputs(name, n=N_CALIB[name], seed=100)
    simplified = onnxpress.optimize(str(path), recipe="lossless").model
    result = onnxpress.optimize(
        simplified,
        passes=["prune-channels"],
        calibration=calib,
        strict=True,
        prune_channels={"ratio": 0.3, "importance": "activation"},
    )
    stats = next(r.stats for r in result.records if r.name == "prune-channels" and r.modified)
    return name, path, result, stats


def test_valid_smaller_model_with_the_same_interface(pruned):
    name, path, result, stats = pruned
    onnx.checker.check_model(result.model, full_check=True)
    make_session(result.model, "disabled")
    original = onnx.load(str(path))
    assert [i.name for i in result.model.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in result.model.graph.output] == [o.name for o in original.graph.output]
    assert {p.key: p.value for p in result.model.metadata_props} == {p.key: p.value for p in original.metadata_props}
    print(
        f"{name}: MACs {result.before.macs} -> {result.after.macs} ({result.after.macs / result.before.macs:.3f}), "
        f"params {result.before.params} -> {result.after.params}, groups {stats['groups']} "
        f"pruned {stats['groups_pruned']} skipped {stats['groups_skipped']}, channels removed {stats['channels_removed']}"
    )
    assert (stats["macs_before"], stats["macs_after"]) == (result.before.macs, result.after.macs)
    assert result.after.macs <= MAX_MACS_FRACTION[name] * result.before.macs
    assert result.after.params < 0.95 * result.before.params
    assert (stats["groups"], stats["groups_pruned"]) == GROUPS[name]


def test_report_reasons(pruned):
    name, _, result, stats = pruned
    skipped = {k[8:]: v for k, v in stats.items() if k.startswith("skipped.")}
    print(f"{name}: skipped groups by reason {skipped}")
    assert sum(skipped.values()) == stats["groups_skipped"]
    for reason in skipped:
        assert any(word in reason for word in ("graph_output", "splits_the_channel_axis", "normalizes_over_the_channel", "shapes_unknown"))


def test_runs_on_real_inputs_with_unchanged_output_shapes(pruned):
    name, path, result, _ = pruned
    feeds, labels = rm.real_inputs_with_labels(name, n=N_EVAL[name], seed=7)
    a, b = make_session(onnx.load(str(path)), "enabled"), make_session(result.model, "enabled")
    ref = [a.run(None, f) for f in feeds]
    got = [b.run(None, f) for f in feeds]
    for r, g in zip(ref, got):
        assert [x.shape for x in r] == [x.shape for x in g]
        assert all(np.isfinite(x).all() for x in g)
    if name == "magika":
        names = rm.magika_labels(path.with_name("config.min.json"))
        acc = lambda outs: np.mean([names[o[0][0].argmax()] == y for o, y in zip(outs, labels)])
        metric = f"accuracy fp32 {acc(ref):.3f} -> pruned {acc(got):.3f}"
        assert acc(got) >= acc(ref) - 0.05  # measured 1.000 -> 1.000
    elif name == "ppocr_det":
        inter = sum(np.sum((r[0] > 0.3) & (g[0] > 0.3)) for r, g in zip(ref, got))
        union = sum(np.sum((r[0] > 0.3) | (g[0] > 0.3)) for r, g in zip(ref, got))
        metric = f"text-map IoU vs fp32 {inter / max(union, 1):.3f}"
    else:
        decode = rm.ctc_decode_ppocr if name == "ppocr_rec" else rm.ctc_decode_ddddocr
        rate = lambda outs: np.mean([decode(path, o[0]) == y for o, y in zip(outs, labels)])
        metric = f"exact-string rate fp32 {rate(ref):.3f} -> pruned {rate(got):.3f}"
    print(f"{name} at 30% without distillation: {metric}")


def _median_latency(models: list[onnx.ModelProto], feed: dict, reps: int = 25) -> list[float]:
    sessions = []
    for m in models:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sessions.append(ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"]))
    times: list[list[float]] = [[] for _ in sessions]
    for s in sessions:
        for _ in range(3):
            s.run(None, feed)
    for _ in range(reps):  # interleaved, so load on the machine hits both alike
        for s, t in zip(sessions, times):
            start = time.perf_counter()
            s.run(None, feed)
            t.append(time.perf_counter() - start)
    return [float(np.median(t)) for t in times]


@pytest.mark.parametrize("name,max_ratio", [("magika", 0.75), ("ppocr_det", 1.0)])
def test_latency_drops(name, max_ratio):
    path = rm.fetch(name)
    simplified = onnxpress.optimize(str(path), recipe="lossless").model
    result = onnxpress.optimize(simplified, passes=["prune-channels"], prune_channels={"ratio": 0.3})
    feed = rm.real_inputs(name, n=1, seed=0)[0]
    original, after = _median_latency([onnx.load(str(path)), result.model], feed)
    print(f"{name}: latency 1 thread, median: fp32 {original * 1e3:.2f} ms, pruned 30% {after * 1e3:.2f} ms, ratio {after / original:.3f}")
    assert after <= max_ratio * original


def test_global_allocation_on_magika():
    """allocation="global" on magika: 30% of all prunable channels removed, shared
    between its two prunable groups by measured sensitivity (activation
    importance, 4 calibration samples per trial), no group past max_ratio; the
    model is valid and keeps fp32's top-1 on real inputs."""
    name = "magika"
    path = rm.fetch(name)
    calib = rm.real_inputs(name, n=N_CALIB[name], seed=100)
    simplified = onnxpress.optimize(str(path), recipe="lossless").model
    options = {"ratio": 0.3, "importance": "activation", "allocation": "global", "max_ratio": 0.6, "sensitivity_samples": 4}
    result = onnxpress.optimize(simplified, passes=["prune-channels"], calibration=calib, strict=True, prune_channels=options)
    stats = next(r.stats for r in result.records if r.name == "prune-channels" and r.modified)
    onnx.checker.check_model(result.model, full_check=True)
    removed = {k: v for k, v in stats.items() if k.startswith("removed.")}
    sizes = {"Dense_0": 64, "Conv_0": 512}
    feeds = rm.real_inputs(name, n=N_EVAL[name], seed=7)
    a, b = make_session(onnx.load(str(path)), "enabled"), make_session(result.model, "enabled")
    agree = np.mean([a.run(None, f)[0].argmax() == b.run(None, f)[0].argmax() for f in feeds])
    print(f"magika global 30%: removed {removed} of {stats['prunable']}, MACs {stats['macs_after'] / stats['macs_before']:.3f}, "
          f"top-1 agreement with fp32 {agree:.3f}")
    assert stats["prunable"] == 576
    assert stats["channels_removed"] == round(0.3 * 576)
    for key, n in removed.items():
        size = next(v for k, v in sizes.items() if k in key)
        assert n <= int(0.6 * size)
    assert stats["sensitivity_trials"] >= 10
    assert agree >= 0.95  # measured 1.000 (uniform L1 at 30%: 0.859)
