"""Streaming collectors against numpy on the concatenated data."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxpress.calibration import Collector, Gram, Histogram, MinMax, PerChannel


def growing_batches(rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of different shapes whose range grows on both sides."""
    return [
        rng.normal(0.0, 0.1, size=(3, 50)).astype(np.float32),
        rng.normal(1.0, 0.5, size=(200,)).astype(np.float32),
        rng.normal(-4.0, 2.0, size=(7, 11, 13)).astype(np.float32),
        rng.exponential(30.0, size=(4000,)).astype(np.float32),
        rng.normal(0.0, 1.0, size=(10, 10)).astype(np.float32),
        (-rng.exponential(100.0, size=(500,))).astype(np.float32),
    ]


def assert_percentile_ok(h: Histogram, allv: np.ndarray, p: float) -> None:
    """Within one bin of numpy's percentile; where the data are sparser than the bins
    (numpy interpolates between far-apart neighbours), within one bin of the two
    sorted values that bracket the rank."""
    width = (h.edges[-1] - h.edges[0]) / h.bins * 1.0001
    got, want = h.percentile(p), np.percentile(allv, p)
    s = np.sort(allv)
    r = p / 100 * (allv.size - 1)
    lo, hi = s[math.floor(r)], s[math.ceil(r)]
    assert abs(got - want) <= width or lo - width <= got <= hi + width, (p, got, want, lo, hi, width)


def test_every_collector_is_a_collector():
    for c in (MinMax(), Histogram(), PerChannel(1), Gram()):
        assert isinstance(c, Collector)


# ------------------------------------------------------------------ MinMax
def test_minmax_matches_numpy_over_batches(rng):
    mm = MinMax()
    assert mm.min == math.inf and mm.max == -math.inf and mm.count == 0
    batches = growing_batches(rng)
    for b in batches:
        mm.update(b)
    allv = np.concatenate([b.ravel() for b in batches])
    assert mm.min == float(allv.min()) and mm.max == float(allv.max())
    assert mm.count == allv.size
    assert mm.absmax == max(abs(mm.min), abs(mm.max))


def test_minmax_skips_nonfinite_and_empty_and_takes_ints():
    mm = MinMax()
    mm.update(np.array([], dtype=np.float32))
    assert mm.count == 0
    mm.update(np.array([1.0, np.nan, -np.inf, 3.0], dtype=np.float32))
    assert (mm.min, mm.max, mm.count, mm.nonfinite) == (1.0, 3.0, 4, 2)
    mm.update(np.array([[7, -2]], dtype=np.int64))
    assert (mm.min, mm.max) == (-2.0, 7.0)


# ------------------------------------------------------------------ Histogram
def test_histogram_percentiles_within_a_bin_of_numpy_on_growing_batches(rng):
    h = Histogram(bins=2048)
    batches = growing_batches(rng)
    for b in batches:
        h.update(b)
    allv = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    assert h.counts.dtype == np.int64 and h.counts.shape == (2048,)
    assert h.edges.shape == (2049,)
    assert int(h.counts.sum()) == allv.size == h.count
    assert h.min == allv.min() and h.max == allv.max()
    assert h.edges[0] <= h.min and h.edges[-1] >= h.max
    width = (h.edges[-1] - h.edges[0]) / h.bins
    for p in (0, 1, 5, 25, 50, 75, 95, 99):  # dense: within a bin of numpy
        assert abs(h.percentile(p) - np.percentile(allv, p)) <= width * 1.0001, p
    for p in (0.01, 0.1, 99.9, 99.99, 100):  # sparse tails
        assert_percentile_ok(h, allv, p)
    assert h.absmax == np.abs(allv).max()


def test_histogram_growth_merges_counts_exactly(rng):
    """Rebinning never splits a bin: the counts equal numpy's on the final edges."""
    h = Histogram(bins=256)
    batches = growing_batches(rng)
    for b in batches:
        h.update(b)
    allv = np.concatenate([b.ravel() for b in batches]).astype(np.float64)
    ref, _ = np.histogram(allv, bins=h.edges)
    assert np.abs(ref - h.counts).sum() <= 2  # values landing exactly on an edge may round either way


def test_histogram_starts_at_first_batch_range_and_grows():
    h = Histogram(bins=8)
    h.update(np.array([0.0, 8.0]))
    np.testing.assert_allclose(h.edges, np.arange(9.0))
    h.update(np.array([12.0]))  # above: width doubles, the low edge stays
    np.testing.assert_allclose(h.edges, np.arange(0.0, 17.0, 2.0))
    np.testing.assert_array_equal(h.counts, [1, 0, 0, 1, 0, 0, 1, 0])
    h.update(np.array([-3.0]))  # below: doubles again, shifted by whole bins
    assert h.edges[0] <= -3.0 and h.edges[-1] >= 12.0
    assert int(h.counts.sum()) == 4
    assert h.min == -3.0 and h.max == 12.0


