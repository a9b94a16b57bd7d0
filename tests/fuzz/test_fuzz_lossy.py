"""Fuzzing of every lossy pass registered when the tests run.

For each random model the rewritten model must pass ``onnx.checker`` (full
check), load and run in onnxruntime at two sizes of every dynamic dimension with
the original's output shapes and dtypes, and keep its input/output names,
element types and ranks. Where the pass reports an error statistic (a stats key
containing ``error``), it must match the error measured on the written model;
a pass reporting one that this module cannot measure fails the test, so that no
statistic goes unchecked silently.

The lossy passes are discovered from the registry (``cls.lossless is False``);
every one gets the calibration data (the feeds of both sizes) in its Context.
"""
from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import event, given
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxpress.graph import iter_proto_graphs
from onnxpress.passes import Context, make_pass, registered_passes
from tests.fuzz.checks import assert_same_kinds, check_valid, copy_model, reference, run_sizes, signature
from tests.fuzz.strategies import FuzzModel, onnx_models

LOSSY = sorted(name for name, cls in registered_passes().items() if not cls.lossless)

# Options that make the fuzzed models (small weights) exercise a pass; a pass not
# listed runs with its defaults.
OPTIONS: dict[str, list[dict]] = {
    "quantize-int4-weights": [
        {"min_elements": 0, "block_size": 16},
        {"min_elements": 0, "block_size": 16, "format": "qdq", "symmetric": False},
    ],
}

CASES = [(name, opts) for name in LOSSY for opts in OPTIONS.get(name, [{}])]


def _case_id(case) -> str:
    name, opts = case
    return name + "".join(f"-{k}={v}" for k, v in opts.items() if k != "min_elements")


def test_lossy_passes_are_discovered() -> None:
    assert LOSSY, "no lossy pass registered"
    assert "convert-fp16" in LOSSY


# --------------------------------------------------------------- measurement
def _initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: nh.to_array(t) for g in iter_proto_graphs(proto.graph) for t in g.initializer}


def _nodes(proto: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for g in iter_proto_graphs(proto.graph) for n in g.node if n.name}


def _run_single(node: onnx.NodeProto, feeds: dict, inits: list[onnx.TensorProto], opsets, ir: int) -> np.ndarray:
    """Run one node in onnxruntime (outputs of unknown shape and type)."""
    g = h.make_graph(
        [node],
        "probe",
        [h.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in feeds.items()],
        [onnx.ValueInfoProto(name=node.output[0])],
        initializer=inits,
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid(d, v) for d, v in opsets], ir_version=ir)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _init_protos(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for g in iter_proto_graphs(proto.graph) for t in g.initializer}


