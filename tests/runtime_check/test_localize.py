"""runtime_check.localize: the first diverging tensor and the worst layers, on
small graphs (main graph, If branches, QDQ chains) and on real models with one
weight perturbed."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import pytest

import onnxpress
from onnxpress.runtime_check import compare, localize, match_tensors, random_feeds

F = onnx.TensorProto.FLOAT


def _mlp(w1: np.ndarray, w2: np.ndarray, w3: np.ndarray) -> onnx.ModelProto:
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        oh.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        oh.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
        oh.make_node("Tanh", ["h2"], ["r2"], name="tanh2"),
        oh.make_node("MatMul", ["r2", "w3"], ["y"], name="fc3"),
    ]
    inits = [nh.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F, ["N", 8])],
                      [oh.make_tensor_value_info("y", F, ["N", 4])], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def weights():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) / 3 for s in ((8, 16), (16, 16), (16, 4))]


def test_perturbed_weight_is_localized_to_its_layer(weights):
    ref = _mlp(*weights)
    w2 = weights[1].copy()
    w2[3, 5] += 2.0
    bad = _mlp(weights[0], w2, weights[2])
    feeds = random_feeds(ref, n=2, dim_sizes={"N": 5})
    loc = localize(ref, bad, feeds)
    assert [l.tensor for l in loc.layers] == ["h1", "r1", "h2", "r2", "y"]
    assert loc.first is not None and loc.first.node == "fc2" and loc.first.op_type == "MatMul"
    assert loc.first.source and math.isinf(loc.first.snr_in_db)
    assert loc.layers[0].snr_db == math.inf and not loc.layers[0].departs
    worst = loc.worst()
    assert worst[0].node == "fc2"
    assert all(l.node != "fc1" for l in worst)  # exact layers add nothing
    assert "first departing tensor: 'h2' = MatMul node 'fc2'" in loc.summary()
    d = loc.to_dict()
    assert d["first"]["node"] == "fc2" and d["worst"][0]["node"] == "fc2"


def test_compare_localizes_only_on_failure(weights):
    ref = _mlp(*weights)
    feeds = random_feeds(ref, n=1, dim_sizes={"N": 3})
    assert compare(ref, ref, feeds, localize=True).localization is None
    w3 = weights[2] * 1.5
    report = compare(ref, _mlp(weights[0], weights[1], w3), feeds, localize=True)
    assert not report.passed and report.localization.first.node == "fc3"
    assert "localization on cpu" in report.to_table() and "worst layers" in report.to_table()
    assert report.to_dict()["localization"]["first"]["tensor"] == "y"


def _if_model(w: np.ndarray) -> onnx.ModelProto:
    """y = If(cond, then: Relu(x @ w) [w a Constant in the branch], else: x[:, :4])."""
    then_g = oh.make_graph(
        [
            oh.make_node("Constant", [], ["w_c"], value=nh.from_array(w, "w_c")),
            oh.make_node("MatMul", ["xs", "w_c"], ["t_mm"], name="branch_mm"),
            oh.make_node("Relu", ["t_mm"], ["t_out"], name="branch_relu"),
        ],
        "then", [], [oh.make_tensor_value_info("t_out", F, None)],
    )
    else_g = oh.make_graph([oh.make_node("Identity", ["xs4"], ["e_out"])], "else", [],
                           [oh.make_tensor_value_info("e_out", F, None)])
    nodes = [
        oh.make_node("Sigmoid", ["x"], ["xs"], name="sig"),
        oh.make_node("Slice", ["xs", "st", "en", "ax"], ["xs4"], name="slice"),
        oh.make_node("If", ["cond"], ["b"], name="the_if", then_branch=then_g, else_branch=else_g),
        oh.make_node("Mul", ["b", "two"], ["y"], name="scale"),
    ]
    inits = [nh.from_array(np.array([0], np.int64), "st"), nh.from_array(np.array([4], np.int64), "en"),
             nh.from_array(np.array([1], np.int64), "ax"), nh.from_array(np.array(2.0, np.float32), "two")]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F, ["N", 8]),
                                   oh.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                      [oh.make_tensor_value_info("y", F, ["N", 4])], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def test_if_branch_tensors_are_compared_and_localized():
    w = np.random.default_rng(2).standard_normal((8, 4)).astype(np.float32)
    ref = _if_model(w)
    w_bad = w.copy()
    w_bad[:, 2] *= -1
    bad = _if_model(w_bad)
    x = np.random.default_rng(3).standard_normal((3, 8)).astype(np.float32)
    loc = localize(ref, bad, [{"x": x, "cond": np.array(True)}])
    by_tensor = {l.tensor: l for l in loc.layers}
    assert by_tensor["t_mm"].where == "if-branch" and by_tensor["t_mm"].shape == [3, 4]
    assert loc.first.tensor == "t_mm" and loc.first.node == "branch_mm"
    assert by_tensor["xs"].snr_db == math.inf
    # The branch not taken: its tensors are seen on no feed and left out.
    loc = localize(ref, bad, [{"x": x, "cond": np.array(False)}])
    assert loc.first is None and "t_mm" not in {l.tensor for l in loc.layers}


def _chain(dq_names: bool) -> onnx.ModelProto:
    """x -> Relu -> [Q -> DQ] -> MatMul -> y; with ``dq_names`` the Relu writes
    ``r_prequant`` and the MatMul reads ``r_dequantized`` (the float tensor ``r``
    of the reference is gone)."""
    w = nh.from_array(np.random.default_rng(4).standard_normal((8, 3)).astype(np.float32), "w")
    if not dq_names:
        nodes = [oh.make_node("Relu", ["x"], ["r"], name="relu"), oh.make_node("MatMul", ["r", "w"], ["y"], name="mm")]
        inits = [w]
    else:
        nodes = [
            oh.make_node("Relu", ["x"], ["r_prequant"], name="relu"),
            oh.make_node("QuantizeLinear", ["r_prequant", "s", "z"], ["r_q"], name="q"),
            oh.make_node("DequantizeLinear", ["r_q", "s", "z"], ["r_dequantized"], name="dq"),
            oh.make_node("MatMul", ["r_dequantized", "w"], ["y"], name="mm"),
        ]
        inits = [w, oh.make_tensor("s", F, [], [0.01]), oh.make_tensor("z", onnx.TensorProto.UINT8, [], [0])]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F, ["N", 8])],
                      [oh.make_tensor_value_info("y", F, ["N", 3])], inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


def test_dequantize_output_is_matched_to_the_float_tensor_it_replaced():
    ref, q = _chain(False), _chain(True)
    assert match_tensors(ref, q) == {"r": "r_dequantized", "y": "y"}
    loc = localize(ref, q, random_feeds(ref, n=1, dim_sizes={"N": 4}))
    assert [(l.tensor, l.candidate_tensor) for l in loc.layers] == [("r", "r_dequantized"), ("y", "y")]
    assert loc.threshold_db == 20.0  # quantized candidate: the int8 SNR threshold
    assert 20 < loc.layers[0].snr_db < 80  # uint8 rounding of the Relu output


def test_localize_on_the_int8_quantizer_output():
    rng = np.random.default_rng(5)
    nodes = [
        oh.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        oh.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
    ]
    inits = [nh.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
             for n, s in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (4, 8, 3, 3)), ("b2", (4,)))]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F, [1, 3, 8, 8])],
                      [oh.make_tensor_value_info("c2", F, [1, 4, 8, 8])], inits)
    ref = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    calib = random_feeds(ref, n=8, seed=1)
    # Percentile ranges: this test is about localization, not about the recipe's default range method.
    q = onnxpress.optimize(ref, recipe="edge-int8", calibration=calib, quantize_int8={"method": "percentile"}).model
    feeds = random_feeds(ref, n=2, seed=2)
    report = compare(ref, q, feeds, tolerance={"min_snr_db": 35}, localize=True)  # force a failure
    assert report.kind == "int8" and not report.passed
    loc = report.localization
    by = {l.tensor: l for l in loc.layers}
    assert {"c1", "r1", "c2"} <= set(by)
    assert loc.threshold_db == 35
    # quantize-int8 equalized conv1/conv2: c1 and r1 are the reference's scaled
    # per channel, which is not an error.
    assert by["c1"].snr_db < 35 and by["c1"].rescaled and by["c1"].snr_rescaled_db > 35
    assert not by["c1"].departs and by["r1"].rescaled
    assert loc.first is not None and loc.first.tensor == "c2" and loc.first.source


# --------------------------------------------------------------------- real models
def _perturb(model: onnx.ModelProto, op: str, fraction: float, scale: float = 0.3) -> tuple[onnx.ModelProto, str]:
    """A copy of ``model`` with the weight (input 1) of one ``op`` node perturbed:
    the node at ``fraction`` of the main graph's ``op`` nodes. Returns (model, node name)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    inits = {t.name: t for t in g.initializer}
    nodes = [n for n in g.node if n.op_type == op and len(n.input) > 1 and (n.input[1] in inits or n.input[1] in consts)]
    node = nodes[int(len(nodes) * fraction)]
    t = inits[node.input[1]] if node.input[1] in inits else consts[node.input[1]].attribute[0].t
    arr = nh.to_array(t).copy()
    arr += (scale * np.abs(arr).mean() * np.random.default_rng(0).standard_normal(arr.shape)).astype(arr.dtype)
    t.CopyFrom(nh.from_array(arr, t.name))
    return out, node.name


