"""The prune-channels pass: options, policy, stats, report, what it leaves for
distillation, and the bundled MNIST MLP on its real test digits."""
from __future__ import annotations

from importlib import resources

import numpy as np
import onnx
import pytest

import onnxpress
from onnxpress.errors import InputError
from onnxpress.graph import load
from onnxpress.passes import Context, get_pass, make_pass
from onnxpress.prune import PrunedLayer
from tests.prune import F32, Builder, assert_exact, outputs, prune, session, weight
from tests.prune.test_depgraph import feeds, mlp, residual


def test_registered_as_lossy():
    cls = get_pass("prune-channels")
    assert cls.lossless is False and cls.summary


def test_runs_once_per_model_and_context():
    proto = mlp(seed=1)
    model = load(proto)
    ctx = Context()
    p = make_pass("prune-channels", ratio=0.5)
    assert p.run(model, ctx).modified
    again = p.run(model, ctx)
    assert not again.modified and again.stats == {}
    assert weight(model.to_proto(), "fc1").shape == (784, 64)


def test_ratio_zero_changes_nothing():
    proto = residual(seed=1)
    out, result, _, _ = prune(proto, ratio=0.0)
    assert not result.modified and result.stats["channels_removed"] == 0
    assert result.stats["macs_after"] == result.stats["macs_before"]
    assert_exact(proto, out, feeds([1, 3, 8, 8]))


def test_layer_ratios_override_the_global_ratio():
    proto = residual(seed=1)
    out, result, _, _ = prune(proto, ratio=0.5, layer_ratios={"conv_c": 0.0, "conv_b": 0.25})
    assert weight(out, "conv_a").shape[0] == 16  # conv_c's group keeps all (smallest ratio wins)
    assert weight(out, "conv_b").shape[0] == 6


@pytest.mark.parametrize("ratio,round_to,kept", [(0.3, 1, 12), (0.3, 8, 16), (0.5, 8, 8), (0.4, 4, 12), (0.99, 16, 16)])
def test_round_to_rounds_the_kept_count_up(ratio, round_to, kept):
    out, _, _, _ = prune(residual(seed=1), ratio=ratio, round_to=round_to)
    assert weight(out, "conv_a").shape[0] == kept


@pytest.mark.parametrize("options", [{"ratio": 1.0}, {"ratio": -0.1}, {"layer_ratios": {"a": 2.0}}, {"round_to": 0}, {"importance": "l3"}])
def test_bad_options_raise_input_error(options):
    with pytest.raises(InputError):
        prune(mlp(), **options)


def test_activation_importance_needs_calibration():
    with pytest.raises(InputError, match="calibration"):
        prune(mlp(), importance="activation")


def test_activation_importance_finds_dead_channels():
    # conv_a channels are live by their filters, but their input is always 0 after
    # a Relu of negative values: only activations can tell.
    b = Builder(0)
    w = np.abs(b.rng.normal(0, 0.5, (8, 3, 1, 1))).astype(F32)
    w[[2, 5]] *= -1  # always negative on positive inputs -> Relu gives 0
    h = b.op("Relu", [b.op("Conv", ["x", b.const("pre.w", w)], "pre", kernel_shape=[1, 1])], "relu")
    y = b.conv(b.op("Relu", [b.conv(h, "conv_a", 8, 6)], "relu_a"), "conv_b", 6, 2)
    proto = b.model([("x", [1, 3, 4, 4])], [y])
    calib = [{"x": np.abs(np.random.default_rng(i).normal(size=(1, 3, 4, 4))).astype(F32)} for i in range(4)]
    out, result, ctx, _ = prune(
        proto, ctx=Context(calibration=calib), ratio=0.25, importance="activation", layer_ratios={"conv_a": 0.0}
    )
    kept = ctx.options["pruned_channels"]["pre"]
    assert sorted(set(range(8)) - set(kept.tolist())) == [2, 5]
    assert_exact(proto, out, calib[0])


