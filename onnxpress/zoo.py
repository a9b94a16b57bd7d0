"""Batch optimization of a folder of models: ``onnxpress zoo DIR -o OUT``.

Every ``.onnx`` under ``DIR`` (recursively, with its external data) is
optimized by :func:`run_job` in a worker process of its own: a local process
started with ``spawn`` (:func:`run_zoo`), or a Ray task when ``ray_address`` is
given (``onnxpress zoo --ray ADDRESS|auto|local``; ``pip install onnxpress[ray]``).
Both run the same function on the same :class:`ZooJob`, so their results agree
(byte-identical outputs, tested). On a Ray cluster, the model folder, the output
folder and the calibration paths must lie on a filesystem every node sees (the
jobs carry absolute paths, not data), and onnxpress must be installed on every
node; at most ``workers`` tasks (default: the cluster's CPUs) are in flight, one
CPU each, so a task's timeout counts from about its start.

* A model that fails, hangs past ``timeout`` seconds (its worker is killed) or
  crashes its worker (a segfault, the OOM killer) is recorded as failed; the
  others go on.
* Results are written atomically: the worker saves into a staging folder under
  ``OUT/.onnxpress-zoo/``, and the main process renames the external data and
  then the model into ``OUT/<same relative path>``. A failed model leaves no
  output (a stale output of an earlier run is removed), a killed worker leaves
  nothing partial.
* With ``resume``, a model is skipped when the record of its last run (in
  ``OUT/.onnxpress-zoo/records/``) has the same input hash (sha256 of the model
  file and of its external-data files) and the same configuration hash (the
  recipe's TOML text, calibration and check settings, onnxpress version) and
  its outputs are still there. Timeouts and crashes are always retried; other
  failures only with ``retry_failed`` (on the same input and configuration they
  fail again).
* Calibration data per model comes from a TOML map (``--calib-map``): the first
  glob matching the model's path relative to ``DIR`` (``fnmatch``: ``*`` crosses
  ``/``) wins::

      # map.toml; relative paths are relative to this file's folder
      "vision/*.onnx" = "calib/vision/"            # a calibration source
      ["speech/vad*.onnx"]                          # or a table
      calibration = "calib/vad.npz"
      data = "eval/vad/"                            # feeds for the check
      limit = 32                                    # at most 32 calibration samples
      dims = { batch = 1, sequence = 64 }           # symbolic dims of random feeds

  The check after optimizing runs on ``data``, else on the first samples of the
  calibration data, else on seeded random feeds.
* Reports: ``<report>.json`` and ``<report>.csv`` (default ``OUT/zoo-report``),
  one row per model with status, error, sizes, node counts, parameters, latency
  before and after (ms, onnxruntime optimizations on, 1 thread) and the check's
  metrics; :func:`summary_table` formats them for the terminal.

Statuses: ``ok``; ``check_failed`` (the optimized model was written but missed
the recipe's tolerances); ``failed`` (an error, nothing written); ``timeout``;
``crashed``. A run succeeds when every model is ``ok``.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import fnmatch
import hashlib
import io
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from .errors import InputError

__all__ = [
    "CalibEntry",
    "ZooJob",
    "ZooRun",
    "FIELDS",
    "discover",
    "input_sha256",
    "load_calib_map",
    "run_job",
    "run_zoo",
    "summary_table",
]

logger = logging.getLogger(__name__)

STATE_DIR = ".onnxpress-zoo"
OK_STATUSES = ("ok",)
#: Inputs larger than this (bytes, external data included) are optimized and
#: written without the check (onnxruntime cannot take them serialized).
CHECK_MAX_BYTES = 2**31 - (64 << 20)
#: Statuses that are retried by ``resume`` whatever the hashes say.
TRANSIENT_STATUSES = ("timeout", "crashed")

#: Columns of the CSV report (the JSON report has the same keys per model).
FIELDS = (
    "model",
    "status",
    "error",
    "error_type",
    "input_bytes",
    "output_bytes",
    "nodes_before",
    "nodes_after",
    "params_before",
    "params_after",
    "weight_bytes_before",
    "weight_bytes_after",
    "latency_ms_before",
    "latency_ms_after",
    "check_passed",
    "check_feeds",
    "check_max_abs",
    "check_mean_abs",
    "check_min_cosine",
    "check_min_snr_db",
    "calibration",
    "seconds_passes",
    "seconds",
    "resumed",
    "note",
    "input_sha256",
    "config_sha256",
    "output_sha256",
)


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibEntry:
    """Per-model settings from the calibration map.

    Attributes:
        pattern: the glob that matched ("" for the ``--calib`` default).
        calibration: calibration source (see
            :func:`onnxpress.calibration.open_calibration`), or None.
        data: feeds for the check (an ``.npz`` or a folder of them), or None.
        limit: at most this many calibration samples.
        dims: sizes of symbolic dims for random check feeds.
    """

    pattern: str = ""
    calibration: str | None = None
    data: str | None = None
    limit: int | None = None
    dims: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ZooJob:
    """Everything a worker needs to optimize one model (picklable, paths absolute).

    Attributes:
        model: path of the input ``.onnx``.
        rel: its path relative to the zoo folder (POSIX); the output's too.
        staging: an empty folder where the worker writes its result.
        recipe_text, recipe_source: the recipe's TOML and where it came from.
        calib: calibration and check-data settings.
        check: compare the optimized model with the original.
        check_samples: feeds taken from the check data or calibration data.
        latency_repeats: timed runs per model in the check (0: no latency).
        strict: validate the model after every pass.
        external_data: write the output's weights to ``<name>.data`` (True when
            the input had external data), else decide by size.
        input_sha256, config_sha256: identity of this job's input and settings.
    """

    model: str
    rel: str
    staging: str
    recipe_text: str
    recipe_source: str
    calib: CalibEntry = CalibEntry()
    check: bool = True
    check_samples: int = 4
    latency_repeats: int = 20
    strict: bool = False
    external_data: bool = False
    input_sha256: str = ""
    config_sha256: str = ""


def _new_record(rel: str) -> dict[str, Any]:
    rec: dict[str, Any] = {k: None for k in FIELDS}
    rec.update(model=rel, status="failed", error="", error_type="", resumed=False, note="", files=[])
    return rec


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _file_sha256(path: Path, h=None) -> str:
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_job(job: ZooJob) -> dict[str, Any]:
    """Optimize one model and write the result into ``job.staging``.

    This is the per-model job of both the local workers and the Ray tasks. It
    never raises: an error becomes a record with ``status="failed"``, the
    exception's class in ``error_type`` and its first line in ``error``.

    Returns:
        A record: the keys of :data:`FIELDS` plus ``files`` (names written into
        ``job.staging``, the external data before the model).
    """
    start = time.perf_counter()
    rec = _new_record(job.rel)
    rec.update(input_sha256=job.input_sha256, config_sha256=job.config_sha256)
    try:
        _optimize_job(job, rec)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a record
        rec.update(status="failed", error=_one_line(exc), error_type=type(exc).__name__, files=[])
        logger.debug("zoo: %s failed\n%s", job.rel, traceback.format_exc())
        staging = Path(job.staging)
        if staging.is_dir():
            for leftover in staging.iterdir():
                if leftover.is_file():
                    leftover.unlink()
    rec["seconds"] = round(time.perf_counter() - start, 3)
    return rec


def _optimize_job(job: ZooJob, rec: dict[str, Any]) -> None:
    from .api import optimize
    from .calibration import open_calibration
    from .graph import load_proto
    from .recipes import parse_recipe
    from .runtime_check import load_feeds, random_feeds

    recipe = parse_recipe(job.recipe_text, job.recipe_source)
    src = Path(job.model)
    rec["input_bytes"] = src.stat().st_size + sum(p.stat().st_size for p in _external_files(src))
    proto = load_proto(src)
    calibration = None
    if job.calib.calibration is not None:
        limit = job.calib.limit if job.calib.limit is not None else recipe.calibration_limit
        calibration = open_calibration(job.calib.calibration, proto, limit=limit)
    feeds = None
    if job.check and rec["input_bytes"] > CHECK_MAX_BYTES:
        # onnxruntime takes a model over 2 GB only from a path with external data,
        # and the check runs serialized models: optimize and write, but say so.
        rec["note"] = f"check skipped: the model is over {CHECK_MAX_BYTES / 2**30:.1f} GB"
        logger.warning("zoo: %s: %s", job.rel, rec["note"])
    elif job.check:
        n = max(1, job.check_samples)
        if job.calib.data is not None:
            feeds = load_feeds(job.calib.data)[:n]
        elif calibration is not None:
            feeds = [f for _, f in zip(range(n), calibration)]
        else:
            feeds = random_feeds(proto, n=min(n, 2), dim_sizes=dict(job.calib.dims))
    result = optimize(
        proto,
        recipe=recipe,
        calibration=calibration,
        check=feeds,
        strict=job.strict,
        latency=job.latency_repeats > 0,
    )
    b, a = result.before, result.after
    assert b is not None and a is not None
    rec.update(
        nodes_before=b.nodes,
        nodes_after=a.nodes,
        params_before=b.params,
        params_after=a.params,
        weight_bytes_before=b.weight_bytes,
        weight_bytes_after=a.weight_bytes,
        seconds_passes=round(result.seconds, 3),
        calibration=result.calibration,
    )
    report = result.report
    if report is not None:
        rec.update(_check_metrics(report))
    staging = Path(job.staging)
    out = staging / Path(job.rel).name
    result.save(out, external_data=True if job.external_data else None)
    files = [p.name for p in (out.with_name(out.name + ".data"),) if p.is_file()] + [out.name]
    rec["files"] = files
    rec["output_bytes"] = sum((staging / f).stat().st_size for f in files)
    rec["output_sha256"] = _files_sha256([staging / f for f in files])
    rec["status"] = "ok" if report is None or report.passed else "check_failed"
    if report is not None and rec["status"] == "check_failed":
        worst = [o for o in report.outputs if not o.passed]
        rec["error"] = f"check failed: output {worst[0].name!r} ({worst[0].level}): {worst[0].reason}"
        rec["error_type"] = "CheckFailed"


def _check_metrics(report) -> dict[str, Any]:
    def finite(x: float) -> float | None:
        return None if x is None or not math.isfinite(x) else float(x)

    outs = report.outputs
    lat = report.latency_ms.get("enabled") or next(iter(report.latency_ms.values()), None)
    return {
        "check_passed": bool(report.passed),
        "check_feeds": report.feeds,
        "check_max_abs": finite(max((o.max_abs for o in outs), default=0.0)),
        "check_mean_abs": finite(max((o.mean_abs for o in outs), default=0.0)),
        "check_min_cosine": finite(min((o.cosine for o in outs), default=1.0)),
        # inf (bit-exact) is written as None in JSON; see check_max_abs == 0.
        "check_min_snr_db": finite(min((o.snr_db for o in outs), default=math.inf)),
        "latency_ms_before": round(lat["reference"], 4) if lat else None,
        "latency_ms_after": round(lat["candidate"], 4) if lat else None,
    }


# ---------------------------------------------------------------------------
# Inputs, hashes, the calibration map
# ---------------------------------------------------------------------------


def discover(root: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()) -> list[Path]:
    """The ``.onnx`` files under ``root`` (recursively, sorted), skipping hidden
    folders and anything under ``exclude`` (the output folder, when inside)."""
    root = Path(root)
    excluded = [Path(e).resolve() for e in exclude]
    found = []
    for path in sorted(root.rglob("*.onnx")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts[:-1]) or not path.is_file():
            continue
        resolved = path.resolve()
        if any(resolved == e or e in resolved.parents for e in excluded):
            continue
        found.append(path)
    return found


def _external_files(path: Path) -> list[Path]:
    """The external-data files a model refers to (those that exist), sorted."""
    try:
        import onnx
        from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

        if path.stat().st_size > (1 << 31):
            return []  # an inline model this large cannot parse anyway
        proto = onnx.load(str(path), load_external_data=False)
        locations = {
            ExternalDataInfo(t).location for t in _get_all_tensors(proto) if uses_external_data(t)
        }
    except Exception:  # noqa: BLE001 - not ONNX: hashed as a plain file
        return []
    files = []
    for loc in sorted(locations):
        p = path.parent / loc
        if not Path(loc).is_absolute() and ".." not in Path(loc).parts and p.is_file():
            files.append(p)
    return files


def _files_sha256(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode("utf-8") + b"\0")
        _file_sha256(p, h)
    return h.hexdigest()


def input_sha256(path: str | os.PathLike) -> str:
    """sha256 of a model file and of the external-data files it refers to."""
    path = Path(path)
    return _files_sha256([path, *_external_files(path)])


_MAP_KEYS = {"calibration", "data", "limit", "dims"}


def _resolve_source(value: str, base: Path, where: str, what: str) -> str:
    if value == "random" or value.startswith("random:"):
        return value
    m = re.match(r"^(.+\.py):([A-Za-z_][A-Za-z0-9_]*)$", value)
    if m:
        py = Path(m.group(1))
        py = py if py.is_absolute() else base / py
        if not py.is_file():
            raise InputError(f"{where}: {what} {value!r}: no such file {str(py)!r}")
        return f"{py.resolve()}:{m.group(2)}"
    p = Path(value)
    p = p if p.is_absolute() else base / p
    if p.exists():
        return str(p.resolve())
    if ":" in value:  # module:function
        return value
    raise InputError(f"{where}: {what} {value!r}: no such file or folder {str(p)!r}")


def load_calib_map(path: str | os.PathLike) -> list[CalibEntry]:
    """Read a calibration map (see the module docstring), in file order.

    Raises:
        InputError: unreadable or invalid TOML, an unknown key (with its line and
            the valid keys), a missing calibration or data path.
    """
    from .recipes import key_lines, tomllib

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise InputError(f"--calib-map {str(path)!r}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"--calib-map {str(path)}: invalid TOML: {exc}") from None
    lines = key_lines(text)
    base = path.parent
    entries = []
    for pattern, value in data.items():
        line = lines.get(((), 0, (pattern,))) or lines.get(((pattern,), 0))
        where = f"{path}:{line}" if line else str(path)
        if isinstance(value, str):
            entries.append(CalibEntry(pattern, _resolve_source(value, base, where, "calibration")))
            continue
        if not isinstance(value, dict):
            raise InputError(f"{where}: {pattern!r} must be a calibration source (a string) or a table")
        for key in value:
            if key not in _MAP_KEYS:
                kl = lines.get(((pattern,), 0, (key,)))
                at = f"{path}:{kl}" if kl else where
                raise InputError(
                    f"{at}: unknown key {key!r} for {pattern!r}; valid keys: {', '.join(sorted(_MAP_KEYS))}"
                )
        calib, data_src = value.get("calibration"), value.get("data")
        limit, dims = value.get("limit"), value.get("dims", {})
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise InputError(f"{where}: limit of {pattern!r} must be a positive integer, got {limit!r}")
        if not isinstance(dims, dict) or not all(isinstance(v, int) and v > 0 for v in dims.values()):
            raise InputError(f"{where}: dims of {pattern!r} must be a table of positive integers")
        entries.append(
            CalibEntry(
                pattern,
                _resolve_source(calib, base, where, "calibration") if calib is not None else None,
                _resolve_source(data_src, base, where, "data") if data_src is not None else None,
                limit,
                dict(dims),
            )
        )
    return entries


def _match(entries: Sequence[CalibEntry], rel: str, default: CalibEntry) -> CalibEntry:
    for e in entries:
        if fnmatch.fnmatchcase(rel, e.pattern) or fnmatch.fnmatchcase(Path(rel).name, e.pattern):
            if e.calibration is None and default.calibration is not None:
                return dataclasses.replace(e, calibration=default.calibration)
            return e
    return default


# ---------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------


def _worker_main(job: ZooJob, conn) -> None:  # pragma: no cover - runs in the child
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        conn.send(run_job(job))
    finally:
        conn.close()


def _signal_name(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _failure(job: ZooJob, status: str, error: str, seconds: float) -> dict[str, Any]:
    rec = _new_record(job.rel)
    rec.update(
        status=status,
        error=error,
        error_type={"timeout": "Timeout", "crashed": "WorkerCrashed"}.get(status, "Error"),
        input_sha256=job.input_sha256,
        config_sha256=job.config_sha256,
        seconds=round(seconds, 3),
    )
    return rec


def _run_local(jobs: Sequence[ZooJob], workers: int, timeout: float | None) -> Iterator[tuple[ZooJob, dict]]:
    """Each job in a fresh ``spawn`` process; at most ``workers`` at a time. A
    worker past ``timeout`` is killed; one that dies without a result is a crash."""
    ctx = multiprocessing.get_context("spawn")
    pending = deque(jobs)
    running: dict[Any, list] = {}  # process sentinel -> [process, conn, job, start, result]
    try:
        while pending or running:
            while pending and len(running) < max(1, workers):
                job = pending.popleft()
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_worker_main, args=(job, send), name=f"onnxpress-zoo {job.rel}", daemon=True)
                proc.start()
                send.close()
                running[proc.sentinel] = [proc, recv, job, time.monotonic(), None]
            now = time.monotonic()
            wait = None
            if timeout:
                wait = max(0.0, min(entry[3] + timeout - now for entry in running.values()))
            waitables = [e[1] for e in running.values() if e[4] is None] + list(running)
            multiprocessing.connection.wait(waitables, timeout=wait)
            now = time.monotonic()
            for sentinel, entry in list(running.items()):
                proc, recv, job, started, result = entry
                if result is None and recv.poll():
                    try:
                        entry[4] = result = recv.recv()
                    except (EOFError, OSError):
                        pass
                if result is not None or proc.exitcode is not None:
                    proc.join(timeout=30)
                    if proc.is_alive():  # sent its result but hangs on exit
                        proc.kill()
                        proc.join()
                    recv.close()
                    del running[sentinel]
                    if result is None:
                        result = _failure(
                            job, "crashed", f"worker process died ({_signal_name(proc.exitcode)})", now - started
                        )
                    yield job, result
                elif timeout and now - started >= timeout:
                    proc.kill()
                    proc.join()
                    recv.close()
                    del running[sentinel]
                    yield job, _failure(job, "timeout", f"timed out after {timeout:g} s; worker killed", now - started)
    finally:
        for proc, recv, *_ in running.values():
            proc.kill()
            proc.join()
            recv.close()


def _run_ray(
    jobs: Sequence[ZooJob], address: str, workers: int | None, timeout: float | None
) -> Iterator[tuple[ZooJob, dict]]:
    """Each job as a Ray task (``max_calls=1``: a fresh worker process per model).
    ``address``: ``auto`` (a running cluster, or the instance this process already
    started), ``local`` (start one here), or ``ray://host:port`` / ``host:port``."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs the 'ray' package: pip install 'onnxpress[ray]'") from None
    started_here = False
    if not ray.is_initialized():
        try:
            ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise InputError(
                f"--ray {address}: cannot connect to a Ray cluster ({_one_line(exc)}); start one with "
                "'ray start --head', or use --ray local to start one in this process"
            ) from None
        started_here = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0, max_calls=1)(run_job)
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        pending = deque(jobs)
        inflight: dict[Any, tuple[ZooJob, float]] = {}
        while pending or inflight:
            while pending and len(inflight) < limit:
                job = pending.popleft()
                inflight[task.remote(job)] = (job, time.monotonic())
            wait = None
            if timeout:
                now = time.monotonic()
                wait = max(0.0, min(t + timeout - now for _, t in inflight.values()))
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=wait)
            now = time.monotonic()
            for ref in ready:
                job, started = inflight.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a dead worker or node
                    rec = _failure(job, "crashed", f"Ray task failed: {_one_line(exc)}", now - started)
                yield job, rec
            if timeout:
                for ref, (job, started) in list(inflight.items()):
                    if now - started >= timeout:
                        ray.cancel(ref, force=True)
                        del inflight[ref]
                        yield job, _failure(job, "timeout", f"timed out after {timeout:g} s; Ray task cancelled", now - started)
    finally:
        if started_here:
            ray.shutdown()


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


