"""runtime_check: metrics, tolerances, shape/dtype mismatches, feeds."""
from __future__ import annotations

import json
import math

import numpy as np
import onnx
from onnx import TensorProto, helper
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
    assert compare(a, a, feeds, measure_latency=True).latency_ms["enabled"]["reference"] > 0


# --------------------------------------------------------------------- kinds and criteria
import onnx.helper as oh  # noqa: E402
import onnx.numpy_helper as nh  # noqa: E402

from onnxpress.errors import InputError  # noqa: E402
from onnxpress.runtime_check import Tolerance, default_tolerance, model_kind, u8s8_without_vnni  # noqa: E402
from onnxpress.runtime_check.targets import get_target  # noqa: E402

F = onnx.TensorProto.FLOAT


def _matmul(weight: np.ndarray, qdq: str | None = None, out_dim: int = 10) -> onnx.ModelProto:
    """x[N,16] @ W[16,out_dim]; ``qdq``: 'u8' or 's8' activations through Q/DQ
    and int8 weights through DQ; W may be float16 (Cast to float)."""
    nodes, inits = [], []
    x = "x"
    if qdq:
        zp_t = onnx.TensorProto.UINT8 if qdq == "u8" else onnx.TensorProto.INT8
        inits += [oh.make_tensor("xs", F, [], [0.02]), oh.make_tensor("xz", zp_t, [], [128 if qdq == "u8" else 0])]
        nodes += [oh.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                  oh.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x_dq"])]
        x = "x_dq"
        scale = float(np.abs(weight).max() / 127)
        inits += [nh.from_array(np.round(weight / scale).astype(np.int8), "wq"),
                  oh.make_tensor("ws", F, [], [scale]), oh.make_tensor("wz", onnx.TensorProto.INT8, [], [0])]
        nodes.append(oh.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"]))
    elif weight.dtype == np.float16:
        inits.append(nh.from_array(weight, "w16"))
        nodes.append(oh.make_node("Cast", ["w16"], ["w"], to=F))
    else:
        inits.append(nh.from_array(weight, "w"))
    nodes.append(oh.make_node("MatMul", [x, "w"], ["y"]))
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F, ["N", 16])],
                      [oh.make_tensor_value_info("y", F, ["N", out_dim])], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def weight():
    return np.random.default_rng(1).standard_normal((16, 10)).astype(np.float32)


def test_model_kind_and_default_criterion(weight):
    assert model_kind(_matmul(weight)) == "fp32"
    assert model_kind(_matmul(weight.astype(np.float16))) == "fp16"
    assert model_kind(_matmul(weight, qdq="s8")) == "int8"
    assert default_tolerance("fp32").describe() == "|a-b| <= 1e-05 + 0.0001*|a|"
    assert "cosine >= 0.999" in default_tolerance("fp16").describe()
    int8 = default_tolerance("int8")
    assert not int8.elementwise and int8.describe() == "SNR >= 20 dB and cosine >= 0.99"
    t = int8.with_overrides({"atol": 0.5}, source="given")
    assert t.describe() == "|a-b| <= 0.5 + 0*|a| and SNR >= 20 dB and cosine >= 0.99"
    with pytest.raises(InputError, match="unknown tolerance key 'bogus'"):
        Tolerance().with_overrides({"bogus": 1}, source="x")


def test_int8_is_judged_by_snr_and_cosine_not_atol(weight):
    ref = _matmul(weight)
    q = _matmul(weight, qdq="s8")
    feeds = random_feeds(ref, n=2, dim_sizes={"N": 64})
    report = compare(ref, q, feeds)
    assert report.kind == "int8" and report.passed, report.to_table()
    o = report.outputs[0]
    assert o.max_abs > 1e-3  # far beyond fp32 atol, yet fine for int8
    assert o.criterion == "SNR >= 20 dB and cosine >= 0.99"
    assert "criterion (int8 candidate): SNR >= 20 dB and cosine >= 0.99" in report.to_table()
    # The same model forced to the fp32 criterion fails elementwise.
    assert not compare(ref, q, feeds, kind="fp32").passed
    # A demanding SNR fails and says why.
    strict = compare(ref, q, feeds, tolerance={"min_snr_db": 80})
    assert not strict.passed and "SNR" in strict.outputs[0].reason and "< 80 dB" in strict.outputs[0].reason