def test_stats_report_and_distillation_records():
    proto = residual(zero_a=(1, 5, 9, 13), zero_b=(2, 6))
    out, result, ctx, p = prune(proto, ratio=0.25)
    s = result.stats
    assert s["groups"] == 3 and s["groups_pruned"] == 2 and s["groups_skipped"] == 1
    assert s["channels_removed"] == 6 and s["removed.conv_a_1_"] == 4 and s["removed.conv_b"] == 2
    assert s["macs_after"] < s["macs_before"] and s["params_after"] < s["params_before"]
    assert s["skipped.reaches_graph_output_y_"] == 1
    assert all(isinstance(v, (int, float)) for v in s.values())  # PassManager sums them
    assert ctx.options["prune_report"] == p.report == [("conv_d", "reaches graph output 'y'")]
    layers = {x.node: x for x in ctx.options["pruned_layers"]}
    assert set(layers) == {"conv_b", "conv_c", "conv_d"}
    teacher = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    for name, layer in layers.items():
        assert isinstance(layer, PrunedLayer) and layer.weight == f"{name}.w"
        node, kept_in, w_name = layer  # a plain 3-tuple for the distillation pass
        student = weight(out, node)
        kept_out = ctx.options["pruned_channels"].get(node, np.arange(student.shape[0]))
        np.testing.assert_array_equal(student, teacher[w_name][kept_out][:, kept_in])
    assert set(ctx.options["pruned_channels"]) == {"conv_a", "conv_b", "conv_c"}


def test_in_a_pipeline_with_strict_validation():
    proto = residual(seed=2)
    result = onnxpress.optimize(
        proto,
        passes=["lift-constants", "fold-constants", "fold-batchnorm", "eliminate-dead-code", "prune-channels"],
        strict=True,
        prune_channels={"ratio": 0.5},
    )
    runs = [r for r in result.records if r.name == "prune-channels"]
    assert runs[0].modified and not any(r.modified for r in runs[1:])
    assert result.after.macs < 0.5 * result.before.macs
    assert outputs(result.model, feeds([1, 3, 8, 8]))[0].shape == (1, 8)


# Test accuracy of the bundled MLP (fp32 0.941) with hidden neurons pruned and no
# distillation, as measured: l1 0.932 at 25%, 0.854 at 50%; activation 0.900, 0.759.
MNIST_MIN = {("l1", 0.25): 0.925, ("l1", 0.5): 0.845, ("activation", 0.25): 0.89, ("activation", 0.5): 0.74}


@pytest.mark.parametrize("importance,ratio", sorted(MNIST_MIN))
def test_bundled_mnist_mlp_hidden_neurons(importance, ratio):
    data = np.load(resources.files("onnxpress.data") / "mnist_test.npz")
    x, y = data["x_uint8"].astype(F32) / 255.0, data["y"]
    proto = onnx.load(str(resources.files("onnxpress.data") / "mnist_mlp.onnx"))
    calib = [{"input": x[i : i + 50]} for i in range(0, 200, 50)]
    out, result, ctx, _ = prune(proto, ctx=Context(calibration=calib), ratio=ratio, importance=importance)
    kept = 128 - int(128 * ratio)
    assert weight(out, "/fc1/Gemm").shape[0] == kept and weight(out, "/fc2/Gemm").shape[1] == kept
    fp32 = np.mean(session(proto).run(None, {"input": x})[0].argmax(1) == y)
    pruned = np.mean(session(out).run(None, {"input": x})[0].argmax(1) == y)
    print(f"MNIST MLP {importance} {ratio:.0%}: fp32 {fp32:.3f}, pruned {pruned:.3f}")
    assert fp32 == pytest.approx(0.941, abs=0.005)
    assert pruned >= MNIST_MIN[importance, ratio]


# ------------------------------------------------------------------ global allocation
@pytest.mark.parametrize(
    "options",
    [{"allocation": "layerwise"}, {"global_criterion": "hessian"}, {"max_ratio": 1.0}, {"max_ratio": 0.0},
     {"budget": "flops"}, {"sensitivity_step": 0.0}, {"sensitivity_samples": 0}],
)
def test_bad_global_options_raise_input_error(options):
    with pytest.raises(InputError):
        prune(mlp(), **{"allocation": "global", "global_criterion": "importance", **options})


def test_global_sensitivity_needs_calibration():
    with pytest.raises(InputError, match="calibration"):
        prune(mlp(), allocation="global")


def _removed_per_group(result) -> dict[str, int]:
    return {k[len("removed."):]: v for k, v in result.stats.items() if k.startswith("removed.")}


@pytest.mark.parametrize("criterion", ["sensitivity", "importance"])
def test_global_allocation_takes_the_harmless_channels_first(criterion):
    """conv_a/conv_c (16 channels) and conv_b (8) have 4 and 2 all-zero channels;
    conv_d is pinned by the output. 25% of the 24 prunable channels is exactly the
    6 zero channels: both criteria must find them, so the output is unchanged."""
    proto = residual(zero_a=(1, 5, 9, 13), zero_b=(2, 6))
    calib = [feeds([1, 3, 8, 8], seed=i) for i in range(3)]
    out, result, ctx, _ = prune(proto, ctx=Context(calibration=calib), ratio=0.25, allocation="global",
                                global_criterion=criterion, max_ratio=0.5)
    s = result.stats
    assert s["prunable"] == 24 and s["channels_removed"] == 6
    assert _removed_per_group(result) == {"conv_a_1_": 4, "conv_b": 2}
    assert sorted(set(range(16)) - set(ctx.options["pruned_channels"]["conv_a"].tolist())) == [1, 5, 9, 13]
    assert (criterion == "sensitivity") == ("sensitivity_trials" in s)
    assert_exact(proto, out, calib[0])


