"""Where a check runs its models: check targets.

A :class:`Target` runs a batch of :class:`Job` s and returns one
:class:`JobResult` per job. :func:`get_target` makes one from a spec:

- ``cpu``: the host's onnxruntime, in-process, CPU execution provider.
- ``ep:NAME[,NAME...]``: the host's onnxruntime with exactly these execution
  providers. A provider that ``onnxruntime.get_available_providers()`` does not
  list is an error naming the available ones, and a session that does not use
  every requested provider is a job error: never a silent fallback to the CPU.
- ``arm64`` or ``arm64:MODEL``: onnxruntime's aarch64 build. On an aarch64 host
  it is the host's own onnxruntime (in-process); elsewhere the official PyPI
  aarch64 wheel under QEMU user-mode emulation of CPU ``MODEL`` (default
  ``neoverse-n1``, see :data:`~onnxpress.runtime_check.arm64.SUPPORTED_CPU_MODELS`),
  set up on first use (:func:`~onnxpress.runtime_check.arm64.setup_arm64`).
  ``emulated`` is then True: timings are not representative.
- ``runner=CMD`` with ``arm64`` (or ``ep:...``): a real board reached through a
  command that starts a Python with onnxruntime and numpy there, e.g.
  ``ssh pi@board python3``. onnxpress appends ``-u -c BOOTSTRAP`` (shell-quoted
  once more when the command starts with ``ssh``, whose remote shell parses it
  again), sends the worker script over stdin and exchanges npz files over
  stdin/stdout. Models travel as bytes (external data is not supported there).

Emulated and runner targets start one worker process (:mod:`.worker`) on first
use and keep it for every later :meth:`Target.run` until :meth:`close` (or
exit), so a whole check costs one emulated start (about 2 s).
"""
from __future__ import annotations

import json
import logging
import os
import platform
import select
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Union, runtime_checkable

from ..errors import CheckError, InputError
from . import worker as _worker

__all__ = [
    "Target",
    "Job",
    "JobResult",
    "TargetError",
    "TargetRunError",
    "LocalTarget",
    "WorkerTarget",
    "get_target",
    "available_providers",
    "DEFAULT_ARM64_CPU",
]

logger = logging.getLogger(__name__)

DEFAULT_ARM64_CPU = "neoverse-n1"
_REMOTE_SHELLS = {"ssh", "dbclient", "rsh", "adb"}


class TargetError(InputError):
    """A target spec is unusable: unknown kind, CPU model or execution provider."""


class TargetRunError(CheckError):
    """A target's worker process failed to start or died during a batch."""


@dataclass
class Job:
    """One model run on one target.

    Attributes:
        model: the model, serialized (bytes) or a path (``str``/``Path``).
        feeds: input dicts ``{name: array}``; every one is run.
        level: onnxruntime graph optimizations, ``"disabled"`` or ``"enabled"``.
        threads: intra-op threads.
        repeats: timed runs of ``feeds[0]``, after one warm-up run (0: no timing).
        outputs: names of the outputs to fetch (default: all graph outputs).
    """

    model: Union[bytes, str]
    feeds: list = field(default_factory=list)
    level: str = "disabled"
    threads: int = 1
    repeats: int = 0
    outputs: list | None = None


@dataclass
class JobResult:
    """What a job gave.

    Attributes:
        outputs: per feed run, per output, the arrays (feeds before a failing
            one only, when ``error`` is set).
        output_names: names of the outputs, in order.
        times: seconds of each timed run (``repeats`` of them).
        error: ``None``, or the reason, starting with ``load:`` (the session
            could not be created), ``run (feed K):`` or ``timing:``.
        providers: the execution providers of the session.
    """

    outputs: list = field(default_factory=list)
    output_names: list = field(default_factory=list)
    times: list = field(default_factory=list)
    error: str | None = None
    providers: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@runtime_checkable
class Target(Protocol):
    name: str
    emulated: bool

    def run(self, jobs: list[Job]) -> list[JobResult]: ...


