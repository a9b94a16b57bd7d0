"""quantize-int8 on small graphs: fidelity against fp32 in onnxruntime (graph
optimizations off and on), what onnxruntime fuses (int8 kernels), and the edge
cases of scales, biases and placement."""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import pytest

import onnxpress
from onnxpress.errors import InputError
from onnxpress.graph import load
from onnxpress.passes import Context, make_pass
from onnxpress.quant import QuantConfig, count_int8_kernels, is_quantized
from onnxpress.quant.ranges import (
    MIN_SCALE,
    activation_qparams,
    entropy_range,
    mse_range,
    percentile_range,
    qrange,
    quantize_weight,
    range_from_histogram,
    weight_scales,
)
from tests.conftest import run_ort, with_output_shapes

F = onnx.TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits, opset=17):
    g = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info(n, F, s) for n, s in inputs],
        [oh.make_tensor_value_info(n, F, None) for n in outputs],
        [nh.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    inferred = onnx.shape_inference.infer_shapes(m)
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for i, o in enumerate(m.graph.output):
        if o.name in known and known[o.name].type.tensor_type.HasField("shape"):
            m.graph.output[i].CopyFrom(known[o.name])
    onnx.checker.check_model(m, full_check=True)
    return m


def _feeds(model, n, seed, heavy_tailed: bool = False):
    """``n`` seeded normal feeds; ``heavy_tailed``: times a log-normal factor (rare
    large values: int8 activations lose SNR on them, int8 weights do not)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        f = {}
        for vi in model.graph.input:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            x = rng.normal(size=shape)
            f[vi.name] = (x * np.exp(1.5 * rng.normal(size=shape)) if heavy_tailed else x).astype(np.float32)
        out.append(f)
    return out


def quantize(model, calib=None, **options):
    m = load(onnx.ModelProto.FromString(model.SerializeToString()))
    calib = _feeds(model, 16, 1) if calib is None else calib
    result = make_pass("quantize-int8", **options).run(m, Context(calibration=calib))
    q = m.to_proto()
    onnx.checker.check_model(q, full_check=True)
    return q, result


def snr_db(ref, got):
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    noise = np.sum((ref - got) ** 2)
    return np.inf if noise == 0 else 10 * np.log10(np.sum(ref**2) / noise)


def cosine(ref, got):
    a, b = np.ravel(ref).astype(np.float64), np.ravel(got).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def assert_close_fp32(fp32, q, min_snr=25.0, min_cos=0.995, seed=2):
    for feeds in _feeds(fp32, 4, seed):
        for optimize in (False, True):
            ref = run_ort(fp32, feeds, optimize)
            got = run_ort(q, feeds, optimize)
            for r, g in zip(ref, got):
                assert r.shape == g.shape and np.all(np.isfinite(g))
                assert snr_db(r, g) >= min_snr, (snr_db(r, g), optimize)
                assert cosine(r, g) >= min_cos


def _initializers(q):
    return {t.name: nh.to_array(t) for t in q.graph.initializer}


def _conv_relu_conv():
    rng = np.random.default_rng(0)
    return _model(
        [
            oh.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c1"], ["r1"]),
            oh.make_node("Conv", ["r1", "W2", "B2"], ["y"], pads=[1, 1, 1, 1]),
        ],
        [("x", [1, 3, 16, 16])],
        ["y"],
        {
            "W1": (rng.normal(size=(8, 3, 3, 3)) * 0.3).astype(np.float32),
            "B1": rng.normal(size=8).astype(np.float32),
            "W2": (rng.normal(size=(4, 8, 3, 3)) * 0.2).astype(np.float32),
            "B2": rng.normal(size=4).astype(np.float32),
        },
    )


# ------------------------------------------------------------------ ranges
def test_scales_never_zero_or_nan():
    for lo, hi in [(0.0, 0.0), (3.0, 3.0), (-2.0, -2.0), (np.nan, np.inf)]:
        for dtype, sym in [("uint8", False), ("int8", False), ("int8", True)]:
            qmin, qmax = qrange(dtype, sym)
            s, z = activation_qparams(lo, hi, qmin, qmax, sym)
            assert np.isfinite(s) and s >= MIN_SCALE and qmin <= z <= qmax
    w = np.zeros((4, 3), np.float32)
    w[1] = [1.0, -2.0, 0.5]
    s = weight_scales(w, 0, 127)
    assert np.all(s > 0) and np.all(np.isfinite(s))
    q, _ = quantize_weight(w, 0, -127, 127, s)
    assert q.dtype == np.int8 and np.all(q[0] == 0) and q[1, 1] == -127


def test_qrange_7bit_and_symmetric():
    assert qrange("int8", True, 7) == (-63, 63)
    assert qrange("int8", True) == (-127, 127)
    assert qrange("uint8") == (0, 255)


def test_range_methods_clip_outliers():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=200000), [40.0]])
    counts, edges = np.histogram(x, bins=2048)
    lo, hi = percentile_range(edges, counts, 99.9)
    assert 2.5 < hi < 4.5 and -4.5 < lo < -2.5
    lo, hi = entropy_range(edges, counts, -128, 127)
    assert hi < 20 and lo > -20
    # MSE keeps a lone outlier among 200k values (its clipping error would cost more
    # than the coarser rounding), but clips a long thin tail.
    lo, hi = mse_range(edges, counts, -128, 127)
    assert edges[0] <= lo < -2 and 2 < hi <= edges[-1]
    # Its expected error is never above minmax's.
    tail = np.concatenate([rng.laplace(size=100000), rng.uniform(5, 60, size=300)])
    counts, edges = np.histogram(tail, bins=2048)
    centers = 0.5 * (edges[1:] + edges[:-1])

    def err(lo, hi):
        s, z = activation_qparams(lo, hi, -128, 127, False)
        q = np.clip(np.rint(centers / s) + z, -128, 127)
        return float(np.sum(counts * (centers - (q - z) * s) ** 2))

    lo, hi = mse_range(edges, counts, -128, 127)
    assert err(lo, hi) <= err(edges[0], edges[-1]) and hi < edges[-1]


# ---------------------------------------------------------------- placement
def test_conv_relu_conv_fuses_and_matches_fp32():
    m = _conv_relu_conv()
    q, result = quantize(m)
    assert result.modified and result.stats["quantized_Conv"] == 2
    assert count_int8_kernels(q) == {"QLinearConv": 2}
    assert count_int8_kernels(q, "all").get("QLinearConv") == 2
    assert_close_fp32(m, q, min_snr=25)
    inits = _initializers(q)
    assert "W1" not in inits and "W2" not in inits  # the fp32 weights are gone
    assert sum(v.dtype == np.int8 for v in inits.values()) >= 2
    assert sum(v.dtype == np.int32 for v in inits.values()) >= 2
    assert result.stats["bytes_after"] < 0.5 * result.stats["bytes_before"]


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_methods_and_dtypes(method, dtype):
    m = _conv_relu_conv()
    q, _ = quantize(m, method=method, activation_dtype=dtype, weight_bits=8)
    # KL-divergence clips hardest (the output too): it is judged by task metrics.
    assert_close_fp32(m, q, min_snr=15 if method == "entropy" else 20, min_cos=0.98)


def test_int16_activations():
    m = _conv_relu_conv()
    q, _ = quantize(m, activation_dtype="int16", weight_bits=8)
    assert_close_fp32(m, q, min_snr=30)


def test_gemm_row_bias_and_tiny_weight_scale_do_not_overflow():
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(16, 8)) * 0.5).astype(np.float32)
    w[:, 3] = 1e-12  # tiny weights: bias / (x_scale * w_scale) would overflow int32
    w[:, 5] = 0.0  # a pruned output
    c = rng.normal(size=(1, 8)).astype(np.float32) * 3
    m = _model(
        [oh.make_node("Gemm", ["x", "W", "C"], ["y"])], [("x", [4, 16])], ["y"], {"W": w, "C": c}
    )
    q, result = quantize(m)
    assert result.stats["quantized_Gemm"] == 1
    inits = _initializers(q)
    bias = [v for v in inits.values() if v.dtype == np.int32 and v.ndim == 1 and v.size == 8]
    assert bias and np.all(np.abs(bias[0].astype(np.int64)) < 2**31 - 1)
    scales = [v for v in inits.values() if v.dtype == np.float32]
    assert all(np.all(np.isfinite(s)) and np.all(s > 0) for s in scales)
    assert_close_fp32(m, q, min_snr=25)
    assert count_int8_kernels(q).get("QGemm", 0) == 1


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_transb_axis(trans_b):
    rng = np.random.default_rng(1)
    w = (rng.normal(size=(16, 6)) * rng.uniform(0.01, 2, size=(1, 6))).astype(np.float32)
    if trans_b:
        w = np.ascontiguousarray(w.T)
    m = _model(
        [oh.make_node("Gemm", ["x", "W", "C"], ["y"], transB=trans_b, alpha=0.5, beta=2.0)],
        [("x", [4, 16])],
        ["y"],
        {"W": w, "C": rng.normal(size=6).astype(np.float32)},
    )
    q, _ = quantize(m)
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("W"))
    axis = next(a.i for a in dq.attribute if a.name == "axis")
    assert axis == (0 if trans_b else 1)
    assert_close_fp32(m, q, min_snr=28)


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_per_channel_axis_1(group):
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(4, 3, 2, 2)) * rng.uniform(0.01, 1.0, size=(1, 3, 1, 1))).astype(np.float32)
    m = _model(
        [oh.make_node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[2, 2], group=group)],
        [("x", [1, 4, 8, 8])],
        ["y"],
        {"W": w, "B": rng.normal(size=3 * group).astype(np.float32)},
    )
    # conv_transpose="int8": on CPU targets "auto" keeps ConvTranspose float (no int8 kernel).
    q, result = quantize(m, conv_transpose="int8")
    assert result.stats["quantized_ConvTranspose"] == 1
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("W"))
    assert next(a.i for a in dq.attribute if a.name == "axis") == 1
    assert_close_fp32(m, q, min_snr=28)


def test_shared_weight_two_matmuls_with_different_input_scales():
    rng = np.random.default_rng(0)
    m = _model(
        [
            oh.make_node("MatMul", ["a", "W"], ["ya"]),
            oh.make_node("Mul", ["b", "k"], ["b10"]),
            oh.make_node("MatMul", ["b10", "W"], ["yb"]),
        ],
        [("a", [2, 8, 16]), ("b", [2, 8, 16])],
        ["ya", "yb"],
        {"W": (rng.normal(size=(16, 12)) * 0.3).astype(np.float32), "k": np.array(10.0, np.float32)},
    )
    q, result = quantize(m)
    assert result.stats["quantized_MatMul"] == 2
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("W")]
    assert len(dqs) == 1  # one int8 copy, one DequantizeLinear
    assert "W" not in _initializers(q)
    assert_close_fp32(m, q, min_snr=28)
    assert sum(count_int8_kernels(q).values()) == 2


def test_all_zero_channel_gives_no_nan_or_zero_scale():
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(6, 3, 3, 3)) * 0.3).astype(np.float32)
    w[2] = 0.0
    b = rng.normal(size=6).astype(np.float32)
    b[4] = 0.0
    m = _model(
        [oh.make_node("Conv", ["x", "W", "B"], ["c"]), oh.make_node("Mul", ["c", "z"], ["y"])],
        [("x", [1, 3, 10, 10])],
        ["y"],
        {"W": w, "B": b, "z": np.float32(1.0)},
    )
    q, _ = quantize(m)
    for v in _initializers(q).values():
        if v.dtype == np.float32:
            assert np.all(np.isfinite(v)) and np.all(v > 0)
    assert_close_fp32(m, q, min_snr=25)
    # An all-zero activation (calibration of zeros only) also quantizes without NaN.
    zeros = [{"x": np.zeros((1, 3, 10, 10), np.float32)} for _ in range(3)]
    q0, _ = quantize(m, calib=zeros)
    out = run_ort(q0, {"x": np.zeros((1, 3, 10, 10), np.float32)})[0]
    ref = run_ort(m, {"x": np.zeros((1, 3, 10, 10), np.float32)})[0]
    assert np.all(np.isfinite(out)) and np.allclose(out, ref, atol=1e-2 * np.abs(ref).max() + 1e-6)


def test_residual_add_quantized_and_fused():
    rng = np.random.default_rng(0)
    w = lambda *s: (rng.normal(size=s) * 0.2).astype(np.float32)  # noqa: E731
    m = _model(
        [
            oh.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c1"], ["r1"]),
            oh.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1]),
            oh.make_node("Add", ["c2", "r1"], ["s"]),
            oh.make_node("Relu", ["s"], ["r2"]),
            oh.make_node("Conv", ["r2", "W3", "B3"], ["y"]),
        ],
        [("x", [1, 8, 12, 12])],
        ["y"],
        {"W1": w(8, 8, 3, 3), "B1": w(8), "W2": w(8, 8, 3, 3), "B2": w(8), "W3": w(4, 8, 1, 1), "B3": w(4)},
    )
    q, result = quantize(m)
    assert result.stats["quantized_Add"] == 1 and result.stats["quantized_Conv"] == 3
    k = count_int8_kernels(q)
    assert k.get("QLinearConv") == 3 and k.get("QLinearAdd") == 1, k
    assert_close_fp32(m, q, min_snr=25)


def test_concat_shares_one_scale():
    rng = np.random.default_rng(0)
    m = _model(
        [
            oh.make_node("Conv", ["x", "W1"], ["a"]),
            oh.make_node("Conv", ["x", "W2"], ["b"]),
            oh.make_node("Concat", ["a", "b"], ["c"], axis=1),
            oh.make_node("Conv", ["c", "W3"], ["y"]),
        ],
        [("x", [1, 3, 8, 8])],
        ["y"],
        {
            "W1": (rng.normal(size=(4, 3, 1, 1)) * 0.1).astype(np.float32),
            "W2": (rng.normal(size=(4, 3, 1, 1)) * 2.0).astype(np.float32),
            "W3": (rng.normal(size=(2, 8, 1, 1)) * 0.3).astype(np.float32),
        },
    )
    q, result = quantize(m)
    assert result.stats["quantized_Concat"] == 1
    by_out = {o: n for n in q.graph.node for o in n.output}
    concat = next(n for n in q.graph.node if n.op_type == "Concat")
    scales = {by_out[i].input[1] for i in concat.input}  # DQ scale names of the inputs
    q_after = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and by_out.get(n.input[0]) is concat)
    scales.add(q_after.input[1])
    assert len(scales) == 1, scales
    assert_close_fp32(m, q, min_snr=22)


def test_softmax_and_decomposed_layernorm_stay_float():
    rng = np.random.default_rng(0)
    m = _model(
        [
            oh.make_node("MatMul", ["x", "W"], ["h"]),
            oh.make_node("ReduceMean", ["h"], ["mu"], axes=[-1]),
            oh.make_node("Sub", ["h", "mu"], ["d"]),
            oh.make_node("Mul", ["d", "d"], ["d2"]),
            oh.make_node("ReduceMean", ["d2"], ["var"], axes=[-1]),
            oh.make_node("Add", ["var", "eps"], ["ve"]),
            oh.make_node("Sqrt", ["ve"], ["sd"]),
            oh.make_node("Div", ["d", "sd"], ["n"]),
            oh.make_node("Softmax", ["n"], ["p"], axis=-1),
            oh.make_node("MatMul", ["p", "W2"], ["y"]),
        ],
        [("x", [2, 5, 16])],
        ["y"],
        {
            "W": (rng.normal(size=(16, 16)) * 0.3).astype(np.float32),
            "W2": (rng.normal(size=(16, 4)) * 0.3).astype(np.float32),
            "eps": np.float32(1e-5),
        },
    )
    q, result = quantize(m)
    assert result.stats["quantized"] == 2
    ops = [n.op_type for n in q.graph.node]
    # Mul(d, d) has float operands from float ops: it stays float, as do the others.
    assert "QuantizeLinear" in ops
    prod = {o: n for n in q.graph.node for o in n.output}
    for n in q.graph.node:
        if n.op_type in ("ReduceMean", "Sub", "Mul", "Sqrt", "Div", "Softmax"):
            assert all(prod.get(i) is None or prod[i].op_type != "DequantizeLinear" or not n.op_type == "Softmax" for i in n.input)
    mul = next(n for n in q.graph.node if n.op_type == "Mul")
    assert all(prod[i].op_type != "DequantizeLinear" for i in mul.input)
    assert_close_fp32(m, q, min_snr=20, min_cos=0.99)


def test_pass_through_reuses_scale_and_fuses():
    rng = np.random.default_rng(0)
    m = _model(
        [
            oh.make_node("Conv", ["x", "W1"], ["c"]),
            oh.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            oh.make_node("Reshape", ["p", "shape"], ["r"]),
            oh.make_node("MatMul", ["r", "W2"], ["y"]),
        ],
        [("x", [1, 3, 8, 8])],
        ["y"],
        {
            "W1": (rng.normal(size=(4, 3, 1, 1)) * 0.5).astype(np.float32),
            "shape": np.array([1, 64], np.int64),
            "W2": (rng.normal(size=(64, 10)) * 0.2).astype(np.float32),
        },
    )
    q, result = quantize(m)
    assert result.stats["quantized_Reshape"] == 1 and result.stats["quantized_MaxPool"] == 1
    opt = __import__("onnxpress.quant.inspect", fromlist=["x"]).optimized_op_counts(q)
    assert opt.get("QLinearConv") == 1 and (opt.get("MatMulIntegerToFloat", 0) + opt.get("QLinearMatMul", 0)) == 1, opt
    assert_close_fp32(m, q, min_snr=25)


def test_if_branch_is_quantized():
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(4, 3, 1, 1)) * 0.5).astype(np.float32)
    then_g = oh.make_graph(
        [oh.make_node("Conv", ["x", "Wt"], ["yt"]), oh.make_node("Relu", ["yt"], ["yt2"])],
        "then",
        [],
        [oh.make_tensor_value_info("yt2", F, [1, 4, 6, 6])],
        [nh.from_array(w, "Wt")],
    )
    else_g = oh.make_graph(
        [oh.make_node("Conv", ["x", "We"], ["ye"])], "else", [], [oh.make_tensor_value_info("ye", F, [1, 4, 6, 6])],
        [nh.from_array(-w, "We")],
    )
    g = oh.make_graph(
        [oh.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)],
        "g",
        [oh.make_tensor_value_info("x", F, [1, 3, 6, 6]), oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", F, [1, 4, 6, 6])],
    )
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    calib = [
        {"x": np.random.default_rng(i).normal(size=(1, 3, 6, 6)).astype(np.float32), "cond": np.array(True)}
        for i in range(8)
    ]
    q, result = quantize(m, calib=calib)
    # The then-branch was reached by the data; the else-branch never: it stays float.
    assert result.stats["quantized_Conv"] == 1
    assert result.stats.get("float_no_calibration_data_reached_it") == 1
    x = np.random.default_rng(9).normal(size=(1, 3, 6, 6)).astype(np.float32)
    for cond in (True, False):
        ref = run_ort(m, {"x": x, "cond": np.array(cond)})[0]
        got = run_ort(q, {"x": x, "cond": np.array(cond)})[0]
        assert snr_db(ref, got) > 25


def test_opset_11_is_converted_to_13():
    m = _conv_relu_conv()
    m11 = onnx.ModelProto.FromString(m.SerializeToString())
    m11.opset_import[0].version = 11  # Conv and Relu are the same at opset 11
    m11.ir_version = 6
    onnx.checker.check_model(m11, full_check=True)
    q, result = quantize(m11)
    assert result.stats["opset_converted"] == 1
    assert {o.domain: o.version for o in q.opset_import}[""] == 13
    assert_close_fp32(m11, q, min_snr=25)


def test_already_quantized_is_left_unchanged(caplog):
    q, _ = quantize(_conv_relu_conv())
    with caplog.at_level(logging.WARNING):
        q2, result = quantize(q)
    assert not result.modified and result.stats == {"already_quantized": 1}
    assert "already quantized" in caplog.text
    assert len(q2.graph.node) == len(q.graph.node)


def test_needs_calibration():
    m = load(_conv_relu_conv())
    with pytest.raises(InputError, match="needs calibration data"):
        make_pass("quantize-int8").run(m, Context())


def test_exclusions_and_overrides():
    m = _conv_relu_conv()
    q, result = quantize(m, exclude_op_types=["Conv"])
    assert result.stats["quantized"] == 0 and result.stats["kept_float"] == 2
    q, result = quantize(m, overrides={"r1": {"min": 0.0, "max": 100.0}})
    s = _initializers(q)
    assert any(np.isclose(v, 100.0 / 255, rtol=1e-6) for v in s.values() if v.dtype == np.float32 and v.ndim == 0)


def test_lstm_becomes_dynamic_quantize_lstm():
    rng = np.random.default_rng(0)
    h = 8
    m = _model(
        [oh.make_node("LSTM", ["x", "W", "R", "B"], ["y", "yh"], hidden_size=h, direction="bidirectional")],
        [("x", [5, 1, 6])],
        ["y"],
        {
            "W": (rng.normal(size=(2, 4 * h, 6)) * 0.3).astype(np.float32),
            "R": (rng.normal(size=(2, 4 * h, h)) * 0.3).astype(np.float32),
            "B": (rng.normal(size=(2, 8 * h)) * 0.1).astype(np.float32),
        },
    )
    q, result = quantize(m)
    assert result.stats["quantized_LSTM"] == 1
    assert [n.op_type for n in q.graph.node] == ["DynamicQuantizeLSTM"]
    assert_close_fp32(m, q, min_snr=25)


def test_config_for_target():
    assert QuantConfig.for_target("arm64").activation_dtype == "int8"
    vnni = QuantConfig.for_target("x86", flags={"avx2", "avx512_vnni"})
    assert (vnni.activation_dtype, vnni.weight_bits) == ("uint8", 8)
    avx2 = QuantConfig.for_target("x86", flags={"avx2"})
    assert (avx2.activation_dtype, avx2.weight_bits) == ("uint8", 7)
    with pytest.raises(InputError):
        QuantConfig(method="bogus")


def test_edge_int8_recipe_end_to_end():
    m = _conv_relu_conv()
    result = onnxpress.optimize(m, recipe="edge-int8", calibration=_feeds(m, 8, 1), strict=True)
    assert is_quantized(result.working)
    assert count_int8_kernels(result.model) == {"QLinearConv": 2}
    assert_close_fp32(m, result.model, min_snr=25)
    totals = result.pass_totals()
    assert totals["quantize-int8"]["quantized"] == 2


# ------------------------------------------------- range methods vs references
def _laplace_with_outliers(seed=0, n=200000, outliers=40):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.laplace(scale=1.0, size=n), rng.uniform(15, 30, size=outliers) * rng.choice([-1, 1], outliers)])
    counts, edges = np.histogram(x, bins=2048)
    return x, counts, edges


def _qdq_mse(x, lo, hi, qmin, qmax):
    s, z = activation_qparams(lo, hi, qmin, qmax, False)
    s = float(s)
    return float(np.mean((x - (np.clip(np.rint(x / s) + z, qmin, qmax) - z) * s) ** 2))


@pytest.mark.parametrize("qmin, qmax", [(0, 255), (-128, 127)])
def test_range_methods_against_references(qmin, qmax):
    x, counts, edges = _laplace_with_outliers()
    # minmax is the observed range.
    assert range_from_histogram("minmax", edges, counts) == pytest.approx((x.min(), x.max()), abs=1e-9)
    # percentile: numpy's percentile on the raw samples, within one bin.
    width = edges[1] - edges[0]
    lo, hi = range_from_histogram("percentile", edges, counts, percentile=99.9)
    assert hi == pytest.approx(np.percentile(x, 99.9), abs=width)
    assert lo == pytest.approx(np.percentile(x, 0.1), abs=width)
    # mse: a brute-force search of the symmetric clip on the raw samples.
    lo_m, hi_m = range_from_histogram("mse", edges, counts, qmin=qmin, qmax=qmax)
    amax = np.abs(x).max()
    brute = min(
        (_qdq_mse(x, max(x.min(), -t), min(x.max(), t), qmin, qmax), t) for t in np.linspace(amax / 100, amax, 100)
    )
    assert _qdq_mse(x, lo_m, hi_m, qmin, qmax) <= 1.05 * brute[0]
    # entropy: clips the outliers (the bulk of a unit Laplace lies within +-12).
    lo_e, hi_e = range_from_histogram("entropy", edges, counts, qmin=qmin, qmax=qmax)
    for lo_, hi_ in ((lo, hi), (lo_m, hi_m), (lo_e, hi_e)):
        assert x.min() < lo_ < -4 and 4 < hi_ < x.max()  # all three clip below max, keep the bulk
    # KL does not minimize the total squared error (the clipped outliers cost), but
    # the bulk is represented far better than with minmax.
    bulk = x[np.abs(x) < 8]
    assert _qdq_mse(bulk, lo_e, hi_e, qmin, qmax) < 0.5 * _qdq_mse(bulk, x.min(), x.max(), qmin, qmax)


def test_entropy_against_onnxruntime_reference():
    """On symmetric data the KL threshold is close to onnxruntime's implementation
    of the same algorithm (TensorRT's, on the signed histogram)."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.laplace(size=300000), rng.uniform(-40, 40, size=60)])
    amax = float(np.abs(x).max())
    counts, edges = np.histogram(x, bins=2048, range=(-amax, amax))
    ref = HistogramCollector("entropy", True, 2048, 256, None, None).get_entropy_threshold(
        (counts, edges, np.float64(x.min()), np.float64(x.max())), 256
    )
    lo, hi = entropy_range(edges, counts, -128, 127, symmetric=True)
    assert hi == pytest.approx(float(ref[1]), rel=0.35) and lo == pytest.approx(float(ref[0]), rel=0.35)


def test_entropy_keeps_a_dense_negative_side_and_sparse_data():
    """The two defects of the first KL implementation (PP-OCRv4 rec gave 0.0 exact strings)."""
    rng = np.random.default_rng(1)
    # HardSwish-like: a dense negative side [-0.375, 0] and a long positive tail.
    x = np.concatenate([-rng.uniform(0, 0.375, 150000), rng.exponential(0.5, 150000)])
    counts, edges = np.histogram(x, bins=2048)
    lo, hi = entropy_range(edges, counts, 0, 255)
    assert lo == pytest.approx(x.min(), abs=1e-3) and hi > 2.0  # was clipped at |min| = 0.375
    # A stem output whose bulk is negative: the negative side must not be clipped.
    y = np.concatenate([-rng.exponential(8.0, 100000), rng.exponential(1.0, 100000)])
    counts, edges = np.histogram(y, bins=2048)
    lo, hi = entropy_range(edges, counts, 0, 255)
    assert lo < -30
    # Too few values for a KL estimate: the observed range.
    z = rng.exponential(1.0, 1000)
    counts, edges = np.histogram(z, bins=2048)
    assert entropy_range(edges, counts, 0, 255) == pytest.approx((0.0, z.max()))


# ------------------------------------------- weight-only int8 for float layers
def _heavy_tailed_feeds(model, n, seed):
    """Activations with rare large values (so the sensitivity budget keeps the layer float)."""
    return _feeds(model, n, seed, heavy_tailed=True)


def _snr_on(fp32, q, feeds_list, optimize):
    snrs = []
    for feeds in feeds_list:
        for r, g in zip(run_ort(fp32, feeds, optimize), run_ort(q, feeds, optimize)):
            assert r.shape == g.shape and np.all(np.isfinite(g))
            snrs.append(snr_db(r, g))
    return min(snrs)


def _weight_only_cases():
    rng = np.random.default_rng(3)

    def w(*shape):  # output channels of very different magnitude: per-channel scales matter
        return rng.normal(size=shape).astype(np.float32)

    def scaled(a, axis):
        shape = [1] * a.ndim
        shape[axis] = a.shape[axis]
        return (a * np.exp(rng.uniform(-3, 3, size=a.shape[axis])).reshape(shape)).astype(np.float32)

    return {
        # name: (node, input shape, weights, weight name, expected axis, output channels)
        # (more than 4096 weights each: smaller kept layers keep fp32 weights)
        "Conv": (oh.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1]), [1, 16, 8, 8],
                 {"W": scaled(w(48, 16, 3, 3), 0), "B": w(48)}, "W", 0, 48),
        "ConvTranspose": (oh.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2], group=2), [1, 64, 5, 5],
                          {"W": scaled(w(64, 40, 2, 2), 1)}, "W", 1, 40),
        "Gemm_transB0": (oh.make_node("Gemm", ["x", "W", "C"], ["y"]), [4, 128],
                         {"W": scaled(w(128, 48), 1), "C": w(48)}, "W", 1, 48),
        "Gemm_transB1": (oh.make_node("Gemm", ["x", "W", "C"], ["y"], transB=1, alpha=0.5), [4, 128],
                         {"W": scaled(w(48, 128), 0), "C": w(48)}, "W", 0, 48),
        "MatMul_B2d": (oh.make_node("MatMul", ["x", "W"], ["y"]), [2, 5, 128], {"W": scaled(w(128, 40), 1)}, "W", 1, 40),
        "MatMul_B3d": (oh.make_node("MatMul", ["x", "W"], ["y"]), [3, 5, 64], {"W": scaled(w(3, 64, 40), 2)}, "W", 2, 40),
        "MatMul_A2d": (oh.make_node("MatMul", ["W", "x"], ["y"]), [128, 6], {"W": scaled(w(40, 128), 0)}, "W", 0, 40),
    }