def test_global_allocation_respects_the_overall_fraction_and_the_cap():
    """A chain of five convs of 8..32 channels: 30% of all prunable channels go,
    no group loses more than max_ratio of its channels, the model stays valid and
    runs; an unreachable budget stops at the caps."""
    b = Builder(3)
    x, cin = "x", 3
    for i, c in enumerate((8, 32, 16, 24, 32)):
        x, cin = b.op("Relu", [b.conv(x, f"conv{i}", cin, c)], f"relu{i}"), c
    y = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(x, "head", cin, 4)], "gap")], "y")
    proto = b.model([("x", [1, 3, 12, 12])], [y])
    calib = [feeds([1, 3, 12, 12], seed=i) for i in range(4)]
    sizes = {"conv0": 8, "conv1": 32, "conv2": 16, "conv3": 24, "conv4": 32}
    for ratio, cap in ((0.3, 0.5), (0.3, 0.35), (0.6, 0.25)):
        out, result, _, _ = prune(proto, ctx=Context(calibration=calib), ratio=ratio, allocation="global", max_ratio=cap)
        removed = _removed_per_group(result)
        assert result.stats["prunable"] == 112
        for name, n in removed.items():
            assert n <= int(cap * sizes[name] + 1e-9), (name, n, cap)
        total = result.stats["channels_removed"]
        budget, caps = round(ratio * 112), sum(int(cap * n + 1e-9) for n in sizes.values())
        if budget <= caps:
            assert total == budget  # the last step is cut to the channels still needed
        else:
            assert total == caps
        for name, n in sizes.items():
            assert weight(out, name).shape[0] == n - removed.get(name, 0)
        y_ref, y_got = outputs(proto, calib[0])[0], outputs(out, calib[0], optimize=True)[0]
        assert y_got.shape == y_ref.shape and np.isfinite(y_got).all()
        print(f"global {ratio:.0%} cap {cap:.0%}: removed {removed}, MACs {result.stats['macs_after'] / result.stats['macs_before']:.3f}")


def test_global_macs_budget_matches_uniform_macs():
    """budget='macs': about the MACs the uniform allocation removes at the same ratio."""
    b = Builder(4)
    x, cin = "x", 3
    for i, c in enumerate((16, 16, 32)):
        x, cin = b.op("Relu", [b.conv(x, f"conv{i}", cin, c, strides=[1 + (i == 2)] * 2)], f"relu{i}"), c
    y = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(x, "head", cin, 4)], "gap")], "y")
    proto = b.model([("x", [1, 3, 16, 16])], [y])
    calib = [feeds([1, 3, 16, 16], seed=i) for i in range(3)]
    _, uni, _, _ = prune(proto, ratio=0.3)
    _, glo, _, _ = prune(proto, ctx=Context(calibration=calib), ratio=0.3, allocation="global", budget="macs", max_ratio=0.6)
    mu = uni.stats["macs_after"] / uni.stats["macs_before"]
    mg = glo.stats["macs_after"] / glo.stats["macs_before"]
    print(f"MACs after/before: uniform {mu:.3f}, global (macs budget) {mg:.3f}")
    assert abs(mg - mu) < 0.12


