"""Streaming statistics over activations, in memory bounded by the statistic.

:func:`onnxpress.calibration.capture` hands every captured array of every sample
to the collectors of its tensor and then drops it, so a collector must summarize
what it needs as it goes. None of these keeps the arrays it sees: a
:class:`MinMax` holds three numbers, a :class:`Histogram` ``bins`` counts, a
:class:`PerChannel` a few ``(C,)`` vectors, a :class:`Gram` one ``(C, C)`` matrix,
whatever the number of samples and whatever their shapes (inputs of varying
shape, e.g. text lines of different widths, are fine: each ``update`` stands
alone).

Non-finite values: :class:`MinMax` and :class:`Histogram` skip NaN and +-Inf
(counted in ``nonfinite``); :class:`PerChannel` and :class:`Gram` do not check
(a NaN propagates into their sums), as they only make sense on finite data.
"""
from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Collector", "MinMax", "Histogram", "PerChannel", "Gram"]


@runtime_checkable
class Collector(Protocol):
    """Anything that digests one captured array at a time."""

    def update(self, array: np.ndarray) -> None:
        """Fold ``array`` (any shape, any numeric dtype) into the statistic."""


def _finite_f64(array: np.ndarray) -> tuple[np.ndarray, int]:
    """Flattened float64 values of ``array`` without NaN/Inf, and how many were dropped."""
    a = np.asarray(array)
    if a.dtype.kind == "b":
        a = a.astype(np.uint8)
    a = a.astype(np.float64, copy=False).ravel()
    if a.dtype.kind == "f" and a.size:
        finite = np.isfinite(a)
        if not finite.all():
            kept = a[finite]
            return kept, int(a.size - kept.size)
    return a, 0


class MinMax:
    """Running minimum and maximum.

    Attributes:
        min: smallest finite value seen (``+inf`` before any update).
        max: largest finite value seen (``-inf`` before any update).
        count: number of elements seen (finite or not).
        nonfinite: number of NaN/Inf elements skipped.
    """

    def __init__(self) -> None:
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0

    def update(self, array: np.ndarray) -> None:
        a = np.asarray(array)
        if a.size == 0:
            return
        self.count += int(a.size)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            a, dropped = _finite_f64(a)
            self.nonfinite += dropped
            if a.size == 0:
                return
        self.min = min(self.min, float(a.min()))
        self.max = max(self.max, float(a.max()))

    @property
    def absmax(self) -> float:
        """``max(|min|, |max|)``; ``0.0`` before any finite value."""
        if self.min > self.max:
            return 0.0
        return max(abs(self.min), abs(self.max))

    def __repr__(self) -> str:
        return f"MinMax(min={self.min:g}, max={self.max:g}, count={self.count})"