def test_fp16_candidate_gets_the_loose_criterion(weight):
    ref = _matmul(weight)
    half = _matmul(weight.astype(np.float16))
    report = compare(ref, half, random_feeds(ref, n=2, dim_sizes={"N": 8}))
    assert report.kind == "fp16" and report.passed, report.to_table()
    assert report.outputs[0].max_abs > 1e-5


def test_top1_top5_agreement_and_min_top1(weight):
    ref = _matmul(weight, out_dim=10)
    w2 = weight.copy()
    w2[:, 0] += 0.8  # class 0 wins more often
    report = compare(ref, _matmul(w2), random_feeds(ref, n=1, dim_sizes={"N": 200}), atol=1e9)
    o = report.outputs[0]
    assert o.passed and o.top1 is not None and 0.3 < o.top1 < 1.0
    assert o.top5 is not None and o.top5 >= o.top1
    report = compare(ref, _matmul(w2), random_feeds(ref, n=1, dim_sizes={"N": 200}), atol=1e9,
                     tolerance={"min_top1": 0.99})
    assert not report.passed and "top-1 agreement" in report.outputs[0].reason
    # Non-classifier outputs (last dim 1) have no top-k.
    narrow = _matmul(weight[:, :1], out_dim=1)
    assert compare(narrow, narrow, random_feeds(narrow, n=1, dim_sizes={"N": 3})).outputs[0].top1 is None


