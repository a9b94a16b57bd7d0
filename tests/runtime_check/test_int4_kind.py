"""runtime_check: the ``int4`` kind (weight-only 4-bit) on small graphs built in code.

What makes a model ``int4`` (MatMulNBits bits <= 4, MatMulBnb4, GatherBlockQuantized
bits <= 4, INT4/UINT4 weights, and no activation quantization), its default
criterion (SNR >= 7 dB, cosine >= 0.9, integer outputs by agreement >= 0.9), and
the places that branch on the kind (report text, cross-target note, localization
threshold). The numbers behind the criterion are measured on the real models in
``tests/real/test_int4_check_real.py``.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxpress.errors import InputError
from onnxpress.runtime_check import compare, default_tolerance, model_kind, random_feeds
from onnxpress.runtime_check.compare import _cross_note
from onnxpress.runtime_check.localize import localize
from tests.conftest import run_once

K, N = 64, 32


def _float_model(weight: np.ndarray | None = None, argmax: bool = False) -> onnx.ModelProto:
    """x [B, 64] @ W [64, 32] -> y [B, 32] float (or labels = ArgMax(y) [B] int64)."""
    w = weight if weight is not None else np.random.default_rng(0).standard_normal((K, N)).astype(np.float32)
    nodes = [h.make_node("MatMul", ["x", "W"], ["s" if argmax else "y"], name="layer")]
    out = h.make_tensor_value_info("y", TP.FLOAT, ["B", N])
    if argmax:
        nodes.append(h.make_node("ArgMax", ["s"], ["labels"], axis=1, keepdims=0))
        out = h.make_tensor_value_info("labels", TP.INT64, ["B"])
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, ["B", K])], [out], [nh.from_array(w, "W")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _int4(model: onnx.ModelProto, fmt: str = "matmulnbits") -> onnx.ModelProto:
    out, result, _ = run_once(model, "quantize-int4-weights", format=fmt, min_elements=1)
    assert result.stats["layers_quantized"] == 1
    return out


def _with_activation_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its input ``x`` through QuantizeLinear/DequantizeLinear (uint8)."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    m.graph.initializer.extend([h.make_tensor("xs", TP.FLOAT, [], [0.02]), h.make_tensor("xz", TP.UINT8, [], [128])])
    for n in m.graph.node:
        n.input[:] = ["x_dq" if i == "x" else i for i in n.input]
    m.graph.node.insert(0, h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["x_dq"]))
    m.graph.node.insert(0, h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]))
    return m


def _set_bits(model: onnx.ModelProto, bits: int) -> onnx.ModelProto:
    m = onnx.ModelProto.FromString(model.SerializeToString())
    node = next(n for n in m.graph.node if n.op_type == "MatMulNBits")
    next(a for a in node.attribute if a.name == "bits").i = bits
    return m


def _contrib_node_model(op: str, **attrs) -> onnx.ModelProto:
    """A model holding one com.microsoft ``op`` node (static checks only, never run)."""
    g = h.make_graph(
        [h.make_node(op, ["x", "q", "s"], ["y"], domain="com.microsoft", **attrs)], "g",
        [h.make_tensor_value_info("x", TP.FLOAT, ["B", K])], [h.make_tensor_value_info("y", TP.FLOAT, None)],
        [nh.from_array(np.zeros((N, K // 2), np.uint8), "q"), nh.from_array(np.ones(N * 2, np.float32), "s")],
    )
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)])


def test_weight_only_4bit_models_are_int4():
    fp32 = _float_model()
    nbits = _int4(fp32, "matmulnbits")
    qdq = _int4(fp32, "qdq")
    assert model_kind(fp32) == "fp32"
    # MatMulNBits' packed uint8 codes are 4-bit weights, not int8 ones.
    assert model_kind(nbits) == "int4"
    # Opset-21 blocked DequantizeLinear of an INT4 initializer.
    assert any(t.data_type == TP.INT4 for t in qdq.graph.initializer)
    assert model_kind(qdq) == "int4"
    # Asymmetric: UINT4 with zero points.
    uqdq, _, _ = run_once(fp32, "quantize-int4-weights", format="qdq", symmetric=False, min_elements=1)
    assert any(t.data_type == TP.UINT4 for t in uqdq.graph.initializer)
    assert model_kind(uqdq) == "int4"
    assert model_kind(_contrib_node_model("MatMulNBits", K=K, N=N, bits=4, block_size=32)) == "int4"
    assert model_kind(_contrib_node_model("MatMulNBits", K=K, N=N, block_size=32)) == "int4"  # bits defaults to 4
    assert model_kind(_contrib_node_model("MatMulBnb4", K=K, N=N, block_size=32, quant_type=1)) == "int4"
    assert model_kind(_contrib_node_model("GatherBlockQuantized", bits=4, block_size=32)) == "int4"


def test_int4_is_int8_when_activations_are_quantized_or_weights_have_more_bits():
    nbits = _int4(_float_model())
    # Activation quantization makes it an int8 model, whatever the weights' bits.
    assert model_kind(_with_activation_qdq(nbits)) == "int8"
    assert model_kind(_with_activation_qdq(_int4(_float_model(), "qdq"))) == "int8"
    # MatMulNBits with 8-bit weights is weight-only int8.
    assert model_kind(_set_bits(nbits, 8)) == "int8"
    assert model_kind(_contrib_node_model("GatherBlockQuantized", bits=8, block_size=32)) == "int8"


def test_int4_with_fp16_scales_is_int4():
    w = np.random.default_rng(0).standard_normal((K, N)).astype(np.float16)
    g = h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["y"], name="layer")], "g",
        [h.make_tensor_value_info("x", TP.FLOAT16, ["B", K])], [h.make_tensor_value_info("y", TP.FLOAT16, ["B", N])],
        [nh.from_array(w, "W")],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    assert model_kind(m) == "fp16"
    out = _int4(m)
    assert any(t.data_type == TP.FLOAT16 for t in out.graph.initializer)  # the scales
    assert model_kind(out) == "int4"


def test_int4_default_criterion():
    t = default_tolerance("int4")
    assert not t.elementwise and t.source == "default int4"
    assert (t.min_snr_db, t.min_cosine, t.min_agreement, t.min_top1) == (7.0, 0.9, 0.9, None)
    assert t.describe() == "SNR >= 7 dB and cosine >= 0.9"
    assert t.describe(integer=True) == "agreement >= 0.9"
    # Looser than int8 on every field.
    i8 = default_tolerance("int8")
    assert t.min_snr_db < i8.min_snr_db and t.min_cosine < i8.min_cosine and t.min_agreement < i8.min_agreement


def test_compare_labels_an_int4_candidate_int4_and_judges_it_so():
    ref = _float_model()
    cand = _int4(ref)
    feeds = random_feeds(ref, n=2, dim_sizes={"B": 16})
    report = compare(ref, cand, feeds)
    assert report.kind == "int4" and report.passed, report.to_table()
    assert all(o.criterion == "SNR >= 7 dB and cosine >= 0.9" for o in report.outputs)
    assert report.outputs[0].max_abs > 1e-2  # far beyond fp32's atol, normal for 4-bit weights
    table = report.to_table()
    assert "criterion (int4 candidate): SNR >= 7 dB and cosine >= 0.9" in table and "int8" not in table
    assert "candidate kind int4" in report.to_markdown()
    assert report.to_dict()["kind"] == "int4"
    # The kind can still be forced, and an unknown one names the valid kinds.
    assert compare(ref, cand, feeds, kind="int8").kind == "int8"
    with pytest.raises(InputError, match="fp32, fp16, int8, int4"):
        compare(ref, cand, feeds, kind="int2")


def test_integer_outputs_of_an_int4_candidate_are_judged_by_agreement():
    rng = np.random.default_rng(0)
    ref = _float_model(argmax=True)
    cand = _int4(ref)
    # Inputs near a class's weight column, as a trained classifier sees them: the
    # float model is 90 % accurate on them. (On pure noise every logit is a
    # near-tie and 11 % of the labels flip under int4 noise.)
    w = nh.to_array(ref.graph.initializer[0])
    cls = rng.integers(0, N, 400)
    x = 0.5 * w[:, cls].T + rng.standard_normal((400, K))
    assert 0.85 < np.mean((x @ w).argmax(1) == cls) < 0.95
    feeds = [{"x": x.astype(np.float32)}]
    o = compare(ref, cand, feeds).outputs[0]
    assert o.criterion == "agreement >= 0.9"
    # 0.98: passes the int4 default, would fail int8's 0.99
    assert o.agreement is not None and 0.9 <= o.agreement < 0.99 and o.passed, o
    # A candidate whose labels are mostly wrong fails by agreement.
    w_bad = np.random.default_rng(5).standard_normal((K, N)).astype(np.float32)
    bad = compare(ref, _int4(_float_model(w_bad, argmax=True)), feeds).outputs[0]
    assert bad.agreement < 0.9 and not bad.passed and "agreement" in bad.reason


def test_places_that_branch_on_the_kind_know_int4():
    note = _cross_note("arm64:neoverse-n1", "int4", 1e-7)
    assert "int4" in note and "accuracy_level" in note and "QDQ" not in note
    ref = _float_model()
    cand = _int4(ref)
    feeds = random_feeds(ref, n=1, dim_sizes={"B": 4})
    assert localize(ref, cand, feeds).threshold_db == 7.0  # kind from model_kind
    assert localize(ref, cand, feeds, kind="int8").threshold_db == 20.0