def available_providers() -> list[str]:
    """Execution providers of the host's onnxruntime."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _plain(job: Job, providers: list[str], as_bytes: bool = False) -> dict:
    model = job.model
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if isinstance(model, str):
        if not os.path.exists(model):
            raise InputError(f"model file {model!r} does not exist")
        model = Path(model).read_bytes() if as_bytes else os.path.abspath(model)
    elif not isinstance(model, (bytes, bytearray, memoryview)):
        # an onnx.ModelProto, for convenience
        model = model.SerializeToString()
    return {"model": model, "feeds": list(job.feeds), "level": job.level, "threads": job.threads,
            "repeats": job.repeats, "outputs": job.outputs, "providers": providers}


def _result(d: dict) -> JobResult:
    return JobResult(outputs=d["outputs"], output_names=list(d["output_names"]), times=list(d["times"]),
                     error=d["error"], providers=list(d["providers"]))


class LocalTarget:
    """The host's onnxruntime, in-process (``cpu``, ``ep:...``, native ``arm64``)."""

    emulated = False

    def __init__(self, name: str, providers: list[str]) -> None:
        self.name = name
        self.providers = list(providers)

    def run(self, jobs: list[Job]) -> list[JobResult]:
        return [_result(_worker.run_job(_plain(job, self.providers))) for job in jobs]

    @property
    def info(self) -> dict:
        return _worker.info()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LocalTarget {self.name}>"