@pytest.mark.parametrize("case", sorted(_weight_only_cases()))
def test_weight_only_int8_axis_per_op(case):
    node, in_shape, inits, wname, axis, channels = _weight_only_cases()[case]
    m = _model([node], [("x", in_shape)], ["y"], inits)
    calib = _heavy_tailed_feeds(m, 16, 1)
    # The budget is out of reach with int8 activations, within reach with int8 weights.
    # (conv_transpose="int8": the x86 default keeps ConvTranspose float for speed, with fp32 weights)
    q, result = quantize(m, calib=calib, max_error="snr:35", max_float_fraction=1.0, sensitivity_samples=4,
                         float_layer_weights="int8", conv_transpose="int8")
    st = result.stats
    assert st["sensitivity_kept_float"] == 1 and st["sensitivity_budget_met"] == 1, st
    assert st["weight_only_int8"] == 1 and st["sensitivity_fp32_weights"] == 0, st
    ops = [n.op_type for n in q.graph.node]
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops  # no activation Q/DQ
    assert ops.count("Cast") == 1 and ops.count("Mul") == 1  # W = Cast(Q) * S
    cast = next(n for n in q.graph.node if n.op_type == "Cast")
    mul = next(n for n in q.graph.node if n.op_type == "Mul")
    inits_q = _initializers(q)
    assert wname not in inits_q  # the fp32 weight is gone
    wq = inits_q[cast.input[0]]
    scale = inits_q[next(i for i in mul.input if i != cast.output[0])]
    assert wq.dtype == np.int8 and wq.shape == inits[wname].shape and np.abs(wq).max() == 127
    # One float32 scale per output channel, on the weight's channel axis (broadcast).
    expected = [1] * wq.ndim
    expected[axis] = channels
    assert scale.dtype == np.float32 and list(scale.shape) == expected and np.all(scale > 0)
    # Per channel: every output channel uses its full int8 range.
    amax = np.moveaxis(np.abs(wq.astype(np.int32)), axis, 0).reshape(channels, -1).max(axis=1)
    assert np.all(amax == 127)
    # The float op reads the decompressed weight.
    op = next(n for n in q.graph.node if n.op_type == node.op_type)
    assert mul.output[0] in op.input
    # Differential against fp32, onnxruntime optimizations off and on, on fresh data.
    feeds = _heavy_tailed_feeds(m, 4, 9)
    for optimize in (False, True):
        assert _snr_on(m, q, feeds, optimize) >= 35
    assert st["bytes_after"] < 0.5 * st["bytes_before"]
    # Fully int8 for comparison: the activations cost the budget.
    q_all, _ = quantize(m, calib=calib, conv_transpose="int8")
    assert _snr_on(m, q_all, feeds, False) < 35


