"""Differential check of two models in onnxruntime on the same inputs.

Both models run on the CPU execution provider, once with every onnxruntime graph
optimization disabled (so a broken rewrite cannot be hidden by onnxruntime's own
fusions) and once with all enabled (so a rewrite that trips onnxruntime shows).
Outputs are matched by position; shapes and dtypes must match exactly, values
within ``atol + rtol * |reference|`` elementwise (numpy ``allclose`` semantics).

The judgement at the ``disabled`` level is exact. At the ``enabled`` level
onnxruntime's own fusions reassociate float arithmetic, and on deep models that
alone moves outputs by more than a tight tolerance (PP-OCRv4 det: 5e-5 between the
*original* model at the two levels). There each element's tolerance is widened by
``|reference_enabled - reference_disabled|``, the noise onnxruntime shows on the
original itself, plus that noise's maximum over the output (the candidate's own
fusions add noise of the same scale); the maximum is reported as ``ort_noise``.
A rewrite that trips onnxruntime still fails: its error exceeds that noise.

Metrics per output, aggregated over all feeds (the idea of Polygraphy's
comparator: per-output results that are truthy when they pass):
- ``max_abs``, ``mean_abs``: absolute error;
- ``max_rel``: max ``|a - b| / max(|a|, 1e-12)``;
- ``cosine``: cosine similarity of the flattened outputs;
- ``snr_db``: ``10 log10(sum a^2 / sum (a - b)^2)`` (``inf`` when equal).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import onnx

from ..errors import CheckError, ReferenceModelError
from .inputs import Feeds, validate_feeds

__all__ = ["OutputMetrics", "CheckReport", "compare", "make_session", "LEVELS"]

logger = logging.getLogger(__name__)

LEVELS = ("disabled", "enabled")


def make_session(model: onnx.ModelProto | bytes | str, level: str = "disabled", threads: int = 1):
    """An onnxruntime CPU session with graph optimizations ``disabled`` or ``enabled``.

    Raises:
        CheckError: onnxruntime refuses the model.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if level == "disabled" else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CheckError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc


@dataclass
class OutputMetrics:
    """Differences of one output between reference and candidate (all feeds).

    ``passed`` is False when shapes or dtypes differ, when the candidate has NaN or
    Inf where the reference has none, or when a value is outside tolerance.
    """

    name: str
    level: str
    shape_ref: list[int]
    shape_got: list[int]
    dtype_ref: str
    dtype_got: str
    max_abs: float = 0.0
    mean_abs: float = 0.0
    max_rel: float = 0.0
    cosine: float = 1.0
    snr_db: float = math.inf
    nonfinite: int = 0
    ort_noise: float = 0.0
    passed: bool = True
    reason: str = ""

    def __bool__(self) -> bool:
        return self.passed


@dataclass
class CheckReport:
    """Result of :func:`compare`; truthy when every output passed at every level."""

    outputs: list[OutputMetrics] = field(default_factory=list)
    atol: float = 1e-5
    rtol: float = 1e-4
    feeds: int = 0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return str(v)
            return v

        d = asdict(self)
        d["passed"] = self.passed
        d["outputs"] = [{k: clean(v) for k, v in o.items()} for o in d["outputs"]]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_table(self) -> str:
        """A readable fixed-width table, one row per output and ORT level."""
        head = f"{'output':<24} {'ort opt':<8} {'shape':<16} {'max abs':>10} {'mean abs':>10} {'cosine':>10} {'SNR dB':>8} {'ORT noise':>10}  result"
        rows = [head, "-" * len(head)]
        for o in self.outputs:
            shape = "x".join(map(str, o.shape_got)) if o.shape_got == o.shape_ref else f"{o.shape_ref}!={o.shape_got}"
            snr = "inf" if math.isinf(o.snr_db) else f"{o.snr_db:.1f}"
            verdict = "ok" if o.passed else f"FAIL ({o.reason})"
            rows.append(
                f"{o.name[:24]:<24} {o.level:<8} {shape[:16]:<16} {o.max_abs:>10.3g} {o.mean_abs:>10.3g} "
                f"{o.cosine:>10.6f} {snr:>8} {o.ort_noise:>10.3g}  {verdict}"
            )
        rows.append(
            f"{'PASS' if self.passed else 'FAIL'}: {self.feeds} feed(s), atol={self.atol:g}, rtol={self.rtol:g}"
        )
        for level, lat in self.latency_ms.items():
            rows.append(
                f"latency (ort {level}, 1 thread, mean ms): reference {lat['reference']:.3f}, "
                f"candidate {lat['candidate']:.3f} ({lat['candidate'] / max(lat['reference'], 1e-9):.2f}x)"
            )
        return "\n".join(rows)