def _dequantized(out: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """The weight a quantized MatMul/Gemm really uses, read back through onnxruntime:
    ``[K, N]`` for MatMulNBits, the stored layout for a DequantizeLinear input."""
    inits = _init_protos(out)
    if node.op_type == "MatMulNBits":
        attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
        k = int(attrs["K"])
        probe = h.make_node("MatMulNBits", ["eye", *node.input[1:]], ["w"], domain="com.microsoft", **attrs)
        dtype = nh.to_array(inits[node.input[2]]).dtype
        used = [inits[i] for i in node.input[1:] if i]
        return _run_single(
            probe, {"eye": np.eye(k, dtype=dtype)}, used, [("", 17), ("com.microsoft", 1)], 8
        ).astype(np.float64)
    producers = {o: n for g in iter_proto_graphs(out.graph) for n in g.node for o in n.output}
    dq = producers[node.input[1]]
    assert dq.op_type == "DequantizeLinear", f"{node.name}: weight comes from {dq.op_type}"
    probe = onnx.NodeProto()
    probe.CopyFrom(dq)
    used = [inits[i] for i in dq.input if i]
    opset = next(o.version for o in out.opset_import if o.domain in ("", "ai.onnx"))
    return _run_single(probe, {}, used, [("", opset)], out.ir_version).astype(np.float64)


def _close(reported: float, measured: float) -> bool:
    return abs(reported - measured) <= 1e-3 * max(abs(measured), abs(reported)) + 1e-6


def measure_int4(orig: onnx.ModelProto, out: onnx.ModelProto, stats: dict) -> list[str]:
    """Check quantize-int4-weights' error statistics against the written model."""
    problems = []
    nodes_o, nodes_n, weights = _nodes(orig), _nodes(out), _initializers(orig)
    layers = [k[len("layer.") : -len(".max_abs_error")] for k in stats if k.startswith("layer.") and k.endswith(".max_abs_error")]
    quantized = [n for n in nodes_n.values() if n.op_type == "MatMulNBits"]
    producers = {o: n for g in iter_proto_graphs(out.graph) for n in g.node for o in n.output}
    quantized += [
        n for n in nodes_n.values()
        if n.op_type in ("MatMul", "Gemm") and getattr(producers.get(n.input[1]), "op_type", None) == "DequantizeLinear"
    ]
    if stats.get("layers_quantized", 0) != len(quantized):
        problems.append(f"layers_quantized={stats.get('layers_quantized')} but {len(quantized)} quantized nodes")
    overall_max, num, den, seen = 0.0, 0.0, 0.0, set()
    for name in layers:
        if name not in nodes_o or name not in nodes_n:
            problems.append(f"layer {name!r}: no such node in the original and the written model")
            continue
        o, n = nodes_o[name], nodes_n[name]
        w = weights[o.input[1]].astype(np.float64)
        attrs = {a.name: h.get_attribute_value(a) for a in o.attribute}
        deq = _dequantized(out, n)
        if n.op_type == "MatMulNBits":
            ref = (w.T if attrs.get("transB", 0) else w) * float(attrs.get("alpha", 1.0))
            key = n.input[1]
        else:
            ref = w
            key = n.input[1]
        err = np.abs(deq - ref)
        measured_max = float(err.max())
        measured_rel = float(np.linalg.norm(err) / np.linalg.norm(ref)) if np.linalg.norm(ref) else 0.0
        for stat, measured in (("max_abs_error", measured_max), ("rel_fro_error", measured_rel)):
            reported = stats[f"layer.{name}.{stat}"]
            if not _close(reported, measured):
                problems.append(f"layer {name}: {stat} reported {reported:.6g}, measured {measured:.6g}")
        overall_max = max(overall_max, measured_max)
        if key not in seen:
            seen.add(key)
            num += float(np.sum(err**2))
            den += float(np.sum(ref**2))
    if layers:
        if not _close(stats["weight_max_abs_error"], overall_max):
            problems.append(f"weight_max_abs_error reported {stats['weight_max_abs_error']:.6g}, measured {overall_max:.6g}")
        rel = float(np.sqrt(num / den)) if den else 0.0
        if not _close(stats["weight_rel_fro_error"], rel):
            problems.append(f"weight_rel_fro_error reported {stats['weight_rel_fro_error']:.6g}, measured {rel:.6g}")
    return problems


_FP16_SUFFIX = re.compile(r"_fp16(__\d+)?$")


def measure_fp16(orig: onnx.ModelProto, out: onnx.ModelProto, stats: dict) -> list[str]:
    """Check convert-fp16's weight error statistics against the written model's
    float16 initializers, each matched to the float32 original it came from."""
    problems = []
    before = _initializers(orig)
    after = {k: v for k, v in _initializers(out).items() if v.dtype == np.float16}
    max_err, err_sq, ref_sq = 0.0, 0.0, 0.0
    for name, arr16 in after.items():
        src = before.get(name)
        if src is None or src.dtype != np.float32:
            src = before.get(_FP16_SUFFIX.sub("", name))
        if src is None or src.dtype != np.float32 or src.shape != arr16.shape:
            problems.append(f"float16 initializer {name!r} matches no float32 original")
            continue
        fin = np.isfinite(src)
        diff = np.abs(arr16.astype(np.float64)[fin] - src.astype(np.float64)[fin])
        if diff.size:
            max_err = max(max_err, float(diff.max()))
            err_sq += float(np.sum(diff**2))
            ref_sq += float(np.sum(src.astype(np.float64)[fin] ** 2))
    if stats.get("weights_converted", 0) != len(after):
        problems.append(f"weights_converted={stats.get('weights_converted')} but {len(after)} float16 initializers")
    rel = float(np.sqrt(err_sq / ref_sq)) if ref_sq else 0.0
    for key, measured in (("weight_max_abs_error", max_err), ("weight_rel_fro_error", rel)):
        if key in stats and not _close(stats[key], measured):
            problems.append(f"{key} reported {stats[key]:.6g}, measured {measured:.6g}")
    return problems


MEASURERS = {"quantize-int4-weights": measure_int4, "convert-fp16": measure_fp16}


# --------------------------------------------------------------------- test
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
@given(fm=onnx_models())
def test_lossy_pass(case, fm: FuzzModel) -> None:
    name, options = case
    ref = reference(fm)
    model = copy_model(fm.proto)
    result = make_pass(name, **options).run(model, Context(calibration=list(fm.feeds)))
    event(f"{name}: modified={result.modified}")
    out = model.to_proto()
    sess = check_valid(out, name)
    assert signature(out) == signature(fm.proto), f"{name}: the input/output signature changed"
    assert_same_kinds(ref, run_sizes(sess, fm.feeds), name)
    error_keys = sorted(k for k in result.stats if "error" in k)
    if not error_keys:
        return
    measure = MEASURERS.get(name)
    assert measure is not None, (
        f"{name} reports error statistics {error_keys} that tests/fuzz/test_fuzz_lossy.py cannot "
        "measure: add a measurer to MEASURERS"
    )
    problems = measure(fm.proto, out, result.stats)
    assert not problems, f"{name}: " + "; ".join(problems)
