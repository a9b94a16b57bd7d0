"""The onnxpress worker: runs batches of onnxruntime jobs for a check target.

This file is sent to the target as it is, so it imports only onnxruntime, numpy
and the standard library, and runs on CPython 3.8+. It serves one whole check in
one process (an emulated start costs about 2 s): it reads requests from stdin
and answers on stdout until stdin closes.

It runs
- under the emulated aarch64 python (``qemu-aarch64 ... python3.11 worker.py``);
  requests and answers are then npz files in a temporary folder that host and
  guest share (host paths resolve in the guest), and models are passed by path;
- on a remote board through a runner command (``ssh pi@board python3``), which
  starts it with ``-c BOOTSTRAP`` and sends this source first over stdin; the
  npz files then travel inline over stdin/stdout;
- in-process (the host's own targets call :func:`run_job` directly).

Framing: every message is one header line ``ONNXPRESS-WORKER/1 KIND LENGTH\\n``
and LENGTH bytes. The worker first sends ``hello`` (JSON: python, machine,
onnxruntime, numpy, available providers). The host sends ``npz`` (a request
npz) or ``file`` (JSON ``{"request": path, "response": path}``) or ``quit``; the
worker answers ``npz`` (a response npz), ``file`` (JSON ``{"response": path}``)
or ``error`` (a batch-level failure, as text). Anything printed by onnxruntime
or by a model goes to stderr: stdout carries frames only.

Request npz: ``__jobs__`` (uint8, UTF-8 JSON list of jobs: ``model`` (path or
null), ``feeds`` (per feed, the input names), ``level`` (``disabled`` or
``enabled``), ``threads``, ``repeats``, ``outputs`` (names or null),
``providers``) plus arrays ``model_J`` (the model bytes, uint8, when ``model``
is null) and ``feed_J_K_I`` (job J, feed K, input I). Response npz:
``__results__`` (JSON list: ``output_names``, ``feeds_done``, ``times``,
``error``, ``providers``) plus ``out_J_K_O``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import sys
import time

import numpy as np

PROTOCOL = b"ONNXPRESS-WORKER/1"
LEVELS = ("disabled", "enabled")
_SESSIONS: dict = {}  # (model key, level, threads, providers) -> session; small LRU
_MAX_SESSIONS = 8


# --------------------------------------------------------------------------
# Framing
# --------------------------------------------------------------------------


def write_frame(stream, kind: str, payload: bytes) -> None:
    stream.write(PROTOCOL + b" " + kind.encode() + b" " + str(len(payload)).encode() + b"\n")
    stream.write(payload)
    stream.flush()


def read_frame(stream):
    """(kind, payload) of the next frame, or (None, b"") at end of stream."""
    header = stream.readline()
    if not header:
        return None, b""
    parts = header.split()
    if len(parts) != 3 or parts[0] != PROTOCOL:
        raise ValueError(f"bad frame header {header[:80]!r}")
    n = int(parts[2])
    payload = stream.read(n) if n else b""
    if len(payload) != n:
        raise ValueError(f"truncated frame: {len(payload)} of {n} bytes")
    return parts[1].decode(), payload


# --------------------------------------------------------------------------
# npz encoding (shared with the host side)
# --------------------------------------------------------------------------


def _json_array(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode("utf-8"), dtype=np.uint8)


def _from_json_array(arr: np.ndarray):
    return json.loads(arr.tobytes().decode("utf-8"))


def _savable(arr) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == object:
        if all(isinstance(x, str) for x in arr.flat):
            return arr.astype(str)
        raise TypeError("a non-tensor value (sequence or map) cannot be sent back")
    return arr


def save_npz(arrays: dict, target=None) -> bytes | None:
    """np.savez ``arrays`` to ``target`` (a path) or to bytes (returned)."""
    if target is not None:
        with open(target, "wb") as fh:
            np.savez(fh, **arrays)
        return None
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_npz(source) -> dict:
    """Every array of an npz (path or bytes), loaded into memory, no pickles."""
    fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")
    with fh, np.load(fh, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def encode_request(jobs: list) -> dict:
    """Arrays of a request npz for plain jobs (dicts with ``model`` as bytes or
    path, ``feeds`` as a list of {name: array}, and the other job fields)."""
    arrays = {}
    meta = []
    for j, job in enumerate(jobs):
        model = job["model"]
        if isinstance(model, (bytes, bytearray, memoryview)):
            arrays[f"model_{j}"] = np.frombuffer(bytes(model), dtype=np.uint8)
            model = None
        names = []
        for k, feed in enumerate(job["feeds"]):
            names.append(list(feed))
            for i, name in enumerate(feed):
                arrays[f"feed_{j}_{k}_{i}"] = _savable(feed[name])
        meta.append({
            "model": model, "feeds": names, "level": job.get("level", "disabled"),
            "threads": int(job.get("threads", 1)), "repeats": int(job.get("repeats", 0)),
            "outputs": job.get("outputs"), "providers": list(job.get("providers") or ["CPUExecutionProvider"]),
        })
    arrays["__jobs__"] = _json_array(meta)
    return arrays


def decode_request(arrays: dict) -> list:
    jobs = []
    for j, meta in enumerate(_from_json_array(arrays["__jobs__"])):
        job = dict(meta)
        if job["model"] is None:
            job["model"] = arrays[f"model_{j}"].tobytes()
        job["feeds"] = [{name: arrays[f"feed_{j}_{k}_{i}"] for i, name in enumerate(names)}
                        for k, names in enumerate(meta["feeds"])]
        jobs.append(job)
    return jobs


def encode_response(results: list) -> dict:
    arrays = {}
    meta = []
    for j, res in enumerate(results):
        error = res.get("error")
        done = 0
        try:
            for k, outs in enumerate(res["outputs"]):
                for o, arr in enumerate(outs):
                    arrays[f"out_{j}_{k}_{o}"] = _savable(arr)
                done = k + 1
        except TypeError as exc:
            for key in [a for a in arrays if a.startswith(f"out_{j}_{done}_")]:
                del arrays[key]
            error = error or f"run: {exc}"
        meta.append({"output_names": res["output_names"], "feeds_done": done, "times": res["times"],
                     "error": error, "providers": res["providers"]})
    arrays["__results__"] = _json_array(meta)
    return arrays


def decode_response(arrays: dict) -> list:
    results = []
    for j, meta in enumerate(_from_json_array(arrays["__results__"])):
        n_out = len(meta["output_names"])
        outputs = [[arrays[f"out_{j}_{k}_{o}"] for o in range(n_out)] for k in range(meta["feeds_done"])]
        results.append({"outputs": outputs, "output_names": meta["output_names"], "times": meta["times"],
                        "error": meta["error"], "providers": meta["providers"]})
    return results


# --------------------------------------------------------------------------
# Running jobs
# --------------------------------------------------------------------------


def _first_lines(exc: BaseException, n: int = 12) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    return "\n".join(lines[:n]) + ("\n..." if len(lines) > n else "")


def _model_key(model) -> str:
    if isinstance(model, (bytes, bytearray)):
        return "sha1:" + hashlib.sha1(model).hexdigest()
    st = os.stat(model)
    return f"path:{os.path.abspath(model)}:{st.st_mtime_ns}:{st.st_size}"


def _session(ort, model, level: str, threads: int, providers: list):
    if level not in LEVELS:
        raise ValueError(f"unknown graph optimization level {level!r} (use {' or '.join(LEVELS)})")
    available = ort.get_available_providers()
    missing = [p for p in providers if p not in available]
    if missing:
        raise RuntimeError(f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                           f"{ort.__version__} on {platform.machine()}; available: {', '.join(available)}")
    key = (_model_key(model), level, threads, tuple(providers))
    sess = _SESSIONS.pop(key, None)
    if sess is None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_DISABLE_ALL if level == "disabled" else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        )
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model if isinstance(model, str) else bytes(model), opts, providers=providers)
        used = sess.get_providers()
        lost = [p for p in providers if p not in used]
        if lost:
            raise RuntimeError(f"onnxruntime did not use the requested execution provider(s) {', '.join(lost)} "
                               f"(session providers: {', '.join(used)}); no fallback is accepted")
    _SESSIONS[key] = sess
    while len(_SESSIONS) > _MAX_SESSIONS:
        del _SESSIONS[next(iter(_SESSIONS))]
    return sess


def run_job(job: dict) -> dict:
    """Run one plain job; never raises. Returns a dict with ``outputs`` (per
    feed done, per output), ``output_names``, ``times`` (seconds of the timed
    runs, after one warm-up on the first feed), ``error`` (``None``, or text
    starting with ``load:`` or ``run (feed K):`` or ``timing:``) and
    ``providers`` (the session's)."""
    import onnxruntime as ort

    result = {"outputs": [], "output_names": [], "times": [], "error": None, "providers": []}
    providers = list(job.get("providers") or ["CPUExecutionProvider"])
    try:
        sess = _session(ort, job["model"], job.get("level", "disabled"), int(job.get("threads", 1)), providers)
    except Exception as exc:  # noqa: BLE001 - reported per job
        result["error"] = f"load: {_first_lines(exc)}"
        return result
    result["providers"] = sess.get_providers()
    names = list(job.get("outputs") or [o.name for o in sess.get_outputs()])
    result["output_names"] = names
    feeds = job["feeds"]
    for k, feed in enumerate(feeds):
        try:
            result["outputs"].append(list(sess.run(names, feed)))
        except Exception as exc:  # noqa: BLE001
            result["error"] = f"run (feed {k}): {_first_lines(exc)}"
            return result
    repeats = int(job.get("repeats", 0))
    if repeats > 0 and feeds:
        try:
            sess.run(names, feeds[0])  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                sess.run(names, feeds[0])
                times.append(time.perf_counter() - t0)
            result["times"] = times
        except Exception as exc:  # noqa: BLE001
            result["error"] = f"timing: {_first_lines(exc)}"
    return result


def run_jobs(jobs: list) -> list:
    return [run_job(job) for job in jobs]


def info() -> dict:
    import onnxruntime as ort

    return {"python": platform.python_version(), "machine": platform.machine(), "system": platform.system(),
            "onnxruntime": ort.__version__, "numpy": np.__version__,
            "providers": ort.get_available_providers(), "pid": os.getpid()}


# --------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------


def serve(inp, out) -> int:
    t0 = time.perf_counter()
    hello = info()
    hello["startup_s"] = time.perf_counter() - t0
    write_frame(out, "hello", json.dumps(hello).encode())
    while True:
        kind, payload = read_frame(inp)
        if kind is None or kind == "quit":
            return 0
        try:
            if kind == "npz":
                results = run_jobs(decode_request(load_npz(payload)))
                write_frame(out, "npz", save_npz(encode_response(results)))
            elif kind == "file":
                paths = json.loads(payload.decode())
                results = run_jobs(decode_request(load_npz(paths["request"])))
                save_npz(encode_response(results), paths["response"])
                write_frame(out, "file", json.dumps({"response": paths["response"]}).encode())
            else:
                raise ValueError(f"unknown request kind {kind!r}")
        except Exception as exc:  # noqa: BLE001 - the host reports it
            write_frame(out, "error", f"{type(exc).__name__}: {_first_lines(exc)}".encode())


def main(argv=None) -> int:
    # stdout carries frames only: anything else written to fd 1 (onnxruntime,
    # a custom op, print) goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, out)


#: What a runner command gets with ``-c``: reads the worker source (length line,
#: then the source) from stdin and serves on the same stdin/stdout.
BOOTSTRAP = (
    "import sys;r=sys.stdin.buffer;n=int(r.readline());g={'__name__':'onnxpress_worker'};"
    "exec(compile(r.read(n),'onnxpress_worker.py','exec'),g);sys.exit(g['main']())"
)

if __name__ == "__main__":
    sys.exit(main())
