"""Activation ranges from calibration statistics, and scales/zero points.

Range methods (``lo <= 0 <= hi`` always holds for the result, so 0 is exact):

* ``minmax``: the observed minimum and maximum.
* ``percentile``: the ``p``-th and ``(100-p)``-th percentiles of the histogram
  (linear interpolation inside a bin).
* ``entropy``: TensorRT's KL-divergence calibration (Migacz, "8-bit Inference with
  TensorRT", GTC 2017): fold the histogram onto ``|x|``, and for every candidate
  threshold ``T`` compare the clipped distribution ``P`` (outliers added to the
  last bin) with its quantization ``Q`` onto the available levels; keep the ``T``
  with the smallest ``KL(P || Q)``. The range is the observed one clipped to
  ``[-T, T]``.
* ``mse``: search the clipping threshold ``T`` (a fraction of ``max|x|``; the
  range is the observed one clipped to ``[-T, T]``) minimizing the expected squared error of
  quantize-dequantize over the histogram (rounding error inside the range,
  clipping error outside), each bin represented by its centre.

Scales never become 0 or non-finite: a degenerate range (constant or all-zero
tensor, pruned channel) gets the scale floor :data:`MIN_SCALE` and the zero point
of the exact zero, so quantize-dequantize maps 0 to 0 and every zero point is a
finite integer of its type.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

__all__ = [
    "MIN_SCALE",
    "QParams",
    "qrange",
    "range_from_histogram",
    "minmax_range",
    "percentile_range",
    "entropy_range",
    "mse_range",
    "activation_qparams",
    "weight_scales",
    "quantize_weight",
    "quantize_bias",
]

logger = logging.getLogger(__name__)

#: Smallest scale ever written. Small enough for any real activation or weight,
#: large enough that ``in_scale * w_scale / out_scale`` stays a normal float32.
MIN_SCALE = 1e-9

_NP_DTYPES = {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16}


@dataclass(frozen=True)
class QParams:
    """Quantization parameters of one tensor.

    Attributes:
        scale: float32, scalar (per tensor) or 1-D (per channel on ``axis``).
        zero_point: same shape as ``scale``, of the quantized dtype.
        axis: channel axis for per-channel parameters, else None.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None

    @property
    def dtype(self) -> np.dtype:
        return self.zero_point.dtype


def qrange(dtype: str, symmetric: bool = False, bits: int | None = None) -> tuple[int, int]:
    """Integer range of a quantized type.

    Args:
        dtype: ``uint8``, ``int8``, ``uint16`` or ``int16``.
        symmetric: for signed types, drop the most negative value (``[-127, 127]``)
            so the range is symmetric around the zero point 0.
        bits: fewer bits than the type (e.g. 7 for int8 weights -> ``[-64, 63]``).
    """
    info = np.iinfo(_NP_DTYPES[dtype])
    lo, hi = int(info.min), int(info.max)
    if bits is not None and bits < info.bits:
        if info.min < 0:
            lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        else:
            lo, hi = 0, (1 << bits) - 1
    if symmetric and lo < 0:
        lo = -hi
    return lo, hi


# --------------------------------------------------------------------- ranges
def _with_zero(lo: float, hi: float) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not np.isfinite(lo):
        lo = 0.0
    if not np.isfinite(hi):
        hi = 0.0
    return min(lo, 0.0), max(hi, 0.0)


def minmax_range(lo: float, hi: float) -> tuple[float, float]:
    """The observed range, widened to contain 0."""
    return _with_zero(lo, hi)


def _cdf_value(edges: np.ndarray, counts: np.ndarray, q: float) -> float:
    """Value below which a fraction ``q`` of the histogram mass lies."""
    total = counts.sum()
    if total <= 0:
        return 0.0
    cum = np.cumsum(counts, dtype=np.float64)
    target = q * total
    i = int(np.searchsorted(cum, target, side="left"))
    i = min(i, len(counts) - 1)
    before = cum[i - 1] if i > 0 else 0.0
    frac = 0.0 if counts[i] <= 0 else (target - before) / counts[i]
    return float(edges[i] + np.clip(frac, 0.0, 1.0) * (edges[i + 1] - edges[i]))


def percentile_range(edges: np.ndarray, counts: np.ndarray, percentile: float) -> tuple[float, float]:
    """``(100-p)``-th and ``p``-th percentiles of a histogram (0 included)."""
    p = float(percentile) / 100.0
    lo = _cdf_value(edges, counts, 1.0 - p)
    hi = _cdf_value(edges, counts, p)
    lo = max(lo, float(edges[0]))
    hi = min(hi, float(edges[-1]))
    return _with_zero(lo, hi)