@pytest.mark.real
@pytest.mark.parametrize("name, op, fraction", [("ppocr_rec", "Conv", 0.5), ("magika", "Conv", 0.0), ("ppocr_rec", "MatMul", 0.5)])
def test_real_model_perturbed_weight_is_localized(name, op, fraction):
    from onnxpress.testing import realmodels as rm

    ref = onnx.load(str(rm.fetch(name)))
    bad, node = _perturb(ref, op, fraction)
    feeds = rm.real_inputs(name, n=2, seed=0)
    report = compare(ref, bad, feeds, localize=True, localize_feeds=1)
    assert not report.passed
    loc = report.localization
    assert loc.first is not None, report.to_table()
    assert (loc.first.node, loc.first.op_type) == (node, op), report.to_table()
    assert loc.worst()[0].node == node
    assert loc.unmatched == 0  # same graph: every activation has its match
    before = [l for l in loc.layers if l.index < loc.first.index]
    assert before and all(not l.departs for l in before)


@pytest.mark.real
def test_silero_lstm_inside_if_branch_is_localized():
    from onnxpress.testing import realmodels as rm

    ref = onnx.load(str(rm.fetch("silero_vad")))
    bad = onnx.ModelProto()
    bad.CopyFrom(ref)
    t = next(t for t in bad.graph.initializer if t.name == "model.decoder.rnn.weight_hh")
    arr = nh.to_array(t).copy()
    arr += (0.3 * np.abs(arr).mean() * np.random.default_rng(0).standard_normal(arr.shape)).astype(np.float32)
    t.CopyFrom(nh.from_array(arr, t.name))
    feeds = rm.real_inputs("silero_vad", n=4, seed=0)
    report = compare(ref, bad, feeds, localize=True)
    assert not report.passed
    loc = report.localization
    assert loc.first.op_type == "LSTM" and loc.first.where == "if-branch", report.to_table()
    assert loc.worst()[0].op_type == "LSTM"
    assert any(l.where == "if-branch" for l in loc.layers) and any(l.where == "main" for l in loc.layers)
    # The encoder before the LSTM is exact.
    assert all(l.snr_db == math.inf for l in loc.layers if l.index < loc.first.index)


@pytest.mark.real
def test_lossless_silero_localizes_nothing():
    """inline-constant-if moves branch tensors into the main graph: still matched by name."""
    from onnxpress.testing import realmodels as rm

    ref = onnx.load(str(rm.fetch("silero_vad")))
    opt = onnxpress.optimize(ref, recipe="lossless").model
    loc = localize(ref, opt, rm.real_inputs("silero_vad", n=2, seed=0))
    assert loc.first is None and len(loc.layers) > 20
    assert any(l.where == "if-branch" for l in loc.layers)
