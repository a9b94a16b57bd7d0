"""quantize-int8's per-target op rules: ``depthwise`` and ``conv_transpose``
(``"auto"`` | ``"int8"`` | ``"float"``).

On x86 (the CPU EP) int8 depthwise Conv is slower than onnxruntime's fp32 NCHWc
depthwise kernel, and the CPU EP has no int8 ConvTranspose kernel, so ``"auto"``
keeps those float there; on arm64 depthwise stays int8."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import onnxruntime as ort
import pytest

from onnxpress.errors import InputError
from onnxpress.graph import load
from onnxpress.passes import Context, make_pass
from onnxpress.quant import QuantConfig
from onnxpress.quant.config import CONV_TRANSPOSE_FLOAT, DEPTHWISE_FLOAT, is_depthwise
from tests.conftest import with_output_shapes

F = onnx.TensorProto.FLOAT


def _net(c: int = 8, hw: int = 6) -> onnx.ModelProto:
    """x [1, c, hw, hw] -> pointwise Conv -> Relu -> depthwise Conv (group c)
    -> Relu -> grouped Conv (group 2, 4 channels per group) -> Relu
    -> ConvTranspose (stride 2) -> y; plus a Conv with one input channel (group 1)
    on a side input."""
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    inits = {
        "Wp": w(c, c, 1, 1), "Bp": w(c),
        "Wd": w(c, 1, 3, 3), "Bd": w(c),
        "Wg": w(c, c // 2, 3, 3), "Bg": w(c),
        "Wt": w(c, 4, 2, 2), "Bt": w(4),
        "W1": w(c, 1, 3, 3),
    }
    nodes = [
        oh.make_node("Conv", ["x", "Wp", "Bp"], ["p"], name="pointwise"),
        oh.make_node("Relu", ["p"], ["pr"]),
        oh.make_node("Conv", ["pr", "Wd", "Bd"], ["d"], name="depthwise", group=c, pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["d"], ["dr"]),
        oh.make_node("Conv", ["dr", "Wg", "Bg"], ["gc"], name="grouped", group=2, pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["gc"], ["gr"]),
        oh.make_node("ConvTranspose", ["gr", "Wt", "Bt"], ["y"], name="deconv", strides=[2, 2]),
        oh.make_node("Conv", ["s", "W1"], ["z"], name="one_channel", pads=[1, 1, 1, 1]),
    ]
    g = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info("x", F, [1, c, hw, hw]), oh.make_tensor_value_info("s", F, [1, 1, hw, hw])],
        [oh.make_tensor_value_info("y", F, None), oh.make_tensor_value_info("z", F, None)],
        [nh.from_array(v, k) for k, v in inits.items()],
    )
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    return with_output_shapes(m)


def _feeds(m: onnx.ModelProto, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {vi.name: rng.normal(size=[d.dim_value for d in vi.type.tensor_type.shape.dim]).astype(np.float32)
         for vi in m.graph.input}
        for _ in range(n)
    ]


def _quantize(m: onnx.ModelProto, target: str = "cpu", **options):
    wm = load(onnx.ModelProto.FromString(m.SerializeToString()))
    p = make_pass("quantize-int8", **options)
    result = p.run(wm, Context(calibration=_feeds(m, 8, 1), target=target))
    q = wm.to_proto()
    onnx.checker.check_model(q, full_check=True)
    return q, result.stats, p


def _quantized_nodes(q: onnx.ModelProto) -> set[str]:
    """Names of the Conv/ConvTranspose QNodes: int8 weight through a DequantizeLinear
    (float_layer_weights is off) and an output quantized by a QuantizeLinear
    (directly or after its absorbed Relu)."""
    producer = {o: n for n in q.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in q.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    out = set()
    for n in q.graph.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            src = producer.get(n.input[1])
            after = readers.get(n.output[0], [])
            if after and after[0].op_type == "Relu":
                after = readers.get(after[0].output[0], [])
            if src is not None and src.op_type == "DequantizeLinear" and [a.op_type for a in after] == ["QuantizeLinear"]:
                out.add(n.name)
    return out


def _fp32_weight(q: onnx.ModelProto, node: str) -> bool:
    inits = {i.name: i for i in q.graph.initializer}
    n = next(x for x in q.graph.node if x.name == node)
    return n.input[1] in inits and inits[n.input[1]].data_type == F


def _runs(m: onnx.ModelProto, q: onnx.ModelProto) -> None:
    feeds = _feeds(m, 2, 9)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])
    for f in feeds:
        for r, g in zip(ref.run(None, f), got.run(None, f)):
            assert r.shape == g.shape
            cos = float(np.sum(r * g) / (np.linalg.norm(r) * np.linalg.norm(g)))
            assert cos > 0.99


ALL = {"pointwise", "depthwise", "grouped", "deconv", "one_channel"}


@pytest.mark.parametrize(
    "target, options, float_nodes",
    [
        ("x86", {}, {"depthwise", "deconv"}),
        ("x86", {"depthwise": "auto", "conv_transpose": "auto"}, {"depthwise", "deconv"}),
        ("arm64", {}, {"deconv"}),
        ("x86", {"depthwise": "int8", "conv_transpose": "int8"}, set()),
        ("x86", {"depthwise": "int8"}, {"deconv"}),
        ("x86", {"conv_transpose": "int8"}, {"depthwise"}),
        ("arm64", {"depthwise": "float"}, {"depthwise", "deconv"}),
        ("arm64", {"depthwise": "float", "conv_transpose": "int8"}, {"depthwise"}),
    ],
)
def test_what_is_quantized(target, options, float_nodes):
    m = _net()
    q, stats, p = _quantize(m, target, **options)
    assert _quantized_nodes(q) == ALL - float_nodes
    # The grouped (not depthwise) conv and the one-input-channel conv are always int8.
    assert {"grouped", "one_channel", "pointwise"} <= _quantized_nodes(q)
    for name in float_nodes:
        assert _fp32_weight(q, name)
    why = {node: reason for node, _, reason in p.report}
    assert set(why) == float_nodes
    if "depthwise" in float_nodes:
        assert why["depthwise"] == DEPTHWISE_FLOAT
    if "deconv" in float_nodes:
        assert why["deconv"] == CONV_TRANSPOSE_FLOAT
    assert stats["kept_float"] == len(float_nodes)
    assert stats["quantized_Conv"] == 3 + ("depthwise" not in float_nodes)
    assert stats.get("quantized_ConvTranspose", 0) == ("deconv" not in float_nodes)
    _runs(m, q)


def test_reason_strings_in_stats():
    q, stats, p = _quantize(_net(), "x86")
    assert "depthwise" in DEPTHWISE_FLOAT and "depthwise=float" in DEPTHWISE_FLOAT
    assert "ConvTranspose" in CONV_TRANSPOSE_FLOAT and "conv_transpose=float" in CONV_TRANSPOSE_FLOAT
    # Recorded like the other kept-float reasons: one float_<reason> stat each.
    dw = [k for k in stats if k.startswith("float_depthwise_conv_kept_float")]
    ct = [k for k in stats if k.startswith("float_convtranspose_kept_float")]
    assert len(dw) == 1 and stats[dw[0]] == 1, stats
    assert len(ct) == 1 and stats[ct[0]] == 1, stats


def test_cpu_target_is_this_machine():
    import platform

    q, _, p = _quantize(_net(), "cpu")
    arm = platform.machine().lower() in ("aarch64", "arm64") or platform.machine().lower().startswith("arm")
    expected = {"deconv"} if arm else {"depthwise", "deconv"}
    assert {n for n, _, _ in p.report} == expected


def test_target_rule_nodes_get_int8_weights_that_onnxruntime_folds():
    """With float_layer_weights="int8" the layers kept float for speed store int8
    weights as Cast/Mul, which onnxruntime folds at load: its optimized graph has
    plain float (NCHWc-capable) Convs, no Cast/Mul/DequantizeLinear left."""
    from onnxpress.quant import optimized_op_counts

    # 512 channels: the depthwise weight (4608) is above the 4096 weights under
    # which float layers keep fp32 weights anyway.
    m = _net(c=512, hw=4)
    q, stats, _ = _quantize(m, "x86", float_layer_weights="int8")
    assert not _fp32_weight(q, "depthwise") and not _fp32_weight(q, "deconv")
    assert stats["weight_only_int8"] == 2
    producer = {o: n for n in q.graph.node for o in n.output}
    inits = {i.name: i for i in q.graph.initializer}
    for name in ("depthwise", "deconv"):
        node = next(n for n in q.graph.node if n.name == name)
        mul = producer[node.input[1]]
        cast = producer[next(i for i in mul.input if i in producer)]
        assert mul.op_type == "Mul" and cast.op_type == "Cast"
        assert inits[cast.input[0]].data_type == onnx.TensorProto.INT8
    opt = optimized_op_counts(q)
    assert "Cast" not in opt and "Mul" not in opt, opt  # folded at load
    _runs(m, q)
    q32, stats32, _ = _quantize(m, "x86", float_layer_weights="fp32")
    assert _fp32_weight(q32, "depthwise") and _fp32_weight(q32, "deconv") and stats32["weight_only_int8"] == 0


def test_with_sensitivity_budget():
    m = _net()
    q, stats, p = _quantize(m, "x86", max_error="snr:10", sensitivity_samples=4, max_float_fraction=0.5)
    # The target rules' nodes are not budget candidates; they stay float with their reason.
    why = {node: reason for node, _, reason in p.report}
    assert why["depthwise"] == DEPTHWISE_FLOAT and why["deconv"] == CONV_TRANSPOSE_FLOAT
    ranked = {r["node"] for r in p.sensitivity_table}
    assert ranked and not ranked & {"depthwise", "deconv"}
    _runs(m, q)


def test_invalid_value():
    with pytest.raises(InputError, match="depthwise"):
        _quantize(_net(), "x86", depthwise="fp16")
    with pytest.raises(InputError, match="conv_transpose"):
        _quantize(_net(), "x86", conv_transpose="yes")
    with pytest.raises(InputError):
        QuantConfig(depthwise="auto")  # "auto" is resolved by for_target


def test_config_for_target():
    assert QuantConfig().depthwise == "int8" and QuantConfig().conv_transpose == "int8"
    x86 = QuantConfig.for_target("x86", flags=set())
    assert (x86.depthwise, x86.conv_transpose) == ("float", "float")
    vnni = QuantConfig.for_target("x86", flags={"avx512_vnni"})
    assert (vnni.depthwise, vnni.conv_transpose) == ("float", "float")
    arm = QuantConfig.for_target("arm64")
    assert (arm.depthwise, arm.conv_transpose) == ("int8", "float")
    assert QuantConfig.for_target("x86", flags=set(), depthwise="int8").depthwise == "int8"
    assert QuantConfig.for_target("arm64", depthwise="auto", conv_transpose="auto").conv_transpose == "float"
    assert QuantConfig.for_target("arm64", conv_transpose="int8").conv_transpose == "int8"


def test_is_depthwise():
    assert is_depthwise(8, (8, 1, 3, 3))
    assert is_depthwise(8, (16, 1, 3, 3))  # channel multiplier 2
    assert not is_depthwise(2, (8, 4, 3, 3))  # grouped, 4 input channels per group
    assert not is_depthwise(1, (8, 1, 3, 3))  # one input channel, group 1: a plain conv
    assert not is_depthwise(8, None)
    cfg = QuantConfig(depthwise="float", conv_transpose="float")
    assert cfg.target_float_reason("Conv", 8, (8, 1, 3, 3)) == DEPTHWISE_FLOAT
    assert cfg.target_float_reason("Conv", 2, (8, 4, 3, 3)) is None
    assert cfg.target_float_reason("ConvTranspose", 1, (8, 4, 2, 2)) == CONV_TRANSPOSE_FLOAT
    assert cfg.target_float_reason("MatMul") is None