def test_no_topk_for_rank4_maps():
    """A [N, C, H, W] map (segmentation, a detector's probability map) is not a
    classifier's scores: its last axis is image width, so no top-k is reported."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 16])
    m = helper.make_model(helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "g", [x], [y]),
                          opset_imports=[helper.make_opsetid("", 17)])
    o = compare(m, m, random_feeds(m, n=1)).outputs[0]
    assert o.top1 is None and o.top5 is None and o.passed


def test_per_output_tolerances():
    two = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] a, float[N,4] b) { a = Relu(x)  b = Abs(x) }''')
    shifted = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] a, float[N,4] b) <float e = {0.01}> { r = Relu(x) a = Add(r, e) b = Abs(x) }''')
    feeds = random_feeds(two, n=1, dim_sizes={"N": 3})
    report = compare(two, shifted, feeds)
    assert [o.passed for o in report.outputs if o.level == "disabled"] == [False, True]
    report = compare(two, shifted, feeds, per_output={"a": {"atol": 0.02}})
    assert report.passed and report.criteria["a"].startswith("|a-b| <= 0.02")
    assert report.criteria["b"].startswith("|a-b| <= 1e-05")
    with pytest.raises(InputError, match="output 'nope'"):
        compare(two, shifted, feeds, per_output={"nope": {"atol": 1}})


def test_u8s8_without_vnni_warning(weight):
    no_vnni = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n"
    vnni = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    u8 = _matmul(weight * 10, qdq="u8")  # full 8-bit weights
    assert u8s8_without_vnni(u8, no_vnni)
    assert not u8s8_without_vnni(u8, vnni)
    assert not u8s8_without_vnni(_matmul(weight, qdq="s8"), no_vnni)  # S8S8
    small = _matmul(weight, qdq="u8")
    for t in small.graph.initializer:  # 7-bit weights cannot saturate
        if t.name == "wq":
            t.CopyFrom(nh.from_array((nh.to_array(t) // 2).astype(np.int8), "wq"))
    assert not u8s8_without_vnni(small, no_vnni)


class _NoisyTarget:
    """Stands for an arm64 CPU with FP16 arithmetic: the host CPU plus a constant offset."""

    emulated = True

    def __init__(self, name="arm64:cortex-a76", offset=1e-3):
        self.name, self.offset, self.cpu = name, offset, get_target("cpu")

    def run(self, jobs):
        results = self.cpu.run(jobs)
        for r in results:
            r.outputs = [[o + np.asarray(self.offset, o.dtype) for o in feed] for feed in r.outputs]
            r.times = [t * 100 for t in r.times]
        return results


def test_cross_target_compares_candidate_with_itself_on_cpu(weight):
    ref = _matmul(weight)
    half = _matmul(weight.astype(np.float16))
    report = compare(ref, half, random_feeds(ref, n=2, dim_sizes={"N": 4}), targets=["cpu", _NoisyTarget()],
                     measure_latency=True, latency_repeats=3)
    assert [t["name"] for t in report.targets] == ["cpu", "arm64:cortex-a76"]
    assert report.targets[1]["emulated"] is True
    assert {o.target for o in report.outputs} == {"cpu", "arm64:cortex-a76"}
    assert report.passed  # the offset moves reference and candidate alike on the target
    assert {o.target for o in report.cross} == {"arm64:cortex-a76 vs cpu"}
    assert all(o.max_abs == pytest.approx(1e-3, rel=1e-2) for o in report.cross)
    note = next(n for n in report.notes if "vs cpu" in n)
    assert "FP16 arithmetic" in note and "cortex-a76" in note
    assert any("not representative" in n for n in report.notes)
    native = next(l for l in report.latency if l["target"] == "cpu")
    emulated = next(l for l in report.latency if l["target"] == "arm64:cortex-a76")
    assert native["speedup"] is not None and emulated["speedup"] is None and not emulated["representative"]
    assert emulated["reference"]["runs"] == 3
    table = report.to_table()
    assert "cross-target" in table and "[emulated: not representative]" in table
    assert report.sizes["candidate"]["disk"] < report.sizes["reference"]["disk"]


def test_target_errors_are_input_errors():
    a = _m("Relu(x)")
    feeds = random_feeds(a, n=1, dim_sizes={"N": 2})
    with pytest.raises(InputError, match="unknown target 'bogus'"):
        compare(a, a, feeds, targets=["bogus"])
    with pytest.raises(InputError, match="not available"):
        compare(a, a, feeds, targets=["ep:NoSuchExecutionProvider"])


def _argmax_model(weight: np.ndarray) -> onnx.ModelProto:
    """x [N, 8] -> labels = ArgMax(x @ W) [N] int64: a classifier's label output."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("labels", TensorProto.INT64, ["N"])
    w = onnx.numpy_helper.from_array(weight.astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["s"]),
             helper.make_node("ArgMax", ["s"], ["labels"], axis=1, keepdims=0)]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]), opset_imports=[helper.make_opsetid("", 17)])


def test_integer_outputs_of_lossy_candidates_are_judged_by_agreement():
    """Labels: an int8/fp16 candidate passes when >= 99 % of them agree (default)
    and fails below, whatever their numeric distance; fp32 candidates must be exact."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 10))
    ref = _argmax_model(w)
    feeds = [{"x": rng.standard_normal((400, 8)).astype(np.float32)}]
    noise = np.random.default_rng(1).standard_normal(w.shape)
    near = w + 0.005 * noise  # 2 of 400 labels flip
    far = w + 0.5 * noise     # many flip
    # The candidate is fp32 by kind, so give it the int8 default criterion explicitly.
    int8 = {k: getattr(default_tolerance("int8"), k) for k in default_tolerance("int8").KEYS}
    ok = compare(ref, _argmax_model(near), feeds, tolerance=int8).outputs[0]
    assert ok.agreement is not None and 0.99 <= ok.agreement < 1.0 and ok.passed, ok
    bad = compare(ref, _argmax_model(far), feeds, tolerance=int8).outputs[0]
    assert bad.agreement < 0.99 and not bad.passed and "agreement" in bad.reason
    exact = compare(ref, _argmax_model(near), feeds).outputs[0]  # fp32 default: labels must be equal
    assert not exact.passed and exact.agreement == ok.agreement