class _Channel:
    """Frames over a process's stdout, read with a deadline."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = bytearray()

    def _fill(self, deadline: float | None) -> None:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([self.fd], [], [], wait)
            if ready:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def read_frame(self, timeout: float | None, skip_junk: bool = False) -> tuple[str, bytes]:
        """The next frame; ``skip_junk`` drops lines before it that are not a
        frame header (a login banner or a shell rc file writing to stdout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            while b"\n" not in self.buf:
                if len(self.buf) > 65536:
                    raise ValueError(f"not a worker frame: {bytes(self.buf[:200])!r}")
                self._fill(deadline)
            if not skip_junk or self.buf.startswith(_worker.PROTOCOL + b" "):
                break
            junk, _, rest = bytes(self.buf).partition(b"\n")
            logger.warning("worker stdout before its hello: %r", junk[:200])
            self.buf = bytearray(rest)
        line, _, rest = bytes(self.buf).partition(b"\n")
        parts = line.split()
        if len(parts) != 3 or parts[0] != _worker.PROTOCOL:
            raise ValueError(f"not a worker frame: {line[:200]!r}")
        n = int(parts[2])
        self.buf = bytearray(rest)
        while len(self.buf) < n:
            self._fill(deadline)
        payload = bytes(self.buf[:n])
        del self.buf[:n]
        return parts[1].decode(), payload


class WorkerTarget:
    """A target served by a worker process (emulated arm64, or a runner).

    Args:
        name: the target's name.
        argv: the command starting a Python that runs the worker.
        providers: execution providers every job asks for.
        emulated: timings are not representative.
        env, cwd: of the worker process.
        bootstrap: send the worker source over stdin first (runner commands
            started with ``-c BOOTSTRAP``).
        use_files: exchange npz files in a temporary folder that the worker
            sees at the same path (emulation); else inline over stdin/stdout.
        start_timeout: seconds to wait for the worker's hello.
        timeout: seconds a batch may take (``None``: no limit).
    """

    def __init__(self, name: str, argv: list[str], providers: list[str], emulated: bool, *,
                 env: dict | None = None, cwd: str | None = None, bootstrap: bool = False,
                 use_files: bool = False, start_timeout: float = 300.0, timeout: float | None = None) -> None:
        self.name = name
        self.emulated = emulated
        self.argv = list(argv)
        self.providers = list(providers)
        self.env = env
        self.cwd = cwd
        self.bootstrap = bootstrap
        self.use_files = use_files
        self.start_timeout = start_timeout
        self.timeout = timeout
        self._proc: subprocess.Popen | None = None
        self._chan: _Channel | None = None
        self._tmp: str | None = None
        self._stderr = None
        self._info: dict | None = None
        self._count = 0
        self._models: dict[str, str] = {}
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, WorkerTarget._cleanup, {"proc": None, "tmp": None, "err": None})

    # -- process ---------------------------------------------------------

    @staticmethod
    def _cleanup(state: dict) -> None:
        proc = state.get("proc")
        if proc is not None and proc.poll() is None:
            try:
                proc.stdin.close()
                proc.wait(timeout=5)
            except Exception:  # noqa: BLE001
                proc.kill()
                proc.wait()
        if state.get("err") is not None:
            state["err"].close()
        if state.get("tmp"):
            shutil.rmtree(state["tmp"], ignore_errors=True)

    def _stderr_tail(self, n: int = 15) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.flush()
            self._stderr.seek(0)
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
            return "\n".join(lines[-n:])
        except (OSError, ValueError):
            return ""

    def _fail(self, what: str) -> TargetRunError:
        code = None
        if self._proc is not None:
            try:  # stdout closed: the process is exiting; get its status
                code = self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                code = None
        status = ""
        if code is not None:
            status = f" (exit {code}{', signal %d' % -code if code < 0 else ''})"
        tail = self._stderr_tail()
        self.close()
        return TargetRunError(f"target {self.name}: {what}{status}" + (f"; worker stderr:\n{tail}" if tail else ""))

    def start(self) -> dict:
        """Start the worker (if not running); returns its hello info."""
        if self._proc is not None and self._proc.poll() is None:
            return self._info
        self._tmp = tempfile.mkdtemp(prefix="onnxpress-worker-")
        self._stderr = tempfile.TemporaryFile(dir=self._tmp)
        t0 = time.perf_counter()
        try:
            self._proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=self._stderr, env=self.env, cwd=self.cwd)
        except OSError as exc:
            self._stderr.close()
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = self._stderr = None
            raise TargetRunError(f"target {self.name}: cannot start {self.argv[0]!r}: {exc}") from exc
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, WorkerTarget._cleanup,
                                           {"proc": self._proc, "tmp": self._tmp, "err": self._stderr})
        self._chan = _Channel(self._proc)
        try:
            if self.bootstrap:
                src = Path(_worker.__file__).read_bytes()
                self._proc.stdin.write(b"%d\n" % len(src) + src)
                self._proc.stdin.flush()
            kind, payload = self._chan.read_frame(self.start_timeout, skip_junk=True)
        except (EOFError, BrokenPipeError, ValueError) as exc:
            raise self._fail(f"the worker did not start ({type(exc).__name__}: {exc})") from None
        except TimeoutError:
            raise self._fail(f"the worker did not answer within {self.start_timeout:.0f} s") from None
        if kind != "hello":
            raise self._fail(f"the worker said {kind!r} instead of hello")
        self._info = json.loads(payload.decode())
        self._info["start_s"] = time.perf_counter() - t0
        logger.debug("target %s: worker up in %.2f s: %s", self.name, self._info["start_s"], self._info)
        missing = [p for p in self.providers if p not in self._info.get("providers", [])]
        if missing:
            avail = ", ".join(self._info.get("providers", []))
            self.close()
            raise TargetError(f"target {self.name}: execution provider(s) {', '.join(missing)} not available "
                              f"there (onnxruntime {self._info.get('onnxruntime')} on "
                              f"{self._info.get('machine')}); available: {avail}")
        return self._info

    @property
    def info(self) -> dict:
        """The worker's python, machine, onnxruntime, numpy and providers (starts it)."""
        return self.start()

    def close(self) -> None:
        """Stop the worker and remove its temporary folder."""
        proc, self._proc = self._proc, None
        state = {"proc": proc, "tmp": self._tmp, "err": self._stderr}
        self._finalizer.detach()
        self._tmp, self._stderr, self._models = None, None, {}
        WorkerTarget._cleanup(state)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<WorkerTarget {self.name}{' (emulated)' if self.emulated else ''}>"

    # -- running ---------------------------------------------------------

    def _model_file(self, data: bytes) -> str:
        import hashlib

        key = hashlib.sha1(data).hexdigest()
        path = self._models.get(key)
        if path is None:
            path = os.path.join(self._tmp, f"model-{key[:16]}.onnx")
            with open(path, "wb") as fh:
                fh.write(data)
            self._models[key] = path
        return path

    def run(self, jobs: list[Job]) -> list[JobResult]:
        if not jobs:
            return []
        with self._lock:
            self.start()
            plain = [_plain(job, self.providers, as_bytes=not self.use_files) for job in jobs]
            if self.use_files:
                for p in plain:
                    if not isinstance(p["model"], str):
                        p["model"] = self._model_file(bytes(p["model"]))
            arrays = _worker.encode_request(plain)
            self._count += 1
            try:
                if self.use_files:
                    req = os.path.join(self._tmp, f"request-{self._count}.npz")
                    resp = os.path.join(self._tmp, f"response-{self._count}.npz")
                    _worker.save_npz(arrays, req)
                    payload = json.dumps({"request": req, "response": resp}).encode()
                    _worker.write_frame(self._proc.stdin, "file", payload)
                else:
                    _worker.write_frame(self._proc.stdin, "npz", _worker.save_npz(arrays))
                kind, payload = self._chan.read_frame(self.timeout)
            except (EOFError, BrokenPipeError, ValueError) as exc:
                raise self._fail(f"the worker died during a batch of {len(jobs)} job(s) ({type(exc).__name__})") from None
            except TimeoutError:
                raise self._fail(f"a batch of {len(jobs)} job(s) took longer than {self.timeout:.0f} s") from None
            if kind == "error":
                raise TargetRunError(f"target {self.name}: the worker failed on the batch: {payload.decode()}")
            if kind == "file":
                path = json.loads(payload.decode())["response"]
                arrays = _worker.load_npz(path)
                os.unlink(path)
                os.unlink(req)
            elif kind == "npz":
                arrays = _worker.load_npz(payload)
            else:
                raise self._fail(f"unexpected answer {kind!r}")
            return [_result(r) for r in _worker.decode_response(arrays)]