def test_weight_only_weights_folded_by_onnxruntime_and_not_by_fold_constants():
    """onnxruntime folds the weight's Cast/Mul at session creation: the optimized
    graph has a plain float Conv (no Cast, Mul or DequantizeLinear left), so its
    fast kernels stay. fold-constants, run again on the quantized model, keeps the
    int8 storage (it never folds a Cast of int8 constants)."""
    from onnxpress.quant import optimized_op_counts

    node, in_shape, inits, *_ = _weight_only_cases()["Conv"]
    m = _model([node], [("x", in_shape)], ["y"], inits)
    q, result = quantize(m, calib=_heavy_tailed_feeds(m, 16, 1), max_error="snr:35", max_float_fraction=1.0,
                         sensitivity_samples=4, float_layer_weights="int8")
    assert result.stats["weight_only_int8"] == 1
    opt = optimized_op_counts(q)
    assert opt.get("Conv", 0) + opt.get("FusedConv", 0) == 1, opt
    assert not {"Cast", "Mul", "DequantizeLinear", "QLinearConv"} & set(opt), opt
    again = onnxpress.optimize(q, recipe="lossless").model
    assert any(i.data_type == onnx.TensorProto.INT8 and i.dims == list(inits["W"].shape) for i in again.graph.initializer)
    assert len(again.SerializeToString()) < 0.5 * len(m.SerializeToString())


