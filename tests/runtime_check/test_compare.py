"""runtime_check: metrics, tolerances, shape/dtype mismatches, feeds."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest

from onnxpress.errors import InputNameError
from onnxpress.runtime_check import compare, load_feeds, random_feeds, validate_feeds

BASE = '''
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,4] x) => (float[N,4] y) {
  y = %s
}'''


def _m(body: str) -> onnx.ModelProto:
    return onnx.parser.parse_model(BASE % body)


def test_identical_models_pass_with_exact_metrics():
    a = _m("Relu(x)")
    feeds = random_feeds(a, n=3, dim_sizes={"N": 5})
    assert feeds[0]["x"].shape == (5, 4)
    report = compare(a, a, feeds)
    assert report.passed and len(report.outputs) == 2  # ORT optimizations disabled and enabled
    for o in report.outputs:
        assert o.max_abs == 0 and math.isinf(o.snr_db) and o.cosine == pytest.approx(1.0)
    assert json.loads(report.to_json())["passed"] is True
    assert "PASS" in report.to_table()


def test_small_difference_measured_and_judged_by_tolerance():
    a = _m("Relu(x)")
    b = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] y) <float eps = {0.001}> { r = Relu(x)  y = Add(r, eps) }''')
    feeds = random_feeds(a, n=2, dim_sizes={"N": 3})
    report = compare(a, b, feeds, atol=1e-5, rtol=0)
    assert not report.passed
    o = report.outputs[0]
    assert o.max_abs == pytest.approx(1e-3, rel=1e-3)
    assert o.mean_abs == pytest.approx(1e-3, rel=1e-3)
    assert 0 < o.snr_db < 100 and o.cosine < 1
    assert "outside tolerance" in o.reason
    assert compare(a, b, feeds, atol=2e-3, rtol=0).passed


def test_shape_mismatch_fails_even_with_equal_values():
    a = _m("Relu(x)")
    b = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N4] y) <int64[1] s = {-1}> { r = Relu(x)  y = Reshape(r, s) }''')
    report = compare(a, b, random_feeds(a, n=1, dim_sizes={"N": 2}))
    assert not report.passed and report.outputs[0].reason == "shape mismatch"


def test_new_nan_is_reported():
    a = _m("Abs(x)")
    b = _m("Sqrt(x)")  # NaN for negative inputs
    report = compare(a, b, random_feeds(a, n=1, dim_sizes={"N": 4}), atol=1e9)
    assert not report.passed and report.outputs[0].nonfinite > 0


def test_feed_validation_names_the_input(tmp_path):
    a = _m("Relu(x)")
    with pytest.raises(InputNameError, match="no input 'z'"):
        validate_feeds(a, [{"z": np.zeros((1, 4), np.float32)}])
    with pytest.raises(InputNameError, match="'x' has shape"):
        validate_feeds(a, [{"x": np.zeros((1, 5), np.float32)}])
    with pytest.raises(InputNameError, match="dtype"):
        validate_feeds(a, [{"x": np.zeros((1, 4), np.int64)}])
    np.savez(tmp_path / "a.npz", x=np.ones((2, 4), np.float32))
    np.savez(tmp_path / "b.npz", x=np.zeros((3, 4), np.float32))
    feeds = load_feeds(tmp_path)
    assert [f["x"].shape for f in feeds] == [(2, 4), (3, 4)]
    assert compare(a, a, feeds, measure_latency=True).latency_ms["disabled"]["reference"] > 0