def _runner_argv(runner: str) -> list[str]:
    argv = shlex.split(runner)
    if not argv:
        raise TargetError("the runner command is empty")
    code = _worker.BOOTSTRAP
    if os.path.basename(argv[0]) in _REMOTE_SHELLS:
        code = shlex.quote(code)  # the remote shell parses the command line again
    return [*argv, "-u", "-c", code]


def _check_local_providers(providers: list[str]) -> None:
    avail = available_providers()
    missing = [p for p in providers if p not in avail]
    if missing:
        raise TargetError(f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                          f"({_ort_version()}); available: {', '.join(avail)}")


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def _arm64_target(cpu: str, dir: str | None = None) -> WorkerTarget:
    from .arm64 import ensure_arm64

    rt = ensure_arm64(cpu, dir)
    argv = rt.python_command(cpu, "-u", str(Path(_worker.__file__).resolve()))
    return WorkerTarget(f"arm64:{cpu}", argv, ["CPUExecutionProvider"], emulated=True, env=rt.env(),
                        cwd=os.getcwd(), use_files=True)


def get_target(spec: str, runner: str | None = None) -> Target:
    """A :class:`Target` from ``spec``: ``cpu``, ``ep:NAME[,NAME...]``, ``arm64`` or
    ``arm64:MODEL``; ``runner`` (a command starting a remote Python, such as
    ``ssh pi@board python3``) runs ``arm64`` or ``ep:...`` on that board instead.

    Raises:
        TargetError: unknown spec, CPU model or execution provider.
        Arm64SetupError: the emulated arm64 runtime had to be set up, and failed.
    """
    from .arm64 import SUPPORTED_CPU_MODELS

    spec = (spec or "").strip()
    kind, _, arg = spec.partition(":")
    kind = kind.lower()
    if kind == "ep":
        providers = [p.strip() for p in arg.split(",") if p.strip()]
        if not providers:
            raise TargetError(f"target {spec!r}: name at least one execution provider, e.g. "
                              f"ep:{','.join(available_providers())}")
        if runner:
            return WorkerTarget(f"runner:{runner}", _runner_argv(runner), providers, emulated=False, bootstrap=True)
        _check_local_providers(providers)
        return LocalTarget(f"ep:{','.join(providers)}", providers)
    if kind == "cpu" and not arg:
        if runner:
            raise TargetError("target 'cpu' is the host's own CPU; use 'arm64' (or 'ep:...') with a runner")
        return LocalTarget("cpu", ["CPUExecutionProvider"])
    if kind == "arm64":
        cpu = arg.strip().lower()
        if cpu and cpu not in SUPPORTED_CPU_MODELS:
            raise TargetError(f"target {spec!r}: unknown CPU model {cpu!r}; supported: "
                              f"{', '.join(SUPPORTED_CPU_MODELS)}")
        if runner:
            if cpu:
                raise TargetError(f"target {spec!r}: a runner runs on the board's own CPU; use 'arm64' "
                                  f"without a CPU model")
            return WorkerTarget(f"runner:{runner}", _runner_argv(runner), ["CPUExecutionProvider"],
                                emulated=False, bootstrap=True)
        if platform.machine().lower() in ("aarch64", "arm64"):
            if cpu:
                logger.warning("target %s: running natively on this aarch64 host; CPU model %s is ignored", spec, cpu)
            return LocalTarget("arm64:native", ["CPUExecutionProvider"])
        return _arm64_target(cpu or DEFAULT_ARM64_CPU)
    raise TargetError(f"unknown target {spec!r}: use cpu, arm64, arm64:MODEL (MODEL one of "
                      f"{', '.join(SUPPORTED_CPU_MODELS)}) or ep:PROVIDER[,PROVIDER...]")