def test_weight_only_off_keeps_fp32_weights_and_user_exclusions_stay_fp32():
    node, in_shape, inits, *_ = _weight_only_cases()["Conv"]
    m = _model([node], [("x", in_shape)], ["y"], inits)
    calib = _heavy_tailed_feeds(m, 16, 1)
    q, result = quantize(m, calib=calib, max_error="snr:35", max_float_fraction=1.0, sensitivity_samples=4)
    assert result.stats["sensitivity_kept_float"] == 1 and result.stats["weight_only_int8"] == 0
    assert "W" in _initializers(q) and not any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    # A layer the user excluded keeps fp32 weights even with float_layer_weights="int8".
    named = _model([oh.make_node("Conv", ["x", "W", "B"], ["y"], name="c0", pads=[1, 1, 1, 1])], [("x", in_shape)], ["y"], inits)
    q, result = quantize(named, calib=calib, exclude_nodes=["c0"], float_layer_weights="int8")
    assert result.stats["weight_only_int8"] == 0 and "W" in _initializers(q)
    # A ConvTranspose kept float by the target rule (for speed) gets int8 weights
    # (folded by onnxruntime at load, so its float kernel is unchanged).
    node, in_shape, inits, *_ = _weight_only_cases()["ConvTranspose"]
    ct = _model([node], [("x", in_shape)], ["y"], inits)
    q, result = quantize(ct, calib=_heavy_tailed_feeds(ct, 8, 1), conv_transpose="float", float_layer_weights="int8")
    assert result.stats["quantized"] == 0 and result.stats["weight_only_int8"] == 1 and "W" not in _initializers(q)
    with pytest.raises(InputError, match="float_layer_weights"):
        quantize(m, calib=calib, float_layer_weights="int4")