@dataclass
class ZooRun:
    """Result of :func:`run_zoo`.

    Attributes:
        records: one record per model, in discovery order (keys of :data:`FIELDS`).
        report_json, report_csv: the written reports.
        seconds: wall time (s).
    """

    records: list[dict[str, Any]]
    report_json: Path
    report_csv: Path
    seconds: float

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    @property
    def ok(self) -> bool:
        """True when every model is ``ok``."""
        return all(r["status"] in OK_STATUSES for r in self.records)


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _record_path(out: Path, rel: str) -> Path:
    return out / STATE_DIR / "records" / (rel + ".json")


def _output_files(out: Path, rel: str, names: Sequence[str]) -> list[Path]:
    return [(out / rel).parent / n for n in names]


def _resumable(out: Path, job: ZooJob, retry_failed: bool) -> dict | None:
    path = _record_path(out, job.rel)
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if rec.get("input_sha256") != job.input_sha256 or rec.get("config_sha256") != job.config_sha256:
        return None
    status = rec.get("status")
    if status in TRANSIENT_STATUSES or (status not in ("ok", "check_failed") and retry_failed):
        return None
    if status in ("ok", "check_failed"):
        files = _output_files(out, job.rel, rec.get("files") or [])
        if not files or not all(f.is_file() for f in files):
            return None
    rec["resumed"] = True
    return rec