class _Accumulator:
    def __init__(self) -> None:
        self.sum_abs = 0.0
        self.count = 0
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.dot = 0.0
        self.ref_sq = 0.0
        self.got_sq = 0.0
        self.err_sq = 0.0
        self.nonfinite = 0
        self.violations = 0
        self.ort_noise = 0.0
        self.shape_ref: list[int] = []
        self.shape_got: list[int] = []
        self.dtype_ref = ""
        self.dtype_got = ""
        self.mismatch = ""

    def add(
        self, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float, ref_exact: np.ndarray | None = None
    ) -> None:
        self.shape_ref, self.shape_got = list(ref.shape), list(got.shape)
        self.dtype_ref, self.dtype_got = str(ref.dtype), str(got.dtype)
        if ref.shape != got.shape:
            self.mismatch = self.mismatch or "shape"
            return
        if ref.dtype != got.dtype:
            self.mismatch = self.mismatch or "dtype"
        if ref.dtype.kind not in "fciub":
            if not np.array_equal(ref, got):
                self.violations += 1
            return
        r = ref.astype(np.float64).ravel()
        g = got.astype(np.float64).ravel()
        self.nonfinite += int(np.count_nonzero(~np.isfinite(g) & np.isfinite(r)))
        both = np.isfinite(r) & np.isfinite(g)
        same_special = (~np.isfinite(r)) & ((r == g) | (np.isnan(r) & np.isnan(g)))
        r_f, g_f = r[both], g[both]
        diff = np.abs(r_f - g_f)
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_rel = max(self.max_rel, float((diff / np.maximum(np.abs(r_f), 1e-12)).max()))
        self.sum_abs += float(diff.sum())
        self.count += int(diff.size)
        self.dot += float(r_f @ g_f)
        self.ref_sq += float(r_f @ r_f)
        self.got_sq += float(g_f @ g_f)
        self.err_sq += float(diff @ diff)
        tol = atol + rtol * np.abs(r_f)
        if ref_exact is not None and ref_exact.shape == ref.shape:
            noise = np.abs(r - ref_exact.astype(np.float64).ravel())[both]
            noise = np.where(np.isfinite(noise), noise, 0.0)
            scale = float(noise.max()) if noise.size else 0.0
            self.ort_noise = max(self.ort_noise, scale)
            tol = tol + noise + scale
        self.violations += int(np.count_nonzero(diff > tol))
        self.violations += int(np.count_nonzero(~both & ~same_special))

    def result(self, name: str, level: str) -> OutputMetrics:
        denom = math.sqrt(self.ref_sq * self.got_sq)
        cosine = self.dot / denom if denom > 0 else (1.0 if self.err_sq == 0 else 0.0)
        snr = math.inf if self.err_sq == 0 else 10 * math.log10(max(self.ref_sq, 1e-300) / self.err_sq)
        reason = ""
        if self.mismatch:
            reason = f"{self.mismatch} mismatch"
        elif self.nonfinite:
            reason = f"{self.nonfinite} new NaN/Inf"
        elif self.violations:
            reason = f"{self.violations} values outside tolerance"
        return OutputMetrics(
            name=name,
            level=level,
            shape_ref=self.shape_ref,
            shape_got=self.shape_got,
            dtype_ref=self.dtype_ref,
            dtype_got=self.dtype_got,
            max_abs=self.max_abs,
            mean_abs=self.sum_abs / self.count if self.count else 0.0,
            max_rel=self.max_rel,
            cosine=cosine,
            snr_db=snr,
            nonfinite=self.nonfinite,
            ort_noise=self.ort_noise,
            passed=not reason,
            reason=reason,
        )