def test_weight_only_reverts_to_fp32_weights_when_int8_weights_miss_the_budget():
    # A budget no int8 weight meets (8-bit per-channel rounding gives ~40 dB): the
    # kept layer goes back to fp32 weights and the budget holds.
    node, in_shape, inits, *_ = _weight_only_cases()["MatMul_B2d"]
    m = _model([node], [("x", in_shape)], ["y"], inits)
    calib = _heavy_tailed_feeds(m, 16, 1)
    q, result = quantize(m, calib=calib, max_error="snr:70", max_float_fraction=1.0, sensitivity_samples=4,
                         float_layer_weights="int8")
    st = result.stats
    assert st["sensitivity_kept_float"] == 1 and st["sensitivity_fp32_weights"] == 1, st
    assert st["sensitivity_budget_met"] == 1 and st["weight_only_int8"] == 0
    assert "W" in _initializers(q)
    for optimize in (False, True):
        assert _snr_on(m, q, _heavy_tailed_feeds(m, 2, 9), optimize) >= 70


def test_weight_only_in_edge_int8_budget_holds_on_two_layers():
    """Two layers, one kept float by the budget: it gets int8 weights, the other is
    fully int8, and the written model meets the budget on calibration data."""
    rng = np.random.default_rng(5)
    m = _model(
        [
            oh.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
            oh.make_node("Mul", ["h", "h"], ["h2"]),  # squares: outliers in h2
            oh.make_node("MatMul", ["h2", "W2"], ["y"], name="mm2"),
        ],
        [("x", [4, 96])],
        ["y"],
        {"W1": (rng.normal(size=(96, 96)) * 0.1).astype(np.float32),
         "W2": (rng.normal(size=(96, 64)) * 0.1).astype(np.float32)},
    )
    calib = _heavy_tailed_feeds(m, 16, 1)
    q, result = quantize(m, calib=calib, max_error="snr:24", max_float_fraction=0.5, sensitivity_samples=8,
                         float_layer_weights="int8")
    st = result.stats
    assert st["sensitivity_budget_met"] == 1 and st["sensitivity_snr_db"] >= 24, st
    assert st["quantized_MatMul"] == 1 and st["weight_only_int8"] == 1 and st["sensitivity_kept_float"] == 1, st
    assert not any(t.data_type == onnx.TensorProto.FLOAT and t.name in ("W1", "W2") for t in q.graph.initializer)
    # The budget, re-measured in onnxruntime (optimizations off and on) on the
    # samples it was judged on (the SNR of all of them together).
    for optimize in (False, True):
        ref = np.concatenate([run_ort(m, f, optimize)[0].ravel() for f in calib[:8]])
        got = np.concatenate([run_ort(q, f, optimize)[0].ravel() for f in calib[:8]])
        assert snr_db(ref, got) >= 24