def _remove_outputs(out: Path, rel: str) -> None:
    target = out / rel
    for p in (target.with_name(target.name + ".data"), target):
        if p.is_file():
            p.unlink()


def _commit(out: Path, job: ZooJob, rec: dict) -> None:
    """Move a finished job's files from staging into place (data first, model
    last) and write its record; a failed job removes stale outputs."""
    target = out / job.rel
    staging = Path(job.staging)
    if rec["status"] in ("ok", "check_failed") and rec.get("files"):
        target.parent.mkdir(parents=True, exist_ok=True)
        stale_data = target.with_name(target.name + ".data")
        if stale_data.name not in rec["files"] and stale_data.is_file():
            stale_data.unlink()
        for name in rec["files"]:  # the external data first, the model last
            os.replace(staging / name, target.parent / name)
    else:
        _remove_outputs(out, job.rel)
    _atomic_write_text(_record_path(out, job.rel), json.dumps(rec, indent=2, sort_keys=True))
    shutil.rmtree(staging, ignore_errors=True)


def _config_sha256(recipe_sha: str, job: ZooJob) -> str:
    from . import __version__

    settings = {
        "recipe": recipe_sha,
        "calib": dataclasses.asdict(job.calib) | {"pattern": None},
        "check": job.check,
        "check_samples": job.check_samples,
        "strict": job.strict,
        "external_data": job.external_data,
        "onnxpress": __version__,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def run_zoo(
    root: str | os.PathLike,
    out: str | os.PathLike,
    recipe: str | os.PathLike = "edge-int8",
    *,
    calib: str | None = None,
    calib_map: str | os.PathLike | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    resume: bool = False,
    retry_failed: bool = False,
    check: bool = True,
    check_samples: int = 4,
    latency_repeats: int = 20,
    dims: Mapping[str, int] | None = None,
    strict: bool = False,
    ray_address: str | None = None,
    report: str | os.PathLike | None = None,
    progress: bool | None = None,
    on_record: Callable[[dict], None] | None = None,
) -> ZooRun:
    """Optimize every ``.onnx`` under ``root`` into ``out`` (same relative paths).

    Args:
        root: the folder of models (searched recursively; hidden folders skipped).
        out: the output folder (created); must not be ``root`` itself.
        recipe: a built-in recipe name or a path to a ``.toml``.
        calib: calibration source for models the map does not match.
        calib_map: a TOML map of glob -> calibration source or settings.
        workers: parallel workers (default: the CPU count; with Ray, the
            cluster's CPUs).
        timeout: seconds per model; a worker past it is killed (None: no limit).
        resume: skip models whose last result has the same input and
            configuration hashes (see the module docstring).
        retry_failed: with ``resume``, redo earlier failures too.
        check: compare each optimized model with its original.
        check_samples: feeds taken for the check from the data or calibration.
        latency_repeats: timed runs per model and version (0: no latency).
        dims: symbolic dim sizes for random check feeds (all models).
        strict: validate every model after each pass.
        ray_address: run the jobs as Ray tasks on this cluster (``auto``,
            ``local`` or an address) instead of local processes.
        report: path prefix of the ``.json`` and ``.csv`` reports
            (default ``OUT/zoo-report``).
        progress: show a progress bar (default: when stderr is a terminal).
        on_record: called with each record as it completes (in completion order).

    Returns:
        A :class:`ZooRun`.

    Raises:
        InputError: ``root`` is missing or holds no ``.onnx``, ``out`` is
            ``root``, an unknown recipe, an invalid calibration map, ``ray``
            missing. Failures of single models are records, never exceptions.
    """
    from tqdm import tqdm

    from .recipes import load_recipe

    t0 = time.perf_counter()
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise InputError(f"{root}: no such folder of models")
    if out.resolve() == root.resolve():
        raise InputError(f"the output folder {out} is the model folder: choose another -o")
    rec = load_recipe(recipe)
    entries = load_calib_map(calib_map) if calib_map else []
    default = CalibEntry("", calib, None, None, dict(dims or {}))
    models = discover(root, exclude=[out])
    if not models:
        raise InputError(f"{root}: no .onnx models found")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    out.mkdir(parents=True, exist_ok=True)
    state = out / STATE_DIR
    staging_root = state / "staging"
    shutil.rmtree(staging_root, ignore_errors=True)  # leftovers of a killed run
    staging_root.mkdir(parents=True, exist_ok=True)

    records: dict[str, dict] = {}
    jobs: list[ZooJob] = []
    bar = tqdm(
        total=len(models),
        unit="model",
        desc="zoo",
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
        file=sys.stderr,
    )
    for i, path in enumerate(models):
        rel = path.relative_to(root).as_posix()
        entry = _match(entries, rel, default)
        if not entry.dims and dims:
            entry = dataclasses.replace(entry, dims=dict(dims))
        job = ZooJob(
            model=str(path.resolve()),
            rel=rel,
            staging=str((staging_root / f"{i:05d}").resolve()),
            recipe_text=rec.text,
            recipe_source=rec.source,
            calib=entry,
            check=check,
            check_samples=check_samples,
            latency_repeats=latency_repeats,
            strict=strict,
            external_data=bool(_external_files(path)),
            input_sha256=input_sha256(path),
        )
        job = dataclasses.replace(job, config_sha256=_config_sha256(rec.sha256, job))
        previous = _resumable(out, job, retry_failed) if resume else None
        if previous is not None:
            records[rel] = previous
            bar.update(1)
            if on_record:
                on_record(previous)
            continue
        Path(job.staging).mkdir(parents=True, exist_ok=True)
        jobs.append(job)

    if jobs:
        logger.info("zoo: %d models to optimize (%d resumed) with recipe %r", len(jobs), len(records), rec.name)
        n_workers = workers or (None if ray_address else os.cpu_count() or 1)
        if latency_repeats > 0 and len(jobs) > 1 and (n_workers is None or n_workers > 1):
            logger.warning(
                "zoo: latency is timed while other workers run on the same CPUs, so before/after "
                "timings can be skewed; use --workers 1 (or --latency-repeats 0) when timings matter"
            )
        if ray_address:
            results = _run_ray(jobs, ray_address, workers, timeout)
        else:
            results = _run_local(jobs, n_workers, timeout)
        for job, r in results:
            try:
                _commit(out, job, r)
            except OSError as exc:
                r.update(status="failed", error=f"cannot write the output: {_one_line(exc)}", error_type="OSError")
                _remove_outputs(out, job.rel)
            records[job.rel] = r
            bar.set_postfix_str(f"{job.rel}: {r['status']}", refresh=False)
            bar.update(1)
            if on_record:
                on_record(r)
    bar.close()
    shutil.rmtree(staging_root, ignore_errors=True)

    ordered = [records[p.relative_to(root).as_posix()] for p in models]
    seconds = time.perf_counter() - t0
    prefix = Path(report) if report else out / "zoo-report"
    json_path = prefix.with_name(prefix.name + ".json")
    csv_path = prefix.with_name(prefix.name + ".csv")
    counts: dict[str, int] = {}
    for r in ordered:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    _atomic_write_text(
        json_path,
        json.dumps(
            {
                "root": str(root),
                "out": str(out),
                "recipe": rec.name,
                "recipe_source": rec.source,
                "recipe_sha256": rec.sha256,
                "executor": f"ray:{ray_address}" if ray_address else "local",
                "seconds": round(seconds, 3),
                "counts": counts,
                "models": [{k: r.get(k) for k in FIELDS} for r in ordered],
            },
            indent=2,
        ),
    )
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(FIELDS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in ordered:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in FIELDS})
    _atomic_write_text(csv_path, buf.getvalue())
    return ZooRun(ordered, json_path, csv_path, seconds)