def compare(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feeds: Iterable[Feeds],
    atol: float = 1e-5,
    rtol: float = 1e-4,
    levels: Sequence[str] = LEVELS,  # "disabled" first: it is the exact reference
    measure_latency: bool = False,
    latency_repeats: int = 20,
) -> CheckReport:
    """Run both models on ``feeds`` and compare their outputs.

    Args:
        reference: the original model (ModelProto with data in memory).
        candidate: the rewritten model; must have the same outputs, in order.
        feeds: ``{input name: array}`` dicts, validated against ``reference``.
        atol, rtol: elementwise tolerance ``|a - b| <= atol + rtol * |a|``.
        levels: onnxruntime graph optimization levels, ``"disabled"``/``"enabled"``.
        measure_latency: also time both models (mean ms over ``latency_repeats``
            runs of the first feed, 1 thread, after one warm-up run).

    Returns:
        A :class:`CheckReport` with one :class:`OutputMetrics` per output and level.

    Raises:
        ReferenceModelError: onnxruntime cannot load or run the reference.
        CheckError: onnxruntime cannot load or run the candidate.
        InputNameError: a feed does not fit the model's inputs.
    """
    feeds = validate_feeds(reference, list(feeds))
    report = CheckReport(atol=atol, rtol=rtol, feeds=len(feeds))
    ref_bytes, cand_bytes = reference.SerializeToString(), candidate.SerializeToString()
    sessions = {}
    for level in levels:
        try:
            ref_session = make_session(ref_bytes, level)
        except CheckError as exc:
            raise ReferenceModelError(f"the original model cannot serve as reference: {exc}") from exc
        sessions[level] = (ref_session, make_session(cand_bytes, level))
    first_ref = sessions[levels[0]][0]
    names = [o.name for o in first_ref.get_outputs()]
    for level, (_, s_got) in sessions.items():
        if len(s_got.get_outputs()) != len(names):
            raise CheckError(f"the models have {len(names)} and {len(s_got.get_outputs())} outputs")
    cand_inputs = {i.name for i in sessions[levels[0]][1].get_inputs()}
    accs = {level: [_Accumulator() for _ in names] for level in levels}
    for feed in feeds:
        cand_feed = {k: v for k, v in feed.items() if k in cand_inputs}
        exact = None
        for level, (s_ref, s_got) in sessions.items():
            try:
                ref_out = s_ref.run(None, feed)
            except Exception as exc:
                raise ReferenceModelError(f"the original model fails to run on the check's inputs: {str(exc).splitlines()[0]}") from exc
            try:
                got_out = s_got.run(None, cand_feed)
            except Exception as exc:
                raise CheckError(f"candidate model fails to run: {str(exc).splitlines()[0]}") from exc
            if level == "disabled":
                exact = ref_out
            for k, (acc, r, g) in enumerate(zip(accs[level], ref_out, got_out)):
                slack = np.asarray(exact[k]) if exact is not None and level != "disabled" else None
                acc.add(np.asarray(r), np.asarray(g), atol, rtol, slack)
    for level in levels:
        report.outputs.extend(acc.result(name, level) for acc, name in zip(accs[level], names))
        if measure_latency and feeds:
            s_ref, s_got = sessions[level]
            report.latency_ms[level] = {
                "reference": _time(s_ref, feeds[0], latency_repeats),
                "candidate": _time(s_got, {k: v for k, v in feeds[0].items() if k in cand_inputs}, latency_repeats),
            }
    return report


def _time(session, feed: Feeds, repeats: int) -> float:
    session.run(None, feed)
    start = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feed)
    return (time.perf_counter() - start) / repeats * 1e3
