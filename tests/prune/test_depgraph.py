"""Dependency groups of channels (onnxpress.prune.depgraph) on small graphs.

Each graph is pruned for real: the result must pass ``onnx.checker`` full check,
run in onnxruntime with the output shapes unchanged, and, where the removed
channels are built to be exactly zero (zero filters and biases, activations
with f(0) = 0), compute exactly the same outputs as the original (optimizations
off and on). Graphs with random weights are checked against the original with
the removed channels zeroed at every layer input (``masked_reference``).
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxpress.graph import load
from onnxpress.passes import Context, make_pass
from onnxpress.prune import build_depgraph
from onnxpress.prune.depgraph import reshape_axis
from tests.prune import F32, Builder, assert_exact, masked_reference, outputs, prune, weight


def groups_by_layers(proto: onnx.ModelProto) -> dict[frozenset, object]:
    dg = build_depgraph(load(proto))
    return {frozenset(s.node.name for s in g.sources): g for g in dg.groups}


def feeds(shape, seed=1, name="x"):
    return {name: np.random.default_rng(seed).normal(size=shape).astype(F32)}


# --------------------------------------------------------------------- reshape
def test_reshape_axis_flatten_makes_blocks():
    k, idx = reshape_axis(("N", 6, 4, 4), ("N", 96), 1, 6)
    assert k == 1 and idx.tolist() == np.repeat(np.arange(6), 16).tolist()


def test_reshape_axis_interleaves_like_magika():
    k, idx = reshape_axis(("a", 2048, 64), ("b", 512, 256), 2, 64)
    assert k == 2 and idx.tolist() == (np.arange(256) % 64).tolist()


def test_reshape_axis_identity_prefix_suffix_and_head_split_refused():
    assert reshape_axis(("N", 120, "h", "w"), ("N", 120, "hw"), 1, 120)[0] == 1
    assert reshape_axis(("N", "T", 120), ("N", 1, "T", 120), 2, 120)[0] == 3
    assert reshape_axis(("N", "T", 360), ("N", "T", 3, 8, 15), 2, 360) is None
    k, idx = reshape_axis((1, 64, 8), (1, 512), 1, 64)  # ddddocr before its LSTM
    assert k == 1 and idx.tolist() == np.repeat(np.arange(64), 8).tolist()


# --------------------------------------------------------------------- residual
def residual(zero_a=(), zero_b=(), seed=0):
    b = Builder(seed)
    a = b.op("Relu", [b.conv("x", "conv_a", 3, 16, zero=zero_a)], "relu_a")
    h = b.op("Relu", [b.conv(a, "conv_b", 16, 8, zero=zero_b)], "relu_b")
    c = b.conv(h, "conv_c", 8, 16, zero=zero_a)
    s = b.op("Relu", [b.op("Add", [a, c], "add")], "relu_s")
    d = b.conv(s, "conv_d", 16, 8)
    y = b.op("GlobalAveragePool", [d], "gap")
    return b.model([("x", [1, 3, 8, 8])], [b.op("Flatten", [y], "y")])


def test_residual_add_couples_both_branches():
    groups = groups_by_layers(residual())
    assert set(groups) == {frozenset({"conv_a", "conv_c"}), frozenset({"conv_b"}), frozenset({"conv_d"})}
    assert len(groups[frozenset({"conv_a", "conv_c"})].classes) == 16
    pinned = groups[frozenset({"conv_d"})]
    assert len(pinned.pinned) == 8 and "graph output" in pinned.reasons[0]


def test_residual_block_exact_when_removed_channels_are_zero():
    proto = residual(zero_a=(1, 5, 9, 13), zero_b=(2, 6))
    out, result, _, p = prune(proto, ratio=0.25)
    assert result.stats["channels_removed"] == 6
    assert weight(out, "conv_a").shape == (12, 3, 3, 3) and weight(out, "conv_c").shape == (12, 6, 3, 3)
    assert weight(out, "conv_b").shape == (6, 12, 3, 3) and weight(out, "conv_d").shape == (8, 12, 3, 3)
    assert_exact(proto, out, feeds([1, 3, 8, 8]))
    assert ("conv_d", "reaches graph output 'y'") in p.report


def test_residual_block_random_weights_equals_masked_original():
    proto = residual(seed=3)
    out, result, _, _ = prune(proto, ratio=0.5)
    assert result.stats["macs_after"] < 0.5 * result.stats["macs_before"]
    ref, got = outputs(masked_reference(proto, ratio=0.5), feeds([1, 3, 8, 8])), outputs(out, feeds([1, 3, 8, 8]))
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- concat, split
def concat_split(zero_a=(), zero_b=(), seed=0):
    b = Builder(seed)
    a = b.op("Relu", [b.conv("x", "conv_a", 3, 8, zero=zero_a)], "relu_a")
    c = b.op("Relu", [b.conv("x", "conv_b", 3, 8, zero=zero_b)], "relu_b")
    cat = b.op("Concat", [a, c], "cat", axis=1)
    s1, s2 = b.op("Split", [cat, b.const("sizes", np.array([4, 12]))], "split", outputs=2, axis=1)
    y = b.op("Add", [b.conv(s1, "conv_c", 4, 5), b.conv(s2, "conv_d", 12, 5)], "y")
    return b.model([("x", [1, 3, 6, 6])], [y])


def test_concat_and_split_by_offset():
    groups = groups_by_layers(concat_split())
    assert frozenset({"conv_a"}) in groups and frozenset({"conv_b"}) in groups
    # conv_c and conv_d feed the output through one Add: tied, and pinned there.
    assert len(groups[frozenset({"conv_c", "conv_d"})].pinned) == 5


def test_concat_and_split_exact():
    proto = concat_split(zero_a=(0, 5), zero_b=(3, 4))  # conv_a 0 lands in split 1, the rest in split 2
    out, result, _, _ = prune(proto, ratio=0.25)
    assert result.stats["channels_removed"] == 4
    split = next(n for n in out.graph.node if n.op_type == "Split")
    sizes = onnx.numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == split.input[1]))
    assert sizes.tolist() == [3, 9]
    assert weight(out, "conv_c").shape[1] == 3 and weight(out, "conv_d").shape[1] == 9
    assert_exact(proto, out, feeds([1, 3, 6, 6]))


# --------------------------------------------------------------------- depthwise, grouped
def depthwise(mult=2, zero=(), seed=0):
    b = Builder(seed)
    h = b.op("Relu", [b.conv("x", "conv_a", 3, 8, zero=zero)], "relu_a")
    w = b.rng.normal(0, 0.5, (8 * mult, 1, 3, 3)).astype(F32)
    bias = b.rng.normal(0, 0.1, 8 * mult).astype(F32)
    for c in zero:
        bias[c * mult : (c + 1) * mult] = 0
    dw = b.op("Conv", [h, b.const("dw.w", w), b.const("dw.b", bias)], "dw", group=8, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    y = b.conv(b.op("Relu", [dw], "relu_dw"), "conv_b", 8 * mult, 4)
    return b.model([("x", [1, 3, 6, 6])], [y])


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_ties_outputs_to_inputs_with_channel_multiplier(mult):
    proto = depthwise(mult, zero=(2, 7))
    groups = groups_by_layers(proto)
    assert frozenset({"conv_a"}) in groups  # the depthwise conv is no layer of its own
    out, result, _, _ = prune(proto, ratio=0.25)
    assert result.stats["channels_removed"] == 2
    dw = next(n for n in out.graph.node if n.name == "dw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 6
    assert weight(out, "dw").shape == (6 * mult, 1, 3, 3) and weight(out, "conv_b").shape == (4, 6 * mult, 3, 3)
    assert_exact(proto, out, feeds([1, 3, 6, 6]))


def grouped(zero_in=(), zero_out=(), seed=0):
    b = Builder(seed)
    h = b.op("Relu", [b.conv("x", "conv_a", 3, 8, zero=zero_in)], "relu_a")
    g = b.op("Relu", [b.conv(h, "gconv", 8, 8, group=2, zero=zero_out)], "relu_g")
    return b.model([("x", [1, 3, 6, 6])], [b.conv(g, "conv_b", 8, 3)])


def test_grouped_conv_keeps_groups_equal():
    proto = grouped(zero_in=(1, 5), zero_out=(2, 6))
    groups = groups_by_layers(proto)
    assert len(groups[frozenset({"conv_a"})].classes) == 4  # channel s of both groups tied
    assert len(groups[frozenset({"gconv"})].classes) == 4
    out, result, _, _ = prune(proto, ratio=0.25)
    assert result.stats["channels_removed"] == 2  # one class each: 2 channels per layer
    assert weight(out, "conv_a").shape[0] == 6 and weight(out, "gconv").shape == (6, 3, 3, 3)
    assert weight(out, "conv_b").shape[1] == 6
    assert_exact(proto, out, feeds([1, 3, 6, 6]))


# --------------------------------------------------------------------- flatten -> gemm
@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_flatten_into_gemm_prunes_blocks_of_features(flatten):
    b = Builder(0)
    h = b.op("Relu", [b.conv("x", "conv", 3, 6, zero=(2, 4))], "relu")
    if flatten == "Flatten":
        f = b.op("Flatten", [h], "flat", axis=1)
    else:
        f = b.op("Reshape", [h, b.const("shape", np.array([1, 96]))], "flat")
    w = b.rng.normal(0, 0.2, (10, 96)).astype(F32)
    y = b.op("Gemm", [f, b.const("fc.w", w), b.const("fc.b", np.zeros(10, F32))], "fc", transB=1)
    proto = b.model([("x", [1, 3, 4, 4])], [y])
    out, result, ctx, _ = prune(proto, ratio=1 / 3)
    assert result.stats["channels_removed"] == 2
    assert weight(out, "fc").shape == (10, 64)
    kept = np.repeat([0, 1, 3, 5], 16) * 16 + np.tile(np.arange(16), 4)
    np.testing.assert_array_equal(weight(out, "fc"), w[:, kept])
    layer = next(x for x in ctx.options["pruned_layers"] if x.node == "fc")
    np.testing.assert_array_equal(layer.kept_inputs, kept)
    assert_exact(proto, out, feeds([1, 3, 4, 4]))


# --------------------------------------------------------------------- one channel
def test_conv_with_one_output_channel_is_never_pruned_to_zero():
    b = Builder(0)
    one = b.op("Relu", [b.conv("x", "conv_one", 3, 1)], "relu_one")
    feat = b.op("Relu", [b.conv("x", "conv_f", 3, 8)], "relu_f")
    att = b.op("Sigmoid", [b.conv(feat, "conv_att", 8, 1)], "att")  # spatial attention, 1 channel
    y = b.op("Add", [b.conv(b.op("Mul", [feat, att], "gated"), "conv_out", 8, 1), b.conv(one, "conv_1x", 1, 1)], "y")
    proto = b.model([("x", [1, 3, 6, 6])], [y])
    out, result, _, p = prune(proto, ratio=0.9)
    assert weight(out, "conv_one").shape[0] == 1 and weight(out, "conv_att").shape[0] == 1
    assert weight(out, "conv_f").shape[0] == 1  # 8 -> 1: at least one channel stays
    assert dict(p.report)["conv_one"] == "a single channel"
    assert outputs(out, feeds([1, 3, 6, 6]))[0].shape == (1, 1, 6, 6)


# --------------------------------------------------------------------- MLP
def mlp(zero=(), seed=0):
    b = Builder(seed)
    h = b.op("Relu", [b.matmul("x", "fc1", 784, 128, zero=zero)], "relu")
    return b.model([("x", ["N", 784])], [b.matmul(h, "fc2", 128, 10)])


def test_mlp_784_128_10_exact_and_neurons_removed():
    zero = tuple(range(0, 128, 4))  # 32 dead neurons
    proto = mlp(zero)
    out, result, ctx, _ = prune(proto, ratio=0.25)
    assert weight(out, "fc1").shape == (784, 96) and weight(out, "fc2").shape == (96, 10)
    layer = ctx.options["pruned_layers"][0]
    assert layer.node == "fc2" and layer.weight == "fc2.w"
    assert sorted(set(range(128)) - set(layer.kept_inputs.tolist())) == list(zero)
    np.testing.assert_array_equal(ctx.options["pruned_channels"]["fc1"], layer.kept_inputs)
    assert_exact(proto, out, feeds([3, 784]))


def test_mlp_random_half_neurons():
    proto = mlp(seed=5)
    out, result, _, _ = prune(proto, ratio=0.5, round_to=16)
    assert weight(out, "fc1").shape == (784, 64)
    assert result.stats["params_after"] < 0.55 * result.stats["params_before"]
    got = outputs(out, feeds([2, 784]))[0]
    ref = outputs(masked_reference(proto, ratio=0.5), feeds([2, 784]))[0]
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- per-channel ops
def test_transpose_channels_last_and_back_exact():
    b = Builder(0)
    h = b.conv("x", "conv_a", 3, 8, zero=(1, 6))
    t = b.op("Transpose", [h], "nhwc", perm=[0, 2, 3, 1])
    scale = np.linspace(0.5, 1.5, 8).astype(F32)
    t = b.op("Relu", [b.op("Mul", [t, b.const("scale", scale)], "scale_mul")], "relu")
    y = b.conv(b.op("Transpose", [t], "nchw", perm=[0, 3, 1, 2]), "conv_b", 8, 4)
    proto = b.model([("x", [1, 3, 5, 5])], [y])
    out, result, _, _ = prune(proto, ratio=0.25)
    assert result.stats["channels_removed"] == 2
    assert_exact(proto, out, feeds([1, 3, 5, 5]))


def test_batchnorm_prelu_per_channel_constants_and_activations_exact():
    b = Builder(0)
    zero = (0, 3, 9)
    h = b.conv("x", "conv_a", 3, 12, zero=zero)
    gamma, beta = b.rng.uniform(0.5, 1.5, 12).astype(F32), b.rng.normal(0, 0.1, 12).astype(F32)
    mean, var = b.rng.normal(0, 0.1, 12).astype(F32), b.rng.uniform(0.5, 1.5, 12).astype(F32)
    beta[list(zero)] = 0
    mean[list(zero)] = 0
    bn = b.op("BatchNormalization", [h, *(b.const(f"bn.{k}", v) for k, v in zip("sbmv", (gamma, beta, mean, var)))], "bn")
    pr = b.op("PRelu", [bn, b.const("slope", b.rng.uniform(0, 0.3, (12, 1, 1)).astype(F32))], "prelu")
    mul = b.op("Mul", [pr, b.const("mul_c", b.rng.uniform(0.5, 2, (1, 12, 1, 1)).astype(F32))], "mul")
    shift = b.rng.normal(0, 0.1, (12, 1, 1)).astype(F32)
    shift[list(zero)] = 0
    add = b.op("Add", [mul, b.const("add_c", shift)], "add")
    act = b.op("HardSwish", [add], "hswish")
    act = b.op("Clip", [act, b.const("lo", np.array(-1, F32)), b.const("hi", np.array(6, F32))], "clip")
    act = b.op("LeakyRelu", [act], "leaky", alpha=0.1)
    act = b.op("Tanh", [b.op("Relu", [act], "relu")], "tanh")
    y = b.conv(act, "conv_b", 12, 4)
    proto = b.model([("x", [1, 3, 6, 6])], [y])
    out, result, _, _ = prune(proto, ratio=0.25)
    assert result.stats["channels_removed"] == 3
    bn_node = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    assert all(weight(out, bn_node.name, i).shape == (9,) for i in range(1, 5))
    assert weight(out, "prelu").shape == (9, 1, 1) and weight(out, "mul").shape == (1, 9, 1, 1)
    assert_exact(proto, out, feeds([1, 3, 6, 6]))


def test_sigmoid_hardsigmoid_gate_random_equals_masked_original():
    b = Builder(2)
    h = b.conv("x", "conv_a", 3, 12)
    gate = b.op("HardSigmoid", [b.conv(b.op("GlobalAveragePool", [h], "gap"), "se", 12, 12, k=1)], "hsig")
    g = b.op("Mul", [h, gate], "se_mul")
    g = b.op("Mul", [g, b.op("Sigmoid", [g], "sig")], "swish")
    proto = b.model([("x", [1, 3, 6, 6])], [b.conv(g, "conv_b", 12, 4)])
    groups = groups_by_layers(proto)
    assert frozenset({"conv_a", "se"}) in groups  # the SE gate multiplies the same channels
    out, _, _, _ = prune(proto, ratio=0.5)
    ref = outputs(masked_reference(proto, ratio=0.5), feeds([1, 3, 6, 6]))[0]
    np.testing.assert_allclose(outputs(out, feeds([1, 3, 6, 6]))[0], ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- fused HardSwish
def decomposed_hardswish_net(opset: int, seed: int = 4):
    """PP-LCNet's block as Paddle2ONNX writes it (PP-OCRv4 det/rec): Conv 1x1 ->
    ``x * Clip(x + 3, 0, 6) / 6`` -> depthwise Conv 3x3 -> the same -> Conv 1x1 ->
    the same -> Conv (graph output)."""
    b = Builder(seed, opset=opset)

    def hswish(x: str, name: str) -> str:
        a = b.op("Add", [x, b.const(f"{name}.three", np.array(3, F32))], f"{name}_add")
        c = b.op("Clip", [a, b.const(f"{name}.lo", np.array(0, F32)), b.const(f"{name}.hi", np.array(6, F32))], f"{name}_clip")
        return b.op("Div", [b.op("Mul", [x, c], f"{name}_mul"), b.const(f"{name}.six", np.array(6, F32))], name)

    h = hswish(b.conv("x", "conv_a", 3, 12, k=1), "hs_a")
    h = hswish(b.conv(h, "dw", 12, 12, group=12), "hs_dw")
    h = hswish(b.conv(h, "conv_b", 12, 8, k=1), "hs_b")
    return b.model([("x", [1, 3, 6, 6])], [b.conv(h, "conv_c", 8, 4)])


def fuse_hardswish(proto: onnx.ModelProto):
    model = load(onnx.ModelProto.FromString(proto.SerializeToString()))
    result = make_pass("fuse-hardswish").run(model, Context())
    out = model.to_proto()
    onnx.checker.check_model(out, full_check=True)
    return out, result


@pytest.mark.parametrize("opset, emitted", [(17, ("HardSwish",)), (12, ("HardSigmoid", "Mul"))])
def test_fused_hardswish_carries_channels_like_the_decomposed_form(opset, emitted):
    """fuse-hardswish writes ``HardSwish(x)`` (opset >= 14) or ``Mul(x, HardSigmoid(x))``:
    both are channel-preserving, so Conv -> HardSwish -> Conv groups as before the
    fusion, the same channels go, and the pruned model computes what the fused
    original computes with those channels zeroed."""
    proto = decomposed_hardswish_net(opset)
    fused, result = fuse_hardswish(proto)
    assert result.stats["patterns_fused"] == 3
    ops = [n.op_type for n in fused.graph.node]
    assert "Clip" not in ops and all(ops.count(op) == 3 for op in emitted)
    summary = lambda groups: {k: (len(g.classes), len(g.pinned)) for k, g in groups.items()}
    expected = {frozenset({"conv_a"}): (12, 0), frozenset({"conv_b"}): (8, 0), frozenset({"conv_c"}): (4, 4)}
    assert summary(groups_by_layers(fused)) == summary(groups_by_layers(proto)) == expected  # dw joins conv_a
    out, res, ctx, p = prune(fused, ratio=0.5)
    assert (res.stats["groups"], res.stats["groups_pruned"], res.stats["groups_skipped"]) == (3, 2, 1)
    assert res.stats["channels_removed"] == 10 and p.report == [("conv_c", "reaches graph output 'conv_c'")]
    assert weight(out, "conv_a").shape == (6, 3, 1, 1) and weight(out, "dw").shape == (6, 1, 3, 3)
    assert weight(out, "conv_b").shape == (4, 6, 1, 1) and weight(out, "conv_c").shape == (4, 4, 3, 3)
    x = feeds([1, 3, 6, 6])
    got = outputs(out, x)[0]
    np.testing.assert_allclose(got, outputs(masked_reference(fused, ratio=0.5), x)[0], rtol=1e-5, atol=1e-5)
    # The decomposed graph loses the same channels and computes the same (up to rounding).
    out_d, res_d, ctx_d, _ = prune(proto, ratio=0.5)
    assert res_d.stats["macs_after"] == res.stats["macs_after"] < 0.5 * res.stats["macs_before"]
    kept, kept_d = ctx.options["pruned_channels"], ctx_d.options["pruned_channels"]
    assert kept.keys() == kept_d.keys() == {"conv_a", "conv_b"}
    assert all(np.array_equal(kept[k], kept_d[k]) for k in kept)
    np.testing.assert_allclose(got, outputs(out_d, x)[0], rtol=1e-5, atol=1e-5)


def test_pad_pool_resize_and_conv_transpose_exact():
    b = Builder(0)
    h = b.op("Relu", [b.conv("x", "conv_a", 3, 8, zero=(0, 4))], "relu")
    h = b.op("Pad", [h, b.const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1]))], "pad")
    h = b.op("MaxPool", [h], "maxpool", kernel_shape=[2, 2], strides=[2, 2])
    h = b.op("AveragePool", [h], "avgpool", kernel_shape=[1, 1])
    h = b.op("Resize", [h, "", b.const("scales", np.array([1, 1, 2, 2], F32))], "resize", mode="nearest")
    w = b.rng.normal(0, 0.3, (8, 8, 2, 2)).astype(F32)
    bias = b.rng.normal(0, 0.1, 8).astype(F32)
    w[:, [1, 5]] = 0
    bias[[1, 5]] = 0
    t = b.op("Relu", [b.op("ConvTranspose", [h, b.const("ct.w", w), b.const("ct.b", bias)], "ct", strides=[2, 2], kernel_shape=[2, 2])], "relu_t")
    proto = b.model([("x", [1, 3, 6, 6])], [b.conv(t, "conv_b", 8, 2)])
    groups = groups_by_layers(proto)
    assert frozenset({"conv_a"}) in groups and frozenset({"ct"}) in groups
    out, result, _, _ = prune(proto, ratio=0.25)
    assert result.stats["channels_removed"] == 4
    assert weight(out, "ct").shape == (6, 6, 2, 2)
    assert_exact(proto, out, feeds([1, 3, 6, 6]))


# --------------------------------------------------------------------- run-time shapes
def test_expand_with_shape_built_at_run_time():
    b = Builder(0)
    h = b.op("Relu", [b.matmul("x", "fc1", 4, 16, zero=(3, 11))], "relu")
    u = b.op("Unsqueeze", [h, b.const("ax1", np.array([1]))], "unsq")
    n = b.op("Slice", [b.op("Shape", ["x"], "shape"), b.const("s0", np.array([0])), b.const("s1", np.array([1]))], "batch")
    shp = b.op("Concat", [n, b.const("three", np.array([3])), b.const("sixteen", np.array([16]))], "shp", axis=0)
    e = b.op("Expand", [u, b.op("Cast", [shp], "shp_cast", to=onnx.TensorProto.INT64)], "expand")
    proto = b.model([("x", ["N", 4])], [b.matmul(e, "fc2", 16, 5)])
    out, result, _, _ = prune(proto, ratio=0.125)
    assert result.stats["channels_removed"] == 2
    assert_exact(proto, out, feeds([2, 4]))


# --------------------------------------------------------------------- refusals
def test_residual_with_graph_input_is_left_whole():
    b = Builder(0)
    y = b.op("Add", ["x", b.conv("x", "conv_a", 4, 4)], "add")
    proto = b.model([("x", [1, 4, 5, 5])], [b.conv(y, "conv_b", 4, 2)])
    out, result, _, p = prune(proto, ratio=0.5)
    assert result.stats["channels_removed"] == 0 and not result.modified
    assert "untracked tensor 'x'" in dict(p.report)["conv_a"]


def test_softmax_over_channels_and_unknown_ops_pin():
    b = Builder(0)
    s = b.op("Softmax", [b.conv("x", "conv_a", 3, 6)], "softmax", axis=1)
    g = b.op("Gather", [b.conv("x", "conv_b", 3, 6), b.const("idx", np.array([0, 2]))], "gather", axis=1)
    proto = b.model([("x", [1, 3, 4, 4])], [b.conv(s, "conv_c", 6, 2), g])
    _, result, _, p = prune(proto, ratio=0.5)
    report = dict(p.report)
    assert "normalizes over the channel axis" in report["conv_a"]
    assert "no channel rule" in report["conv_b"]
    assert result.stats["groups_skipped"] == 3


def test_reduce_sum_mean_divisor_follows_the_channel_count():
    b = Builder(0)
    h = b.matmul("x", "fc1", 4, 8, zero=(1, 6))
    mean = b.op("Mul", [b.op("ReduceSum", [h, b.const("axes", np.array([1]))], "rsum", keepdims=1), b.const("inv8", np.array(0.125, F32))], "mean")
    y = b.matmul(b.op("Sub", [h, mean], "centered"), "fc2", 8, 3)
    proto = b.model([("x", [2, 4])], [y])
    out, result, _, _ = prune(proto, ratio=0.25)
    assert result.stats["channels_removed"] == 2
    scale = weight(out, "mean", 1)
    assert scale.shape == () and float(scale) == pytest.approx(1 / 6)
    assert outputs(out, feeds([2, 4]))[0].shape == (2, 3)
