"""Latency and size of a reference and a candidate model, per target.

Timings come from the target (:mod:`onnxpress.runtime_check.targets`): each
model is run ``repeats`` times on one feed after warm-up, with onnxruntime's
graph optimizations enabled (as deployed) and a given number of intra-op
threads; we report the median and the 90th percentile (ms) and the candidate's
median over the reference's *on the same target*.

Timings of an emulated target (aarch64 under QEMU: fp32 100-600x, int8 30-95x
slower than native, and not in proportion) are marked ``representative=False``:
they are shown for completeness, their ratio is not a speed-up, and they are
never compared with native timings.

Sizes: the bytes on disk (the file plus its external data when the model came
from a file, else the serialized ModelProto) and the gzip-compressed bytes
(level 6), which is what a download or an app bundle costs.
"""
from __future__ import annotations

import gzip
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from ..graph import iter_proto_graphs

__all__ = ["Timing", "LatencyResult", "latency_from_times", "measure", "model_sizes"]

logger = logging.getLogger(__name__)


@dataclass
class Timing:
    """Run times of one model (ms): median, 90th percentile, min, and the count."""

    median_ms: float
    p90_ms: float
    min_ms: float
    runs: int

    @classmethod
    def from_seconds(cls, times: Sequence[float]) -> "Timing":
        if not len(times):
            return cls(float("nan"), float("nan"), float("nan"), 0)
        ms = np.asarray(times, dtype=np.float64) * 1e3
        return cls(float(np.median(ms)), float(np.percentile(ms, 90)), float(ms.min()), int(ms.size))


@dataclass
class LatencyResult:
    """Timings of both models on one target.

    Attributes:
        target: target name.
        emulated: the target runs under emulation (timings not representative).
        threads: intra-op threads.
        reference, candidate: :class:`Timing`.
        speedup: reference median / candidate median (None when emulated).
    """

    target: str
    emulated: bool
    threads: int
    reference: Timing
    candidate: Timing

    @property
    def representative(self) -> bool:
        return not self.emulated

    @property
    def speedup(self) -> float | None:
        if self.emulated or not self.candidate.median_ms or not _finite(self.candidate.median_ms):
            return None
        return self.reference.median_ms / self.candidate.median_ms

    def to_dict(self) -> dict:
        d = asdict(self)
        d["representative"] = self.representative
        d["speedup"] = self.speedup
        return d


def _finite(x: float) -> bool:
    return bool(np.isfinite(x))


def latency_from_times(
    target: str, emulated: bool, threads: int, ref_times: Sequence[float], cand_times: Sequence[float]
) -> LatencyResult:
    """A :class:`LatencyResult` from per-run seconds of both models."""
    return LatencyResult(target, emulated, threads, Timing.from_seconds(ref_times), Timing.from_seconds(cand_times))


def measure(
    target: Any,
    reference: onnx.ModelProto | bytes,
    candidate: onnx.ModelProto | bytes,
    feed: dict,
    repeats: int = 20,
    threads: int = 1,
) -> LatencyResult:
    """Time both models on ``target`` (one ``target.run`` call: one process on an
    emulated or remote target).

    Args:
        target: a Target (``get_target("cpu")``, ...).
        reference, candidate: the models.
        feed: one feed dict (inputs the candidate lacks are dropped for it).
        repeats: timed runs per model, after the target's warm-up.
        threads: intra-op threads.

    Raises:
        CheckError: a model fails to run on the target.
    """
    from ..errors import CheckError
    from .targets import Job
    ref = reference if isinstance(reference, bytes) else reference.SerializeToString()
    cand = candidate if isinstance(candidate, bytes) else candidate.SerializeToString()
    cand_inputs = {i.name for i in (candidate if isinstance(candidate, onnx.ModelProto) else onnx.load_from_string(cand)).graph.input}
    jobs = [
        Job(model=ref, feeds=[feed], level="enabled", threads=threads, repeats=repeats),
        Job(model=cand, feeds=[{k: v for k, v in feed.items() if k in cand_inputs}], level="enabled", threads=threads, repeats=repeats),
    ]
    r, c = target.run(jobs)
    for which, res in (("reference", r), ("candidate", c)):
        if res.error:
            raise CheckError(f"timing the {which} on {target.name} failed: {res.error.strip().splitlines()[0]}")
    return latency_from_times(target.name, bool(getattr(target, "emulated", False)), threads, r.times, c.times)


def _file_bytes(path: Path) -> bytes | None:
    """The model file plus its external-data files (concatenated), or None."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    extra = b""
    try:
        proto = onnx.load(str(path), load_external_data=False)
        locations = set()
        for g in iter_proto_graphs(proto.graph):
            for t in g.initializer:
                if t.data_location == onnx.TensorProto.EXTERNAL:
                    for e in t.external_data:
                        if e.key == "location":
                            locations.add(e.value)
        for loc in sorted(locations):
            f = path.parent / loc
            if f.is_file():
                extra += f.read_bytes()
    except Exception:  # not our job to validate here; the size of the file is still right
        pass
    return data + extra


def model_sizes(
    reference: onnx.ModelProto | bytes,
    candidate: onnx.ModelProto | bytes,
    reference_path: str | os.PathLike | None = None,
    candidate_path: str | os.PathLike | None = None,
) -> dict[str, dict[str, int]]:
    """``{"reference": {"disk": bytes, "gzip": bytes}, "candidate": {...}}``.

    The on-disk size is the file's (plus external data) when a path is given,
    else the serialized model's.
    """
    out = {}
    for which, model, path in (("reference", reference, reference_path), ("candidate", candidate, candidate_path)):
        data = _file_bytes(Path(path)) if path else None
        if data is None:
            data = model if isinstance(model, bytes) else model.SerializeToString()
        out[which] = {"disk": len(data), "gzip": len(gzip.compress(data, compresslevel=6))}
    return out