def test_small_kept_layer_keeps_fp32_weights():
    # At most 4096 weights: int8 would save too little to pay for a DequantizeLinear.
    rng = np.random.default_rng(3)
    m = _model([oh.make_node("Conv", ["x", "W", "B"], ["y"], pads=[1, 1, 1, 1])], [("x", [1, 3, 8, 8])], ["y"],
               {"W": rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "B": rng.normal(size=6).astype(np.float32)})
    q, result = quantize(m, calib=_heavy_tailed_feeds(m, 16, 1), max_error="snr:35", max_float_fraction=1.0,
                         sensitivity_samples=4, float_layer_weights="int8")
    st = result.stats
    assert st["sensitivity_kept_float"] == 1 and st["weight_only_int8"] == 0 and st["sensitivity_fp32_weights"] == 1, st
    assert "W" in _initializers(q) and not any(n.op_type == "DequantizeLinear" for n in q.graph.node)


# ------------------------------------------------------- int8 Gather tables
def _gather_model(vocab=2000, dim=64, extra_reader=False):
    rng = np.random.default_rng(0)
    table = (rng.normal(size=(vocab, dim)) * 0.05).astype(np.float32)
    table[7] *= 40.0  # one outlier row (a rare token with a large embedding)
    nodes = [
        oh.make_node("Gather", ["E", "ids"], ["e"], axis=0, name="embed"),
        oh.make_node("Add", ["e", "P"], ["h"]),
        oh.make_node("MatMul", ["h", "W"], ["y"]),
    ]
    inits = {"E": table, "P": (rng.normal(size=(dim,)) * 0.05).astype(np.float32),
             "W": (rng.normal(size=(dim, 16)) * 0.2).astype(np.float32)}
    outputs = ["y"]
    if extra_reader:  # a tied output projection reads the table too
        nodes.append(oh.make_node("Transpose", ["E"], ["ET"]))
        nodes.append(oh.make_node("MatMul", ["h", "ET"], ["logits"]))
        outputs.append("logits")
    g = oh.make_graph(
        nodes, "g", [oh.make_tensor_value_info("ids", onnx.TensorProto.INT64, [2, 12])],
        [oh.make_tensor_value_info(o, F, None) for o in outputs],
        [nh.from_array(v, k) for k, v in inits.items()],
    )
    model = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    return with_output_shapes(model)