def _fold_abs(edges: np.ndarray, counts: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of ``|x|`` on ``bins`` equal bins over ``[0, max|x|]``, each source
    bin's mass placed at its centre."""
    amax = float(max(abs(edges[0]), abs(edges[-1])))
    out_edges = np.linspace(0.0, amax, bins + 1)
    if amax <= 0:
        return out_edges, np.zeros(bins)
    centers = np.abs(0.5 * (edges[:-1] + edges[1:]))
    idx = np.clip((centers / amax * bins).astype(np.int64), 0, bins - 1)
    return out_edges, np.bincount(idx, weights=counts, minlength=bins).astype(np.float64)


def entropy_range(
    edges: np.ndarray, counts: np.ndarray, levels: int = 128, bins: int = 2048, stride: int = 1
) -> tuple[float, float]:
    """TensorRT's KL-divergence threshold (see the module docstring).

    Args:
        edges, counts: a histogram of the tensor (any range).
        levels: quantization levels available on one side of 0 (128 for int8
            data of both signs, 256 for uint8 data that is never negative).
        bins: resolution of the ``|x|`` histogram searched.
        stride: test every ``stride``-th threshold (speed).

    Returns:
        ``(lo, hi)``: the observed range clipped to ``[-T, T]``.
    """
    lo_obs, hi_obs = _with_zero(edges[0], edges[-1])
    if counts.sum() <= 0 or hi_obs - lo_obs <= 0:
        return lo_obs, hi_obs
    abs_edges, hist = _fold_abs(np.asarray(edges, np.float64), np.asarray(counts, np.float64), bins)
    if bins <= levels:
        return lo_obs, hi_obs
    best_kl, best_i = np.inf, bins
    for i in range(levels, bins + 1, stride):
        ref = hist[:i].copy()
        ref[i - 1] += hist[i:].sum()
        nonzero = ref > 0
        if not nonzero.any():
            continue
        # Quantize hist[:i] into `levels` groups, spread each group's mass over its
        # non-empty bins (TensorRT's expansion), then compare.
        src = hist[:i]
        idx = (np.arange(i) * levels) // i
        group_sum = np.bincount(idx, weights=src, minlength=levels)
        group_nz = np.bincount(idx, weights=(src > 0).astype(np.float64), minlength=levels)
        q = np.where(src > 0, group_sum[idx] / np.maximum(group_nz[idx], 1.0), 0.0)
        p = ref / ref.sum()
        qs = q.sum()
        if qs <= 0:
            continue
        q = q / qs
        # Bins where P > 0 but Q == 0 (the outlier bin) get a small epsilon.
        q = np.where(nonzero & (q <= 0), 1e-12, q)
        kl = float(np.sum(p[nonzero] * np.log(p[nonzero] / q[nonzero])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    t = float(abs_edges[best_i])
    return _with_zero(max(lo_obs, -t), min(hi_obs, t))


def mse_range(
    edges: np.ndarray,
    counts: np.ndarray,
    qmin: int,
    qmax: int,
    symmetric: bool = False,
    candidates: int = 100,
) -> tuple[float, float]:
    """The observed range clipped to ``[-T, T]`` with the least expected squared error of
    quantize-dequantize over the histogram (see the module docstring)."""
    lo_obs, hi_obs = _with_zero(edges[0], edges[-1])
    c = np.asarray(counts, np.float64)
    if c.sum() <= 0 or hi_obs - lo_obs <= 0:
        return lo_obs, hi_obs
    e = np.asarray(edges, np.float64)
    x = 0.5 * (e[:-1] + e[1:])
    keep = c > 0
    x, c = x[keep], c[keep]
    best_err, best = np.inf, (lo_obs, hi_obs)
    amax = max(-lo_obs, hi_obs)
    for a in np.linspace(1.0 / candidates, 1.0, candidates):
        lo, hi = max(lo_obs, -a * amax), min(hi_obs, a * amax)
        qp = activation_qparams(lo, hi, qmin, qmax, symmetric)
        s, z = float(qp[0]), float(qp[1])
        q = np.clip(np.rint(x / s) + z, qmin, qmax)
        err = float(np.sum(c * (x - (q - z) * s) ** 2))
        if err < best_err - 1e-12 * abs(best_err if np.isfinite(best_err) else 0.0):
            best_err, best = err, (lo, hi)
    return best


def range_from_histogram(
    method: str,
    edges: np.ndarray,
    counts: np.ndarray,
    *,
    percentile: float = 99.99,
    qmin: int = 0,
    qmax: int = 255,
    symmetric: bool = False,
) -> tuple[float, float]:
    """``(lo, hi)`` of a tensor by ``method`` from its histogram."""
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if method == "minmax":
        nz = np.nonzero(counts)[0]
        if not len(nz):
            return 0.0, 0.0
        return _with_zero(edges[nz[0]], edges[nz[-1] + 1])
    if method == "percentile":
        return percentile_range(edges, counts, percentile)
    if method == "entropy":
        negative = edges[0] < 0 and counts[edges[:-1] < 0].sum() > 0
        levels = (qmax - qmin + 1) // 2 if negative else (qmax - qmin + 1)
        return entropy_range(edges, counts, levels=max(levels, 2), bins=2048, stride=8 if levels >= 256 else 4)
    if method == "mse":
        return mse_range(edges, counts, qmin, qmax, symmetric)
    raise ValueError(f"unknown range method {method!r}")


# ------------------------------------------------------------- scales / zps
def activation_qparams(lo: float, hi: float, qmin: int, qmax: int, symmetric: bool) -> tuple[np.float32, int]:
    """Scale and zero point of a tensor with range ``[lo, hi]``.

    Asymmetric: ``scale = (hi - lo) / (qmax - qmin)``, ``zp = round(qmin - lo/scale)``
    clipped to the type. Symmetric: ``scale = max|.| / ((qmax - qmin) / 2)`` and the
    zero point is the middle of the type (0 for signed, 128 for uint8).

    Returns:
        ``(scale, zero_point)``: scale a positive finite float32 >= :data:`MIN_SCALE`,
        zero point an int in ``[qmin, qmax]``.
    """
    lo, hi = _with_zero(lo, hi)
    if symmetric:
        amax = max(-lo, hi)
        half = (qmax - qmin) / 2.0
        scale = amax / half if half > 0 else 0.0
        zp = int(round((qmax + qmin) / 2.0)) if qmin >= 0 else 0
    else:
        scale = (hi - lo) / float(qmax - qmin)
        zp = None
    if not np.isfinite(scale) or scale < MIN_SCALE:
        scale = MIN_SCALE
    scale32 = np.float32(scale)
    if scale32 < MIN_SCALE:  # rounding to float32
        scale32 = np.float32(np.nextafter(np.float32(MIN_SCALE), np.float32(1)))
    if zp is None:
        zp = int(np.clip(np.rint(qmin - lo / float(scale32)), qmin, qmax))
    return scale32, zp


def weight_scales(w: np.ndarray, axis: int | None, qmax: int) -> np.ndarray:
    """Symmetric weight scales ``max|w| / qmax`` per channel on ``axis`` (or per
    tensor when ``axis`` is None), floored so no scale is 0 (an all-zero channel
    gets ``max(MIN_SCALE, 1e-7 * the largest scale)``).

    Returns:
        float32, shape ``[w.shape[axis]]`` or ``[]``.
    """
    a = np.abs(np.asarray(w, dtype=np.float64))
    a = np.where(np.isfinite(a), a, 0.0)
    if axis is None:
        amax = np.array(a.max() if a.size else 0.0)
    else:
        amax = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1).max(axis=1) if a.size else np.zeros(a.shape[axis])
    scale = amax / float(qmax)
    floor = max(MIN_SCALE, 1e-7 * float(scale.max()) if scale.size else MIN_SCALE)
    return np.maximum(scale, floor).astype(np.float32)


def quantize_weight(
    w: np.ndarray, axis: int | None, qmin: int, qmax: int, scale: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization of a weight.

    Args:
        w: float weight.
        axis: channel axis for per-channel scales, None for one scale.
        qmin, qmax: integer range (e.g. -127, 127 or -64, 63).
        scale: scales to use (default :func:`weight_scales`).

    Returns:
        ``(q, scale)``: int8 array of ``w``'s shape and float32 scale(s).
    """
    if scale is None:
        scale = weight_scales(w, axis, min(qmax, -qmin))
    w64 = np.asarray(w, dtype=np.float64)
    w64 = np.where(np.isfinite(w64), w64, 0.0)
    if axis is None:
        s = np.float64(scale)
    else:
        shape = [1] * w.ndim
        shape[axis] = -1
        s = scale.astype(np.float64).reshape(shape)
    q = np.clip(np.rint(w64 / s), qmin, qmax).astype(np.int8)
    return q, np.asarray(scale, dtype=np.float32)


def quantize_bias(bias: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int32 bias ``round(bias / scale)`` (``scale = input_scale * weight_scale``),
    clipped to int32. Callers guard against overflow beforehand."""
    b = np.asarray(bias, dtype=np.float64) / np.asarray(scale, dtype=np.float64)
    info = np.iinfo(np.int32)
    return np.clip(np.rint(b), info.min, info.max).astype(np.int32)
