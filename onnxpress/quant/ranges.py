"""Activation ranges from calibration statistics, and scales/zero points.

Range methods (``lo <= 0 <= hi`` always holds for the result, so 0 is exact):

* ``minmax``: the observed minimum and maximum.
* ``percentile``: the ``p``-th and ``(100-p)``-th percentiles of the histogram
  (linear interpolation inside a bin).
* ``entropy``: TensorRT's KL-divergence calibration (Migacz, "8-bit Inference with
  TensorRT", GTC 2017), on the real quantization grid: for every candidate
  threshold ``T`` (the observed range clipped to ``[-T, T]``), compare the clipped
  histogram ``P`` (outliers added to the end bins) with ``Q``, the histogram
  merged onto the levels that range really gets (its scale and zero point); keep
  the ``T`` with the smallest ``KL(P || Q)``. Too sparse a histogram (fewer than
  32 values per level) keeps the observed range. KL ignores how far the clipped
  values lie, so it clips harder than the other methods (PP-OCRv4 rec's HardSwish
  backbone loses its large activations; onnxruntime's own implementation does the
  same there).
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


def entropy_range(
    edges: np.ndarray,
    counts: np.ndarray,
    qmin: int = -128,
    qmax: int = 127,
    symmetric: bool = False,
    candidates: int = 128,
    min_values_per_level: int = 32,
) -> tuple[float, float]:
    """KL-divergence range (TensorRT's calibration, on the quantizer's real grid;
    see the module docstring).

    Each candidate range is the observed one clipped to ``[-a * max|x|, a * max|x|]``
    (``a`` from 1 down in ``candidates`` steps). ``P`` is the histogram inside the
    candidate with the clipped mass added to its end bins; ``Q`` is the histogram
    inside the candidate merged onto the quantization levels of that range (the
    scale and zero point :func:`activation_qparams` gives it, so an asymmetric
    uint8 range has 256 levels over ``[lo, hi]``, not 128 over ``|x|``), each
    level's mass spread over its non-empty bins. The candidate with the least
    ``KL(P || Q)`` wins. Candidates narrower than one histogram bin per level are
    not tried (``Q`` would equal ``P`` there).

    Two defects of the first implementation are fixed here: it folded the
    histogram onto ``|x|``, so a dense negative side (HardSwish's
    ``[-0.375, 0]``) pulled the threshold of the sparse positive tail down to
    ``|min|``, and a stem output ``[-66, 10]`` was clipped at ``+-9.6``; and it
    ran on histograms far too sparse for a KL estimate (a pooled vector: 1440
    values over 2048 bins), where it clipped 2.5 % of the values. With fewer than
    ``min_values_per_level`` values per level the observed range is returned.

    Returns:
        ``(lo, hi)`` with ``lo <= 0 <= hi``.
    """
    e = np.asarray(edges, np.float64)
    c = np.asarray(counts, np.float64)
    lo_obs, hi_obs = _with_zero(e[0], e[-1])
    total = float(c.sum())
    levels = int(qmax - qmin + 1)
    if total <= 0 or hi_obs - lo_obs <= 0 or len(c) < levels or total < min_values_per_level * levels:
        return lo_obs, hi_obs
    nb = len(c)
    width = (e[-1] - e[0]) / nb
    x = 0.5 * (e[:-1] + e[1:])
    csum = np.concatenate([[0.0], np.cumsum(c)])
    amax = max(-lo_obs, hi_obs)
    best_kl, best = np.inf, (lo_obs, hi_obs)
    for a in np.linspace(1.0, 0.0, candidates, endpoint=False):
        lo, hi = max(lo_obs, -a * amax), min(hi_obs, a * amax)
        b0 = int(np.clip(np.floor((lo - e[0]) / width + 1e-9), 0, nb - 1))
        b1 = int(np.clip(np.ceil((hi - e[0]) / width - 1e-9), b0 + 1, nb))
        if b1 - b0 < levels:
            break
        scale, zp = activation_qparams(lo, hi, qmin, qmax, symmetric)
        src = c[b0:b1]
        p = src.copy()
        p[0] += csum[b0]
        p[-1] += total - csum[b1]
        lvl = (np.clip(np.rint(x[b0:b1] / float(scale)) + zp, qmin, qmax) - qmin).astype(np.int64)
        nz = src > 0
        group_sum = np.bincount(lvl, weights=src, minlength=levels)
        group_nz = np.bincount(lvl, weights=nz.astype(np.float64), minlength=levels)
        q = np.where(nz, group_sum[lvl] / np.maximum(group_nz[lvl], 1.0), 0.0)
        if q.sum() <= 0:
            continue
        p /= p.sum()
        q /= q.sum()
        pm = p > 0
        # Where P has mass and Q none (clipped mass in an empty end bin): a small floor.
        qv = np.maximum(q[pm], 1e-6)
        kl = float(np.sum(p[pm] * np.log(p[pm] / qv)))
        if kl < best_kl - 1e-12:
            best_kl, best = kl, (lo, hi)
    return _with_zero(*best)


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
        return entropy_range(edges, counts, qmin, qmax, symmetric)
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