def _id_feeds(n, seed, vocab=2000, with_outlier=True):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = rng.integers(0, vocab, size=(2, 12)).astype(np.int64)
        if with_outlier:
            ids[0, 3] = 7
        out.append({"ids": ids})
    return out


@pytest.mark.parametrize("scale_mode", ["per-row", "per-tensor"])
def test_gather_table_int8(scale_mode):
    m = _gather_model()
    q, result = quantize(m, calib=_id_feeds(8, 1), embedding_tables="int8", embedding_scale=scale_mode,
                         embedding_min_elements=65536)
    st = result.stats
    assert st["embedding_tables_int8"] == 1 and st["embedding_bytes_saved"] > 0.7 * 2000 * 64 * 4
    inits = _initializers(q)
    assert "E" not in inits
    table = next(v for k, v in inits.items() if k.startswith("E") and v.dtype == np.int8)
    assert table.shape == (2000, 64)
    gather = next(n for n in q.graph.node if n.op_type == "Gather" and n.name == "embed")
    assert inits[gather.input[0]].dtype == np.int8
    readers = [n for n in q.graph.node if gather.output[0] in n.input]
    if scale_mode == "per-tensor":
        assert [n.op_type for n in readers] == ["DequantizeLinear"]
        s = inits[readers[0].input[1]]
        assert s.shape == () and np.isclose(s, np.abs(nh.to_array(m.graph.initializer[0])).max() / 127)
    else:
        assert [n.op_type for n in readers] == ["Cast"]
        row_scale = next(v for k, v in inits.items() if "row_scale" in k)
        assert row_scale.shape == (2000, 1) and row_scale.dtype == np.float32
        scale_gather = next(n for n in q.graph.node if n.op_type == "Gather" and n.input[0] in inits and inits[n.input[0]] is row_scale)
        assert scale_gather.input[1] == "ids"
    # Differential vs fp32, onnxruntime optimizations off and on: the Gathered rows
    # are dequantized exactly as DequantizeLinear specifies.
    fp32_table = nh.to_array(m.graph.initializer[0])
    scale = (np.abs(fp32_table).max(axis=1, keepdims=True) if scale_mode == "per-row" else np.abs(fp32_table).max()) / 127
    deq = np.clip(np.rint(fp32_table / scale), -127, 127) * scale
    for feeds in _id_feeds(3, 9):
        expect = deq[feeds["ids"]]
        for optimize in (False, True):
            ref = run_ort(m, feeds, optimize)[0]
            got = run_ort(q, feeds, optimize)[0]
            assert got.shape == ref.shape and np.all(np.isfinite(got))
            h = expect + nh.to_array(m.graph.initializer[1])
            ref_deq = h.astype(np.float64) @ nh.to_array(m.graph.initializer[2]).astype(np.float64)
            # The table's own error is exactly the reference dequantization's; the rest is the MatMul's int8.
            assert snr_db(ref_deq, got) >= 25 and snr_db(ref, got) >= 20