def _size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def summary_table(records: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of zoo records, then one line of totals and the errors."""
    head = (
        f"{'model':<32} {'status':<12} {'size before':>11} {'after':>10} {'nodes':>11} "
        f"{'ms before':>9} {'after':>8} {'max abs':>9} {'cosine':>9} {'time s':>7}"
    )
    rows = [head, "-" * len(head)]
    for r in records:
        nodes = f"{r['nodes_before']}->{r['nodes_after']}" if r.get("nodes_after") is not None else "-"
        lat_b = f"{r['latency_ms_before']:.2f}" if r.get("latency_ms_before") is not None else "-"
        lat_a = f"{r['latency_ms_after']:.2f}" if r.get("latency_ms_after") is not None else "-"
        mx = f"{r['check_max_abs']:.3g}" if r.get("check_max_abs") is not None else "-"
        cos = f"{r['check_min_cosine']:.6f}" if r.get("check_min_cosine") is not None else "-"
        status = r["status"] + ("*" if r.get("resumed") else "")
        secs = f"{r['seconds']:.1f}" if r.get("seconds") is not None else "-"
        name = r["model"] if len(r["model"]) <= 32 else "..." + r["model"][-29:]
        rows.append(
            f"{name:<32} {status:<12} {_size(r.get('input_bytes')):>11} {_size(r.get('output_bytes')):>10} "
            f"{nodes:>11} {lat_b:>9} {lat_a:>8} {mx:>9} {cos:>9} {secs:>7}"
        )
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    resumed = sum(1 for r in records if r.get("resumed"))
    total = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    rows.append(f"{len(records)} models: {total}" + (f" ({resumed} resumed, marked *)" if resumed else ""))
    for r in records:
        if r["status"] not in OK_STATUSES:
            rows.append(f"  {r['model']}: {r['status']}: {r.get('error_type') or ''}: {r.get('error') or ''}")
        elif r.get("note"):
            rows.append(f"  {r['model']}: note: {r['note']}")
    return "\n".join(rows)