class Histogram:
    """A fixed-size histogram whose range grows with the data.

    The range starts at the first non-degenerate batch's ``[min, max]`` (with
    ``symmetric=True``: ``[-absmax, absmax]``). When a later batch falls outside,
    the width is multiplied by ``2**k`` (smallest ``k`` that covers) and the
    range shifted by a whole number of new bins, so that every old bin falls
    entirely inside one new bin: the existing counts are merged exactly, never
    dropped or split. Growth in a symmetric histogram keeps the range symmetric
    about 0 whenever ``bins`` allows it (``bins`` divisible by ``2**(k+1)``, true
    for the default 2048 up to a 1024x growth per step).

    The edges are ``lo + i * (hi - lo) / bins``; a value on an inner edge goes to
    the bin on its right, the maximum into the last bin.

    Args:
        bins: number of bins (>= 2).
        symmetric: start (and keep) the range symmetric about 0.

    Attributes:
        bins: number of bins.
        counts: int64 ``(bins,)`` counts (all zero before any update).
        min, max: exact smallest and largest finite value seen (``+inf``/``-inf``
            before any update).
        count: number of finite values binned.
        nonfinite: number of NaN/Inf values skipped.
    """

    def __init__(self, bins: int = 2048, symmetric: bool = False) -> None:
        if int(bins) < 2:
            raise ValueError(f"a histogram needs at least 2 bins, got {bins}")
        self.bins = int(bins)
        self.symmetric = bool(symmetric)
        self.counts = np.zeros(self.bins, dtype=np.int64)
        self.lo = 0.0
        self.hi = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0
        self._started = False

    # ------------------------------------------------------------------ data
    def update(self, array: np.ndarray) -> None:
        a, dropped = _finite_f64(array)
        self.nonfinite += dropped
        if a.size == 0:
            return
        amin, amax = float(a.min()), float(a.max())
        self.min, self.max = min(self.min, amin), max(self.max, amax)
        if not self._started:
            self._start(self.min, self.max)
        elif amin < self.lo or amax > self.hi:
            self._grow(amin, amax)
        step = (self.hi - self.lo) / self.bins
        idx = np.floor((a - self.lo) / step)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.counts += np.bincount(idx.astype(np.intp), minlength=self.bins)
        self.count += int(a.size)

    def _start(self, lo: float, hi: float) -> None:
        if self.symmetric:
            amax = max(abs(lo), abs(hi))
            lo, hi = -amax, amax
        if hi <= lo:  # constant data (often all zeros): a small range around it
            half = max(abs(lo) * 2.0**-10, 2.0**-24)
            lo, hi = lo - half, hi + half
        self.lo, self.hi = lo, hi
        self._started = True

    def _grow(self, need_lo: float, need_hi: float) -> None:
        b, lo, width = self.bins, self.lo, self.hi - self.lo
        need_lo, need_hi = min(need_lo, lo), max(need_hi, self.hi)
        # Keep the range symmetric about 0 while it is and bins allow it exactly.
        symmetric = self.symmetric and math.isclose(lo, -self.hi, rel_tol=1e-12, abs_tol=0.0)
        k = 0
        while True:
            k += 1
            new_width = width * 2.0**k
            step = new_width / b
            group = 1 << min(k, 62)  # old bins per new bin
            if symmetric and b % (2 * group) == 0:
                m = b * (group - 1) // (2 * group)
                if lo - m * step <= need_lo and lo - m * step + new_width >= need_hi:
                    break
                continue
            m = max(0, math.ceil((lo - need_lo) / step))
            m_max = min(b - 1 - (b - 1) // group, math.floor((lo + new_width - need_hi) / step))
            if m <= m_max:
                break
        idx = m + np.arange(b) // group
        counts = np.zeros(b, dtype=np.int64)
        np.add.at(counts, idx, self.counts)
        self.counts = counts
        self.lo = lo - m * step
        self.hi = self.lo + new_width

    # ------------------------------------------------------------------ reads
    @property
    def edges(self) -> np.ndarray:
        """float64 ``(bins + 1,)`` bin edges."""
        e = self.lo + np.arange(self.bins + 1, dtype=np.float64) * ((self.hi - self.lo) / self.bins)
        e[-1] = self.hi
        return e

    @property
    def absmax(self) -> float:
        """``max(|min|, |max|)`` of the data (exact); ``0.0`` before any update."""
        if self.count == 0:
            return 0.0
        return max(abs(self.min), abs(self.max))

    def percentile(self, p: float) -> float:
        """The ``p``-th percentile (0..100) of the values seen, from the counts.

        The rank convention is numpy's default (linear): the percentile sits at
        rank ``r = p / 100 * (count - 1)`` of the sorted values. Each value is
        taken to hold the unit of cumulative count centered on its rank, so the
        result is found where the cumulative count reaches ``r + 0.5``, by
        linear interpolation inside that bin, and clamped to the exact
        ``[min, max]``. It lies within one bin width of the sorted values at
        ranks ``floor(r)`` and ``ceil(r)``, so within one bin width of
        ``numpy.percentile`` wherever the data are denser than the bins.

        Raises:
            ValueError: ``p`` outside [0, 100] or no data yet.
        """
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {p}")
        if self.count == 0:
            raise ValueError("percentile of an empty histogram")
        if p == 0.0:
            return self.min
        if p == 100.0:
            return self.max
        target = p / 100.0 * (self.count - 1) + 0.5
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, target, side="left"))
        i = min(i, self.bins - 1)
        before = float(cum[i - 1]) if i > 0 else 0.0
        inside = float(self.counts[i])
        frac = (target - before) / inside if inside > 0 else 0.0
        step = (self.hi - self.lo) / self.bins
        value = self.lo + (i + frac) * step
        return float(min(max(value, self.min), self.max))

    def __repr__(self) -> str:
        return f"Histogram(bins={self.bins}, range=[{self.lo:g}, {self.hi:g}], count={self.count})"


def _channel_axis(a: np.ndarray, axis: int, who: str) -> int:
    """``axis`` of ``a`` as a non-negative index; ValueError for scalars or out of range."""
    if a.ndim == 0:
        raise ValueError(f"{who} needs an array with a channel axis, got a scalar")
    resolved = axis if axis >= 0 else a.ndim + axis
    if not 0 <= resolved < a.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of rank {a.ndim}")
    return resolved