def test_gather_table_per_row_beats_per_tensor_with_an_outlier_row():
    m = _gather_model()
    feeds = _id_feeds(4, 9)
    errs = {}
    for mode in ("per-row", "per-tensor"):
        q, _ = quantize(m, calib=_id_feeds(8, 1), embedding_tables="int8", embedding_scale=mode, exclude_op_types=["MatMul"])
        errs[mode] = min(_snr_on(m, q, feeds, optimize) for optimize in (False, True))
    # One outlier row sets the per-tensor scale: every other row loses ~5 bits.
    assert errs["per-row"] >= 38 and errs["per-row"] > errs["per-tensor"] + 10, errs


def test_gather_table_thresholds_and_shared_tables():
    m = _gather_model()
    q, result = quantize(m, calib=_id_feeds(8, 1), embedding_tables="int8", embedding_min_elements=2000 * 64 + 1)
    assert result.stats["embedding_tables_int8"] == 0 and "E" in _initializers(q)
    q, result = quantize(m, calib=_id_feeds(8, 1))  # the pass default: fp32 tables
    assert result.stats["embedding_tables_int8"] == 0 and "E" in _initializers(q)
    shared = _gather_model(extra_reader=True)
    q, result = quantize(shared, calib=_id_feeds(8, 1), embedding_tables="int8")
    assert result.stats["embedding_tables_int8"] == 0  # also read by a Transpose: no size to win
    with pytest.raises(InputError, match="embedding_scale"):
        quantize(m, calib=_id_feeds(8, 1), embedding_tables="int8", embedding_scale="per-column")


def _correlated_two_layer(kind):
    """Two float-kept layers whose input features are strongly correlated (a few
    heavy-tailed latent factors mixed into every feature): GPTQ's compensation
    through ``X^T X`` pays off there."""
    rng = np.random.default_rng(5)
    if kind == "conv":  # 1x1 Convs, group 1: input channels are the features
        nodes = [oh.make_node("Conv", ["x", "W1", "B1"], ["h"], name="c1"), oh.make_node("Relu", ["h"], ["r"]),
                 oh.make_node("Conv", ["r", "W2"], ["y"], name="c2")]
        inits = {"W1": rng.normal(size=(96, 64, 1, 1)).astype(np.float32), "B1": rng.normal(size=96).astype(np.float32),
                 "W2": rng.normal(size=(80, 96, 1, 1)).astype(np.float32)}
        shape, axis = [1, 64, 6, 6], 1
    else:  # MatMul with a 2-D weight, then Gemm transB=1
        nodes = [oh.make_node("MatMul", ["x", "W1"], ["h"], name="m1"), oh.make_node("Relu", ["h"], ["r"]),
                 oh.make_node("Gemm", ["r", "W2"], ["y"], name="g2", transB=1)]
        inits = {"W1": rng.normal(size=(64, 96)).astype(np.float32), "W2": rng.normal(size=(80, 96)).astype(np.float32)}
        shape, axis = [24, 64], 1
    m = _model(nodes, [("x", shape)], ["y"], inits)
    mix = rng.normal(size=(6, 64)) * 3 + 0.3 * rng.normal(size=(1, 64))

    def feeds(n, seed):
        r = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            rows = int(np.prod(shape)) // 64
            z = r.normal(size=(rows, 6)) * np.exp(1.2 * r.normal(size=(rows, 6)))
            x = z @ mix + 0.05 * r.normal(size=(rows, 64))
            x = x.reshape(shape[0], *shape[2:], 64) if kind == "conv" else x
            out.append({"x": np.moveaxis(x, -1, axis).reshape(shape).astype(np.float32)})
        return out

    return m, feeds


@pytest.mark.parametrize("kind", ["conv", "matmul"])
def test_weight_only_gptq_rounding_beats_nearest_on_correlated_inputs(kind):
    """GPTQ (Frantar et al. 2022) rounding of the kept layers' weight-only int8
    weights: same int8 storage and per-channel max-abs scales, lower output error
    than round-to-nearest when the input features are correlated."""
    m, feeds = _correlated_two_layer(kind)
    calib, fresh = feeds(16, 1), feeds(4, 9)
    # snr:35: int8 activations miss it (11-16 dB), weight-only int8 weights meet it either way.
    opts = dict(max_error="snr:35", max_float_fraction=1.0, sensitivity_samples=4, float_layer_weights="int8")
    got = {}
    for rounding in ("nearest", "gptq"):
        q, result = quantize(m, calib=calib, weight_only_rounding=rounding, **opts)
        st = result.stats
        assert st["sensitivity_kept_float"] == 2 and st["weight_only_int8"] == 2 and st["sensitivity_fp32_weights"] == 0, st
        inits_q = _initializers(q)
        assert "W1" not in inits_q and "W2" not in inits_q
        casts = [n for n in q.graph.node if n.op_type == "Cast"]
        assert len(casts) == 2 and all(inits_q[c.input[0]].dtype == np.int8 for c in casts)
        scales = sorted((v for k, v in inits_q.items() if k.endswith("_scale")), key=lambda a: a.size)
        got[rounding] = ([_snr_on(m, q, fresh, opt) for opt in (False, True)], [inits_q[c.input[0]] for c in casts], scales)
    (snr_n, wq_n, s_n), (snr_g, wq_g, s_g) = got["nearest"], got["gptq"]
    for a, b in zip(s_n, s_g):  # the same max-abs scales, only the rounding differs
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(wq_n, wq_g))
    for opt in (0, 1):  # onnxruntime graph optimizations off and on
        assert snr_g[opt] > snr_n[opt] + 6.0, (snr_n, snr_g)
    # The budget sees the better weights: at 45 dB nearest-rounded int8 weights go
    # back to fp32, GPTQ-rounded ones stay int8.
    opts["max_error"] = "snr:45"
    fp32_w = {r: quantize(m, calib=calib, weight_only_rounding=r, **opts)[1].stats["sensitivity_fp32_weights"] for r in ("nearest", "gptq")}
    assert fp32_w == {"nearest": 2, "gptq": 0}, fp32_w


def test_weight_only_rounding_option_is_validated():
    m, feeds = _correlated_two_layer("matmul")
    with pytest.raises(InputError, match="weight_only_rounding"):
        quantize(m, calib=feeds(2, 1), weight_only_rounding="stochastic")