@pytest.mark.parametrize("budget", ["macs", "channels"])
def test_global_allocation_is_rounded_up_to_round_to(budget):
    """round_to=8 with allocation='global': the allocation is the one of
    round_to=1 (channel by channel, budget met), each group's kept count then
    rounded up to a multiple of 8."""
    b = Builder(5)
    x, cin = "x", 3
    for i, c in enumerate((32, 32, 64, 64)):
        x, cin = b.op("Relu", [b.conv(x, f"conv{i}", cin, c, strides=[1 + (i % 2)] * 2)], f"relu{i}"), c
    y = b.op("Flatten", [b.op("GlobalAveragePool", [b.conv(x, "head", cin, 4)], "gap")], "y")
    proto = b.model([("x", [1, 3, 32, 32])], [y])
    calib = [feeds([1, 3, 32, 32], seed=i) for i in range(3)]
    opts = {"ratio": 0.3, "allocation": "global", "budget": budget, "max_ratio": 0.75}
    fine_model, fine, _, _ = prune(proto, ctx=Context(calibration=calib), **opts)
    out, grid, _, _ = prune(proto, ctx=Context(calibration=calib), round_to=8, **opts)
    rounded = 0
    for i in range(4):
        kept_fine, kept = weight(fine_model, f"conv{i}").shape[0], weight(out, f"conv{i}").shape[0]
        assert kept == -(-kept_fine // 8) * 8
        rounded += kept != kept_fine
    assert rounded  # the case is not trivial
    if budget == "macs":  # round_to=1 meets the (first-order) budget; rounding up keeps more
        _, uniform, _, _ = prune(proto, ratio=0.3)
        assert abs(fine.stats["macs_after"] / uniform.stats["macs_after"] - 1) < 0.1
        assert fine.stats["macs_after"] < grid.stats["macs_after"]
    else:
        assert fine.stats["channels_removed"] == round(0.3 * fine.stats["prunable"])
        assert 0 < grid.stats["channels_removed"] < fine.stats["channels_removed"]
    y_ref, y_got = outputs(proto, calib[0])[0], outputs(out, calib[0], optimize=True)[0]
    assert y_got.shape == y_ref.shape and np.isfinite(y_got).all()


def _cancelling_mlp():
    """x [B, 4] -> fc1 (h = x, but h3 = h2) -> fc2 -> y [B, 3]. The output
    contributions of the hidden neurons are z0 = h0 e0, z1 = 0.7 h1 e1,
    z2 = -0.5 h2 e2, z3 = 0.8 h2 e2: neurons 2 and 3 nearly cancel."""
    from onnx import helper

    from tests.prune._models import make_model, t

    w1 = np.eye(4)
    w1[3] = w1[2]
    w2 = np.zeros((4, 3))
    w2[0, 0], w2[1, 1], w2[2, 2], w2[3, 2] = 1.0, 0.7, -0.5, 0.8
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
             helper.make_node("Gemm", ["h", "w2"], ["y"], name="fc2")]
    return make_model(nodes, [("x", ["B", 4])], ["y"], [t(w1, "w1"), t(w2, "w2")])


def test_reconstruction_importance_sees_channels_that_cancel():
    """importance='reconstruction' (ThiNet's greedy on the consumers' output
    contributions) removes the two neurons whose contributions cancel (output
    energy lost 0.3^2 = 0.09); 'activation' (per-channel norms) removes the two
    smallest ones (0.5^2 + 0.7^2 = 0.74)."""
    proto = _cancelling_mlp()
    rng = np.random.default_rng(0)
    calib = [{"x": rng.standard_normal((64, 4)).astype(np.float32)} for _ in range(4)]
    held = {"x": rng.standard_normal((256, 4)).astype(np.float32)}
    y = outputs(proto, held)[0]
    lost = {}
    for importance in ("activation", "reconstruction"):
        out, result, _, _ = prune(proto, ctx=Context(calibration=calib), ratio=0.5, importance=importance)
        assert result.stats["channels_removed"] == 2
        # output energy lost per sample, per unit input variance
        lost[importance] = float(np.mean(np.sum((outputs(out, held)[0] - y) ** 2, axis=1)) / np.mean(held["x"] ** 2))
        kept = weight(out, "fc1")
        if importance == "reconstruction":  # neurons 0 and 1 kept, exactly
            np.testing.assert_array_equal(kept, np.eye(4, dtype=np.float32)[:2])
    print(f"output energy lost per sample: {lost}")
    assert abs(lost["reconstruction"] - 0.09) < 0.03 and abs(lost["activation"] - 0.74) < 0.15


def test_reconstruction_importance_needs_calibration():
    with pytest.raises(InputError, match="reconstruction.*calibration"):
        prune(_cancelling_mlp(), ratio=0.5, importance="reconstruction")


def test_reconstruction_importance_crops_large_conv_inputs(monkeypatch):
    """A Conv input whose unfolded patches would pass the memory cap is cropped
    (centre) for the Gram; the order is still a full ranking of the group."""
    from onnxpress.prune import channels
    from tests.prune._models import convnet

    rng = np.random.default_rng(0)
    proto = convnet(rng, c=16)
    calib = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(3)]
    full, _, _, _ = prune(proto, ctx=Context(calibration=calib), ratio=0.5, importance="reconstruction")
    monkeypatch.setattr(channels, "_GRAM_BYTES", 2000)  # conv2 reads 16 x 16 x 16 x 9 x 8 bytes: cropped
    cropped, result, _, _ = prune(proto, ctx=Context(calibration=calib), ratio=0.5, importance="reconstruction")
    assert result.stats["channels_removed"] == 16
    assert weight(cropped, "conv1").shape == weight(full, "conv1").shape == (8, 3, 3, 3)