class PerChannel:
    """Per-channel statistics along one axis, accumulated in float64.

    Every update must have the same number of channels ``C`` on ``axis``; the
    other dims may vary between updates.

    Args:
        axis: channel axis (negative counts from the end), e.g. 1 for NCHW.

    Attributes (``None`` before any update, else float64 ``(C,)``):
        min, max, sum, sumsq: per channel.
        count: elements seen per channel (int, the same for every channel).
    """

    def __init__(self, axis: int = 1) -> None:
        self.axis = int(axis)
        self.min: np.ndarray | None = None
        self.max: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.sumsq: np.ndarray | None = None
        self.count = 0

    def update(self, array: np.ndarray) -> None:
        a = np.asarray(array)
        if a.size == 0:
            return
        axis = _channel_axis(a, self.axis, "PerChannel")
        x = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).astype(np.float64, copy=False)
        if self.sum is None:
            self.min = x.min(axis=1)
            self.max = x.max(axis=1)
            self.sum = x.sum(axis=1)
            self.sumsq = np.einsum("ij,ij->i", x, x)
        else:
            if x.shape[0] != self.sum.shape[0]:
                raise ValueError(
                    f"PerChannel(axis={self.axis}) saw {self.sum.shape[0]} channels, now {x.shape[0]}"
                )
            np.minimum(self.min, x.min(axis=1), out=self.min)
            np.maximum(self.max, x.max(axis=1), out=self.max)
            self.sum += x.sum(axis=1)
            self.sumsq += np.einsum("ij,ij->i", x, x)
        self.count += int(x.shape[1])

    @property
    def channels(self) -> int | None:
        return None if self.sum is None else int(self.sum.shape[0])

    @property
    def absmax(self) -> np.ndarray | None:
        """Per-channel ``max(|min|, |max|)``."""
        return None if self.sum is None else np.maximum(np.abs(self.min), np.abs(self.max))

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.sum is None else self.sum / max(self.count, 1)

    @property
    def l2(self) -> np.ndarray | None:
        """Per-channel L2 norm over everything seen, ``sqrt(sumsq)``."""
        return None if self.sumsq is None else np.sqrt(self.sumsq)

    def __repr__(self) -> str:
        return f"PerChannel(axis={self.axis}, channels={self.channels}, count={self.count})"


class Gram:
    """Running ``X^T X`` of activations seen as rows of ``C`` channels.

    Each update's array is reshaped to ``(-1, C)`` with the channel axis last
    (``axis=-1``: a MatMul/Gemm input ``[..., K]``; ``axis=1``: an NCHW Conv
    activation, one row per pixel), and accumulated in float64. With the
    teacher's target ``Y`` collected alike, a least-squares refit solves
    ``(X^T X + lambda I) W = X^T Y``.

    Args:
        axis: channel axis (negative counts from the end).

    Attributes (``None`` before any update):
        xtx: float64 ``(C, C)``, the sum of ``x x^T`` over all rows ``x``.
        sum: float64 ``(C,)``, the sum of all rows.
        count: number of rows seen (int).
    """

    def __init__(self, axis: int = -1) -> None:
        self.axis = int(axis)
        self.xtx: np.ndarray | None = None
        self.sum: np.ndarray | None = None
        self.count = 0

    def update(self, array: np.ndarray) -> None:
        a = np.asarray(array)
        if a.size == 0:
            return
        axis = _channel_axis(a, self.axis, "Gram")
        x = np.moveaxis(a, axis, -1).reshape(-1, a.shape[axis]).astype(np.float64, copy=False)
        if self.xtx is None:
            self.xtx = x.T @ x
            self.sum = x.sum(axis=0)
        else:
            if x.shape[1] != self.sum.shape[0]:
                raise ValueError(f"Gram(axis={self.axis}) saw {self.sum.shape[0]} channels, now {x.shape[1]}")
            self.xtx += x.T @ x
            self.sum += x.sum(axis=0)
        self.count += int(x.shape[0])

    @property
    def mean(self) -> np.ndarray | None:
        """Mean row, ``sum / count``."""
        return None if self.sum is None else self.sum / max(self.count, 1)

    def __repr__(self) -> str:
        c = None if self.sum is None else self.sum.shape[0]
        return f"Gram(axis={self.axis}, channels={c}, rows={self.count})"
