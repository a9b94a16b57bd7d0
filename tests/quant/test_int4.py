"""quantize-int4-weights: MatMulNBits and opset-21 QDQ on small graphs built in
code. The expected output is ``x @ deq(W)`` computed from the quantized tensors
*read back out of the written model*, so a wrong packing or layout fails even when
the error would look plausible."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

import onnxpress
from onnxpress.passes import make_pass
from onnxpress.quant.int4 import ort_has_matmulnbits, quantize_blockwise
from tests.conftest import run_once, run_ort


def _model(k, n, op="MatMul", trans_b=0, bias=False, alpha=1.0, beta=1.0, opset=17, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    inits = [nh.from_array(w, "W")]
    inputs = ["x", "W"]
    attrs = {}
    if op == "Gemm":
        attrs = {"transB": trans_b, "alpha": alpha, "beta": beta}
        if bias:
            inits.append(nh.from_array(rng.standard_normal(n).astype(np.float32), "C"))
            inputs.append("C")
        shape = ["m", k]
    else:
        shape = [2, "m", k]
    out_shape = shape[:-1] + [n]
    g = h.make_graph(
        [h.make_node(op, inputs, ["y"], name="layer", **attrs)],
        "g",
        [h.make_tensor_value_info("x", TP.FLOAT, shape)],
        [h.make_tensor_value_info("y", TP.FLOAT, out_shape)],
        inits,
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    return m, w


def _feeds(m, rng, rows=3):
    shape = [d.dim_value or rows for d in m.graph.input[0].type.tensor_type.shape.dim]
    return {"x": rng.standard_normal(shape).astype(np.float32)}


def _unpack(packed: np.ndarray, count: int) -> np.ndarray:
    flat = packed.reshape(-1)
    out = np.empty(flat.size * 2, np.int16)
    out[0::2], out[1::2] = flat & 0x0F, flat >> 4
    return out[:count]


def _dequantized_from_matmulnbits(model: onnx.ModelProto) -> np.ndarray:
    """``deq(W)[K, N]`` rebuilt from a MatMulNBits node's initializers."""
    node = next(n for n in model.graph.node if n.op_type == "MatMulNBits")
    a = {x.name: x for x in node.attribute}
    k, n, bs = a["K"].i, a["N"].i, a["block_size"].i
    assert a["bits"].i == 4
    inits = {i.name: nh.to_array(i) for i in model.graph.initializer}
    b, scales = inits[node.input[1]], inits[node.input[2]]
    nb = -(-k // bs)
    assert b.dtype == np.uint8 and b.shape == (n, nb, bs // 2)
    codes = _unpack(b, n * nb * bs).reshape(n, nb, bs).astype(np.float64)
    if len(node.input) > 3 and node.input[3]:
        zp = _unpack(inits[node.input[3]], n * (-(-nb // 2)) * 2).reshape(n, -1)[:, :nb]
    else:
        zp = np.full((n, nb), 8)
    w = (codes - zp[:, :, None]) * scales.reshape(n, nb)[:, :, None]
    return w.reshape(n, nb * bs)[:, :k].T


def _dequantized_from_qdq(model: onnx.ModelProto) -> np.ndarray:
    """The DequantizeLinear output, evaluated by onnx's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear")
    inits = [i for i in model.graph.initializer if i.name in dq.input]
    g = h.make_graph([dq], "dq", [], [h.make_tensor_value_info(dq.output[0], TP.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
    return ReferenceEvaluator(m).run(None, {})[0].astype(np.float64)


def _session(model: onnx.ModelProto, optimize: bool, accuracy_level: str | None = None):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    if accuracy_level is not None:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", accuracy_level)
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


CASES = [
    pytest.param(dict(k=256, n=64), id="matmul"),
    pytest.param(dict(k=257, n=48), id="matmul-partial-block"),
    pytest.param(dict(k=128, n=40, op="Gemm", trans_b=1, bias=True, alpha=0.5, beta=2.0), id="gemm-transB-bias"),
    pytest.param(dict(k=192, n=40, op="Gemm"), id="gemm"),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["int4", "uint4-zp"])
@pytest.mark.parametrize("block_size", [32, 64])
def test_matmulnbits_matches_its_own_dequantized_weight(case, symmetric, block_size, rng):
    m, w = _model(**case)
    out, result, _ = run_once(
        m, "quantize-int4-weights", format="matmulnbits", symmetric=symmetric, block_size=block_size, min_elements=1
    )
    onnx.checker.check_model(out, full_check=True)
    node = next(n for n in out.graph.node if n.op_type == "MatMulNBits")
    assert node.domain == "com.microsoft"
    assert not any(n.op_type in ("MatMul", "Gemm") for n in out.graph.node)
    alpha, beta = case.get("alpha", 1.0), case.get("beta", 1.0)
    w_kn = (w.T if case.get("trans_b") else w).astype(np.float64)
    deq = _dequantized_from_matmulnbits(out)  # alpha is folded into the scales
    # the reported error is the error of what was written
    err = np.abs(deq - alpha * w_kn)
    s = result.stats
    assert s["layers_quantized"] == 1 and s["format_matmulnbits"] == 1
    assert s["weight_max_abs_error"] == pytest.approx(err.max(), rel=1e-5)
    assert s["weight_rel_fro_error"] == pytest.approx(np.linalg.norm(err) / np.linalg.norm(alpha * w_kn), rel=1e-5)
    assert s["layer.layer.rel_fro_error"] == pytest.approx(s["weight_rel_fro_error"])
    assert 0.02 < s["weight_rel_fro_error"] < 0.15
    assert s["weight_bytes_after"] < s["weight_bytes_before"] / 5
    feeds = _feeds(m, rng)
    expected = feeds["x"].astype(np.float64) @ deq
    if case.get("bias"):
        expected = expected + beta * nh.to_array(next(i for i in m.graph.initializer if i.name == "C"))
    for optimize in (False, True):
        got = _session(out, optimize).run(None, feeds)[0]  # ORT executes the contrib kernel
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    ref = run_ort(m, feeds)[0]
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert rel < 0.2


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("symmetric", [True, False], ids=["int4", "uint4-zp"])
def test_qdq_blocked_dequantizelinear_opset21(case, symmetric, rng):
    m, w = _model(**case, opset=13)
    out, result, _ = run_once(m, "quantize-int4-weights", format="qdq", symmetric=symmetric, min_elements=1)
    onnx.checker.check_model(out, full_check=True)
    assert {o.domain: o.version for o in out.opset_import}[""] == 21  # converted, not just relabelled
    dq = next(n for n in out.graph.node if n.op_type == "DequantizeLinear")
    attrs = {a.name: a.i for a in dq.attribute}
    trans_b = case.get("trans_b", 0)
    assert attrs == {"axis": 1 if trans_b else 0, "block_size": 32}
    q = next(i for i in out.graph.initializer if i.name == dq.input[0])
    assert q.data_type == (TP.INT4 if symmetric else TP.UINT4)
    assert (len(dq.input) == 3) != symmetric
    deq = _dequantized_from_qdq(out)
    w64 = w.astype(np.float64)
    err = np.abs(deq - w64)
    assert result.stats["weight_max_abs_error"] == pytest.approx(err.max(), rel=1e-5)
    assert result.stats["weight_rel_fro_error"] == pytest.approx(np.linalg.norm(err) / np.linalg.norm(w64), rel=1e-5)
    feeds = _feeds(m, rng)
    w_kn = deq.T if trans_b else deq
    expected = case.get("alpha", 1.0) * feeds["x"].astype(np.float64) @ w_kn
    if case.get("bias"):
        expected = expected + case.get("beta", 1.0) * nh.to_array(next(i for i in m.graph.initializer if i.name == "C"))
    np.testing.assert_allclose(_session(out, False).run(None, feeds)[0], expected, rtol=1e-4, atol=1e-4)
    # ORT_ENABLE_ALL fuses DequantizeLinear+MatMul into MatMulNBits with int8
    # activations (session.qdq_matmulnbits_accuracy_level defaults to 4): exact only at 0.
    np.testing.assert_allclose(_session(out, True, "0").run(None, feeds)[0], expected, rtol=1e-4, atol=1e-4)
    default = _session(out, True).run(None, feeds)[0]
    assert np.linalg.norm(default - expected) / np.linalg.norm(expected) < 0.05


def test_auto_uses_matmulnbits_here_and_second_run_is_a_no_op():
    assert ort_has_matmulnbits()
    m, _ = _model(256, 64)
    out, result, _ = run_once(m, "quantize-int4-weights", min_elements=1)
    assert [n.op_type for n in out.graph.node] == ["MatMulNBits"]
    _, again, _ = run_once(out, "quantize-int4-weights", min_elements=1)
    assert not again.modified
    qdq, _, _ = run_once(m, "quantize-int4-weights", format="qdq", min_elements=1)
    _, again, _ = run_once(qdq, "quantize-int4-weights", format="qdq", min_elements=1)
    assert not again.modified and again.stats["skipped.already_quantized"] == 1


def test_refusals_are_counted():
    small, _ = _model(64, 32)  # 2048 elements < min_elements 4096
    _, r, _ = run_once(small, "quantize-int4-weights")
    assert not r.modified and r.stats["skipped.too_small"] == 1
    short_k, _ = _model(16, 512)
    _, r, _ = run_once(short_k, "quantize-int4-weights", min_elements=1)
    assert r.stats["skipped.k_below_block_size"] == 1
    m, _ = _model(256, 64)
    _, r, _ = run_once(m, "quantize-int4-weights", exclude_nodes=["layer"], min_elements=1)
    assert not r.modified and r.stats["skipped.excluded"] == 1
    with pytest.raises(ValueError, match="block_size"):
        make_pass("quantize-int4-weights", block_size=48)
    with pytest.raises(ValueError, match="format"):
        make_pass("quantize-int4-weights", format="gptq")


def test_quantize_blockwise_rules():
    w = np.array([[7.0, -1.0], [-3.5, 0.0], [1.0, 0.0]])  # K=3 with block 2: a partial block
    q, scale, zp, deq = quantize_blockwise(w, 2, symmetric=True)
    assert zp is None and scale.shape == (2, 2)
    np.testing.assert_allclose(scale[:, 0], [1.0, 1 / 7])
    assert scale[1, 1] == 1.0  # all-zero block
    assert q.min() >= -8 and q.max() <= 7
    np.testing.assert_allclose(deq[:, 0], [7.0, -4.0, 1.0])  # -3.5 rounds half to even
    q, scale, zp, deq = quantize_blockwise(w, 2, symmetric=False)
    assert q.min() >= 0 and q.max() <= 15 and zp.shape == (2, 2)
    assert np.abs(deq - w).max() <= scale.max() / 2 + 1e-12


def test_recipe_int4_weights(rng):
    m, _ = _model(512, 256)
    result = onnxpress.optimize(m, recipe="int4-weights", strict=True)
    totals = result.pass_totals()["quantize-int4-weights"]
    assert totals["layers_quantized"] == 1
    assert result.after.nodes == 1
    feeds = _feeds(m, rng)
    got, ref = run_ort(result.model, feeds)[0], run_ort(m, feeds)[0]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.15


def test_gemm_with_a_runtime_bias_and_beta(rng):
    """C is a graph input: ``beta * C`` becomes a Mul feeding the bias Add."""
    w = rng.standard_normal((128, 64)).astype(np.float32)
    g = h.make_graph(
        [h.make_node("Gemm", ["x", "W", "c"], ["y"], beta=0.5, name="layer")],
        "g",
        [h.make_tensor_value_info("x", TP.FLOAT, [3, 128]), h.make_tensor_value_info("c", TP.FLOAT, [3, 64])],
        [h.make_tensor_value_info("y", TP.FLOAT, [3, 64])],
        [nh.from_array(w, "W")],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    out, result, _ = run_once(m, "quantize-int4-weights", format="matmulnbits", min_elements=1)
    onnx.checker.check_model(out, full_check=True)
    assert [n.op_type for n in out.graph.node] == ["Mul", "MatMulNBits", "Add"]
    feeds = {"x": rng.standard_normal((3, 128)).astype(np.float32), "c": rng.standard_normal((3, 64)).astype(np.float32)}
    expected = feeds["x"].astype(np.float64) @ _dequantized_from_matmulnbits(out) + 0.5 * feeds["c"]
    np.testing.assert_allclose(run_ort(out, feeds)[0], expected, rtol=1e-4, atol=1e-4)


def test_fp16_weights_are_quantized_with_fp16_scales(rng):
    m, _ = _model(256, 64)
    half, _, _ = run_once(m, "convert-fp16")
    out, result, _ = run_once(half, "quantize-int4-weights", format="matmulnbits", min_elements=1)
    node = next(n for n in out.graph.node if n.op_type == "MatMulNBits")
    scales = next(i for i in out.graph.initializer if i.name == node.input[2])
    assert scales.data_type == TP.FLOAT16 and result.stats["layers_quantized"] == 1
    feeds = _feeds(m, rng)
    got, ref = run_ort(out, feeds)[0], run_ort(m, feeds)[0]
    assert got.dtype == np.float32
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.15