def test_histogram_symmetric_stays_symmetric():
    h = Histogram(bins=2048, symmetric=True)
    h.update(np.array([0.5, 1.0, -0.25]))
    assert h.edges[0] == -1.0 and h.edges[-1] == 1.0
    h.update(np.array([-37.0, 3.0]))
    assert h.edges[0] == -h.edges[-1] and h.edges[-1] >= 37.0
    assert int(h.counts.sum()) == 5
    assert h.absmax == 37.0


def test_histogram_constant_first_batch_then_real_range(rng):
    h = Histogram(bins=512)
    h.update(np.zeros((4, 100), np.float32))  # e.g. a ReLU of padding
    data = rng.normal(size=10000)
    h.update(data)
    allv = np.concatenate([np.zeros(400), data])
    assert int(h.counts.sum()) == allv.size
    for p in (1, 10, 50, 90, 99):
        assert_percentile_ok(h, allv, p)


def test_histogram_nonfinite_and_errors():
    h = Histogram(bins=16)
    with pytest.raises(ValueError):
        h.percentile(50)
    h.update(np.array([1.0, np.inf, np.nan, 2.0]))
    assert h.count == 2 and h.nonfinite == 2
    with pytest.raises(ValueError):
        h.percentile(101)
    with pytest.raises(ValueError):
        Histogram(bins=1)


@settings(max_examples=40, deadline=None)
@given(
    scales=st.lists(st.floats(1e-3, 1e4), min_size=1, max_size=6),
    shifts=st.lists(st.floats(-1e3, 1e3), min_size=6, max_size=6),
    seed=st.integers(0, 2**16),
    symmetric=st.booleans(),
)
def test_histogram_property_counts_kept_and_percentile_close(scales, shifts, seed, symmetric):
    rng = np.random.default_rng(seed)
    h = Histogram(bins=1024, symmetric=symmetric)
    parts = []
    for scale, shift in zip(scales, shifts):
        x = rng.normal(shift, scale, size=int(rng.integers(1, 300)))
        parts.append(x)
        h.update(x)
    allv = np.concatenate(parts)
    assert int(h.counts.sum()) == allv.size
    assert h.edges[0] <= allv.min() and h.edges[-1] >= allv.max()
    for p in (0, 1, 10, 50, 90, 99, 100):
        assert_percentile_ok(h, allv, p)


# ------------------------------------------------------------------ PerChannel
@pytest.mark.parametrize("axis", [1, -1])
def test_perchannel_matches_numpy_on_concatenated_data(rng, axis):
    c = 6
    shapes = [(1, c, 5, 7), (2, c, 3, 9), (1, c, 8, 1)] if axis == 1 else [(4, 5, c), (2, 1, c), (9, 3, c)]
    batches = [rng.normal(size=s).astype(np.float32) for s in shapes]
    pc = PerChannel(axis)
    for b in batches:
        pc.update(b)
    flat = np.concatenate([np.moveaxis(b, axis, 0).reshape(c, -1) for b in batches], axis=1).astype(np.float64)
    np.testing.assert_array_equal(pc.min, flat.min(axis=1))
    np.testing.assert_array_equal(pc.max, flat.max(axis=1))
    np.testing.assert_array_equal(pc.absmax, np.abs(flat).max(axis=1))
    np.testing.assert_allclose(pc.mean, flat.mean(axis=1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pc.sumsq, (flat**2).sum(axis=1), rtol=1e-12)
    np.testing.assert_allclose(pc.l2, np.linalg.norm(flat, axis=1), rtol=1e-12)
    assert pc.count == flat.shape[1] and pc.channels == c
    assert pc.sum.dtype == np.float64 and pc.min.shape == (c,)


def test_perchannel_rejects_a_different_channel_count(rng):
    pc = PerChannel(1)
    assert pc.min is None and pc.l2 is None
    pc.update(rng.normal(size=(1, 3, 4)))
    with pytest.raises(ValueError, match="3 channels"):
        pc.update(rng.normal(size=(1, 4, 4)))
    with pytest.raises(ValueError):
        PerChannel(5).update(rng.normal(size=(1, 3)))


# ------------------------------------------------------------------ Gram
@pytest.mark.parametrize("axis", [-1, 1])
def test_gram_matches_xtx(rng, axis):
    c = 5
    shapes = [(2, 7, c), (1, 3, c), (4, 1, c)] if axis == -1 else [(1, c, 4, 4), (2, c, 3, 1)]
    batches = [rng.normal(size=s).astype(np.float32) for s in shapes]
    g = Gram(axis)
    for b in batches:
        g.update(b)
    x = np.concatenate([np.moveaxis(b, axis, -1).reshape(-1, c) for b in batches]).astype(np.float64)
    np.testing.assert_allclose(g.xtx, x.T @ x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.sum, x.sum(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    assert g.count == x.shape[0] and g.xtx.dtype == np.float64 and g.xtx.shape == (c, c)


def test_gram_rejects_a_different_channel_count(rng):
    g = Gram()
    g.update(rng.normal(size=(2, 3)))
    with pytest.raises(ValueError):
        g.update(rng.normal(size=(2, 4)))
