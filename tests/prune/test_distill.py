"""distill: streamed Gram statistics equal a direct computation, im2col
reproduces onnxruntime's Conv, refitting lowers the output error against the
teacher (on held-out data) compared with pruning alone, sparse layers keep their
zeros, consumers of removed channels are refit, GPTQ beats round-to-nearest on
correlated inputs, quantized layers get GPTQ / bias correction, and a second
run changes nothing."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxpress.errors import InputError
from onnxpress.graph import load
from onnxpress.passes import Context, PassManager, make_pass
from onnxpress.prune._layers import find_layers, im2col, output_rows
from onnxpress.prune.distill import GramStats, gptq_round, ridge_solve
from tests.conftest import run_ort
from tests.prune._models import convnet, make_model, mlp, snr, t, weights


def run(proto, names, ctx, **options):
    model = load(onnx.ModelProto.FromString(proto.SerializeToString()))
    passes = [make_pass(n, **(options.get(n.replace("-", "_"), {}))) for n in names]
    records = PassManager(passes, strict=True).run(model, ctx)
    out = model.to_proto()
    onnx.checker.check_model(out, full_check=True)
    return out, records


def stats_of(records, name):
    return next(r.stats for r in records if r.name == name and r.iteration == 1)


def outputs(proto, data):
    return [run_ort(proto, f)[0] for f in data]


def mlp_data(rng, n, k=64, batch=16):
    """Correlated inputs; the mixing matrix is fixed per ``k`` (calibration and
    held-out data share a distribution)."""
    r = np.random.default_rng(k)
    mix = r.standard_normal((k, k // 4)) @ r.standard_normal((k // 4, k)) / np.sqrt(k) + 0.2 * np.eye(k)
    return [{"x": (rng.standard_normal((batch, k)) @ mix).astype(np.float32)} for _ in range(n)]


def smooth_images(rng) -> np.ndarray:
    """[1, 3, 16, 16] with neighbouring pixels and channels correlated, as in images."""
    coarse = np.kron(rng.standard_normal((1, 1, 4, 4)), np.ones((1, 1, 4, 4)))
    return (coarse * np.array([1.0, 0.8, 0.6]).reshape(1, 3, 1, 1) + 0.1 * rng.standard_normal((1, 3, 16, 16))).astype(np.float32)


# ------------------------------------------------------------------ statistics
@pytest.mark.parametrize("group", [1, 4, 8])
def test_im2col_reproduces_conv(rng, group):
    proto = convnet(rng, c=8, group2=group)
    model = load(proto)
    layers, _ = find_layers(model)
    assert [l.name for l in layers] == ["conv1", "conv2", "conv3"]
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    # Capture every conv's input and output with onnxruntime.
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    for name in ("r1", "c2", "c1", "r2"):
        work.graph.output.add().name = name
    y, r1, c2, c1, r2 = run_ort(work, {"x": x})
    for layer, xin, yout in ((layers[0], x, c1), (layers[1], r1, c2), (layers[2], r2, y)):
        a = im2col(layer, xin)  # [rows, g, D]
        w = layer.rows()  # [g, Mg, D]
        pred = np.einsum("rgd,gmd->rgm", a, w).reshape(a.shape[0], -1) + (0 if layer.b is None else layer.b)
        np.testing.assert_allclose(pred, output_rows(layer, yout), rtol=1e-4, atol=1e-4)


def test_gram_streaming_equals_direct(rng):
    proto = convnet(rng, c=8, group2=2)
    layer = find_layers(load(proto))[0][1]
    xs = [rng.standard_normal((1, 8, 16, 16)) for _ in range(3)]
    ys = [rng.standard_normal((1, 8, 8, 8)) for _ in range(3)]  # a teacher output per sample
    current = {}
    g = GramStats(layer, lambda: current["y"])
    for x, y in zip(xs, ys):
        current["y"] = y
        g.update(x)
    a = np.concatenate([im2col(layer, x) for x in xs])  # all rows at once
    a = np.concatenate([a, np.ones(a.shape[:2] + (1,))], axis=2)
    y = np.concatenate([output_rows(layer, y) for y in ys]).reshape(a.shape[0], 2, -1)
    for gi in range(2):
        np.testing.assert_allclose(g.ata[gi], a[:, gi].T @ a[:, gi], rtol=1e-12)
        np.testing.assert_allclose(g.aty[gi], a[:, gi].T @ y[:, gi], rtol=1e-12)
    np.testing.assert_allclose(g.yty, (y.reshape(a.shape[0], -1) ** 2).sum(0), rtol=1e-12)
    assert g.count == a.shape[0] == 3 * 64


def test_masked_ridge_paths_agree(rng):
    d, m = 300, 40
    x = rng.standard_normal((2000, d)) @ (np.eye(d) + 0.1 * rng.standard_normal((d, d)))
    h = x.T @ x
    g = x.T @ rng.standard_normal((2000, m))
    w0 = rng.standard_normal((d, m))
    free = rng.random((d, m)) > 0.5
    lam = 1e-2 * np.mean(np.diag(h))
    cg = ridge_solve(h, g, w0, lam, free)  # > 8 patterns and d > 192: conjugate gradients
    exact = np.zeros((d, m))
    for j in range(m):
        idx = np.flatnonzero(free[:, j])
        a = h[np.ix_(idx, idx)] + lam * np.eye(idx.size)
        exact[idx, j] = np.linalg.solve(a, g[idx, j] + lam * w0[idx, j])
    assert np.all(cg[~free] == 0)
    np.testing.assert_allclose(cg, exact, rtol=1e-5, atol=1e-6)


def test_gptq_beats_round_to_nearest_on_correlated_inputs(rng):
    d, m = 96, 32
    z = rng.standard_normal((4000, 8))
    x = z @ rng.standard_normal((8, d)) + 0.05 * rng.standard_normal((4000, d))  # strongly correlated
    w = rng.standard_normal((d, m))
    scale = np.abs(w).max(0) / 7  # 4-bit-like grid makes the rounding error visible
    h = x.T @ x
    rtn = np.clip(np.rint(w / scale), -7, 7) * scale
    q, wq = gptq_round(h, w, scale, np.zeros(m), -7, 7, n_quant=d)
    np.testing.assert_allclose(wq, q * scale)
    assert np.abs(q).max() <= 7
    err_rtn = np.sum((x @ (w - rtn)) ** 2)
    err_gptq = np.sum((x @ (w - wq)) ** 2)
    assert err_gptq < 0.25 * err_rtn, (err_gptq, err_rtn)


# ------------------------------------------------------------------ the pass
@pytest.mark.parametrize("matmul", [False, True])
def test_distill_after_weight_pruning_lowers_error(rng, matmul):
    teacher = mlp(rng, matmul=matmul)
    calib, held = mlp_data(rng, 24), mlp_data(rng, 16)
    ctx = Context(calibration=calib, teacher=teacher)
    pruned, _ = run(teacher, ["prune-weights"], ctx, prune_weights={"method": "magnitude", "sparsity": 0.6})
    out, recs = run(pruned, ["distill"], ctx)
    ref = outputs(teacher, held)
    before, after = snr(ref, outputs(pruned, held)), snr(ref, outputs(out, held))
    s = stats_of(recs, "distill")
    print(f"held-out SNR: pruned {before:.2f} dB, distilled {after:.2f} dB; stats {s}")
    assert after > before + 6.0, (before, after)
    assert s["layers_refit"] == 2 and s["model_snr_db_after"] > s["model_snr_db_before"] + 6.0
    assert s["layer_snr_db_after:fc1"] > s["layer_snr_db_before:fc1"]
    # The sparsity mask is kept, and a second run changes nothing.
    for name, w in weights(pruned).items():
        np.testing.assert_array_equal(weights(out)[name] == 0, w == 0)
    assert [r.modified for r in recs] == [True]  # a lossy pass runs once in a pipeline
    model, p = load(pruned), make_pass("distill")
    assert p.run(model, ctx).modified and not p.run(model, ctx).modified


def test_distill_refits_consumers_of_removed_channels(rng):
    """prune-channels' contract: the consumer (fc2) reads only the kept hidden
    neurons; ctx.options["pruned_layers"] names it."""
    teacher = mlp(rng, k=32, h=64, n=8)
    w = {i.name: onnx.numpy_helper.to_array(i) for i in teacher.graph.initializer}
    keep = np.sort(np.argsort(-np.linalg.norm(w["w1"], axis=1))[:32])  # half of the neurons
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2"),
    ]
    student = make_model(nodes, [("x", ["B", 32])], ["y"],
                         [t(w["w1"][keep], "w1"), t(w["b1"][keep], "b1"), t(w["w2"][keep], "w2"), t(w["b2"], "b2")])
    calib, held = mlp_data(rng, 24, k=32), mlp_data(rng, 16, k=32)
    ctx = Context(calibration=calib, teacher=teacher, options={"pruned_layers": [("fc2", keep.tolist(), "w2")]})
    out, recs = run(student, ["distill"], ctx)
    ref = outputs(teacher, held)
    before, after = snr(ref, outputs(student, held)), snr(ref, outputs(out, held))
    print(f"channel-pruned MLP held-out SNR {before:.2f} -> {after:.2f} dB")
    assert after > before + 3.0
    s = stats_of(recs, "distill")
    assert s["layers_refit"] == 1 and "layer_snr_db_after:fc2" in s


def test_distill_conv_after_pruning(rng):
    teacher = convnet(rng, c=16, group2=1)
    mk = lambda n: [{"x": smooth_images(rng)} for _ in range(n)]
    calib, held = mk(16), mk(8)
    ctx = Context(calibration=calib, teacher=teacher)
    pruned, _ = run(teacher, ["prune-weights"], ctx, prune_weights={"method": "wanda", "sparsity": 0.5})
    out, recs = run(pruned, ["distill"], ctx)
    ref = outputs(teacher, held)
    before, after = snr(ref, outputs(pruned, held)), snr(ref, outputs(out, held))
    print(f"convnet held-out SNR {before:.2f} -> {after:.2f} dB")
    assert after > before + 3.0
    assert stats_of(recs, "distill")["layers_refit"] == 3
    for name, w in weights(pruned).items():
        np.testing.assert_array_equal(weights(out)[name] == 0, w == 0)


def test_distill_quantized_mlp_gptq(rng):
    teacher = mlp(rng, k=64, h=128)
    calib, held = mlp_data(rng, 32), mlp_data(rng, 16)
    ctx = Context(calibration=calib, teacher=teacher)
    q, _ = run(teacher, ["quantize-int8"], ctx)
    out, recs = run(q, ["distill"], ctx)
    s = stats_of(recs, "distill")
    ref = outputs(teacher, held)
    before, after = snr(ref, outputs(q, held)), snr(ref, outputs(out, held))
    print(f"int8 MLP held-out SNR {before:.2f} -> {after:.2f} dB; {s}")
    assert s["layers_gptq"] == 2
    assert after > before + 1.0
    # Still int8 kernels: same op list, int8 weights.
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in q.graph.node]
    ints = [i for i in out.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) == 2]
    assert len(ints) == 2


def test_distill_quantized_conv_bias_correction(rng):
    teacher = convnet(rng, c=16)
    mk = lambda n: [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(n)]
    calib = mk(16)
    ctx = Context(calibration=calib, teacher=teacher)
    q, _ = run(teacher, ["quantize-int8"], ctx)
    out, recs = run(q, ["distill"], ctx)
    s = stats_of(recs, "distill")
    assert s["layers_bias_corrected"] >= 2
    assert s["model_snr_db_after"] >= s["model_snr_db_before"]
    model, p = load(q), make_pass("distill")  # the same pass again on the same model changes nothing
    assert p.run(model, ctx).modified and not p.run(model, ctx).modified


def test_recipe_style_distill_twice(rng):
    """prune, distill, quantize-int8, distill: float refit first, then the
    quantized layers; the fixed point ends with nothing modified."""
    teacher = mlp(rng, k=64, h=128)
    calib, held = mlp_data(rng, 32), mlp_data(rng, 16)
    model = load(teacher)
    ctx = Context(calibration=calib, teacher=teacher)
    passes = [make_pass("prune-weights", method="magnitude", sparsity=0.5), make_pass("distill"),
              make_pass("quantize-int8"), make_pass("distill")]
    recs = PassManager(passes, strict=True).run(model, ctx)
    out = model.to_proto()
    d = [r for r in recs if r.name == "distill" and r.iteration == 1]
    assert d[0].stats["layers_refit"] == 2 and d[1].stats["layers_gptq"] == 2
    assert [r.name for r in recs] == ["prune-weights", "distill", "quantize-int8", "distill"]  # one sweep, each once
    assert not any(r.modified for r in PassManager(passes).run(model, ctx))  # a second run changes nothing
    assert snr(outputs(teacher, held), outputs(out, held)) > 20


def test_distill_needs_teacher_and_data(rng):
    teacher = mlp(rng)
    pruned, _ = run(teacher, ["prune-weights"], Context(), prune_weights={"method": "magnitude", "sparsity": 0.5})
    with pytest.raises(InputError, match="teacher"):
        run(pruned, ["distill"], Context(calibration=mlp_data(rng, 2)))
    with pytest.raises(InputError, match="calibration"):
        run(pruned, ["distill"], Context(teacher=teacher))
    # Nothing compressed: nothing to do, no data needed.
    out, recs = run(teacher, ["distill"], Context())
    assert not recs[0].modified


def test_mnist_recipe_half_the_neurons_int8_within_one_point():
    """edge-int8-pruned on the bundled MNIST MLP with 50% of the hidden neurons
    removed: int8 test accuracy within 1 point of fp32 (calibration: the first
    100 held-out digits; accuracy on the other 900)."""
    import onnxpress
    from onnxpress.demo import load_demo
    model, x, y = load_demo()
    calib = [{"input": x[i : i + 10]} for i in range(0, 100, 10)]
    result = onnxpress.optimize(model, recipe="edge-int8-pruned", calibration=calib, prune_channels={"ratio": 0.5})
    acc = lambda m: float((run_ort(m, {"input": x[100:]})[0].argmax(1) == y[100:]).mean())
    fp32, got = acc(model), acc(result.model)
    print(f"MNIST MLP: fp32 {fp32:.4f}, 50% neurons + distill + int8 {got:.4f}")
    assert result.after.macs <= 0.51 * result.before.macs
    assert got >= fp32 - 0.01, (fp32, got)
    ops = [n.op_type for n in result.model.graph.node]
    assert ops.count("QuantizeLinear") >= 2


# ------------------------------------------------------------------ ConvTranspose
def convtranspose_net(rng, c=8, group=1, k=3, stride=2, pads=(1, 0, 1, 1), output_padding=(1, 0), dilation=1):
    """x [1, 3, 9, 8] -> Conv 3x3 -> Relu -> ConvTranspose(c -> 6) -> y."""
    w1 = rng.standard_normal((c, 3, 3, 3)) / np.sqrt(27)
    w2 = rng.standard_normal((c, 6 // group, k, k)) / np.sqrt(c * k * k / group)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("ConvTranspose", ["r1", "w2", "b2"], ["y"], name="ct", group=group, strides=[stride] * 2,
                         pads=list(pads), output_padding=list(output_padding), dilations=[dilation] * 2),
    ]
    inits = [t(w1, "w1"), t(rng.standard_normal(c) * 0.1, "b1"), t(w2, "w2"), t(rng.standard_normal(6) * 0.1, "b2")]
    return make_model(nodes, [("x", [1, 3, 9, 8])], ["y"], inits)


CT_CASES = {
    "k2s2": {"k": 2, "stride": 2, "pads": (0, 0, 0, 0), "output_padding": (0, 0)},  # PP-OCR det's DB head
    "k3s2_pads_outpad": {"k": 3, "stride": 2, "pads": (1, 0, 1, 1), "output_padding": (1, 0)},
    "k3s1_dil2_group2": {"k": 3, "stride": 1, "pads": (2, 1, 0, 2), "output_padding": (0, 0), "dilation": 2, "group": 2},
    "k4s3_crop": {"k": 4, "stride": 3, "pads": (3, 1, 2, 0), "output_padding": (2, 1)},
}


@pytest.mark.parametrize("case", sorted(CT_CASES))
def test_im2col_reproduces_convtranspose(rng, case):
    from onnxpress.prune._layers import ALL_LINEAR_OPS

    proto = convtranspose_net(rng, **CT_CASES[case])
    layer = next(l for l in find_layers(load(proto), ALL_LINEAR_OPS)[0] if l.op == "ConvTranspose")
    assert find_layers(load(proto))[0][-1].op == "Conv"  # not by default: prune-weights leaves it alone
    x = rng.standard_normal((1, 8, 9, 8)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **{k: v for k, v in layer.node.attrs.items()})
    single = make_model([node], [("x", [1, 8, 9, 8])], ["y"], [t(layer.w, "w"), t(layer.b, "b")])
    y = run_ort(single, {"x": x})[0]
    a = im2col(layer, x)
    pred = np.einsum("rgd,gmd->rgm", a, layer.rows()).reshape(a.shape[0], -1) + layer.b
    np.testing.assert_allclose(pred, output_rows(layer, y), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(layer.from_rows(layer.rows()), layer.w)


@pytest.mark.parametrize("case", sorted(CT_CASES))
def test_distill_refits_convtranspose_exactly(rng, case):
    """The student is the teacher with the ConvTranspose's weight and bias
    perturbed: it can represent the teacher, so the refit brings its output back
    (differential in onnxruntime, graph optimizations disabled and enabled)."""
    teacher = convtranspose_net(rng, **CT_CASES[case])
    student = onnx.ModelProto()
    student.CopyFrom(teacher)
    for init in student.graph.initializer:
        if init.name in ("w2", "b2"):
            v = onnx.numpy_helper.to_array(init)
            init.CopyFrom(t(v + 0.3 * rng.standard_normal(v.shape), init.name))
    mk = lambda n: [{"x": rng.standard_normal((1, 3, 9, 8)).astype(np.float32)} for _ in range(n)]
    calib, held = mk(12), mk(4)
    ctx = Context(calibration=calib, teacher=teacher)
    out, recs = run(student, ["distill"], ctx, distill={"layers": ["ct"], "ridge": 1e-9, "holdout": 0})
    s = stats_of(recs, "distill")
    assert s["layers_refit"] == 1 and s["layer_snr_db_after:ct"] > 80, s
    for optimize in (False, True):
        ref = [run_ort(teacher, f, optimize)[0] for f in held]
        before = snr(ref, [run_ort(student, f, optimize)[0] for f in held])
        after = snr(ref, [run_ort(out, f, optimize)[0] for f in held])
        print(f"ConvTranspose {case} (ORT optimizations {optimize}): held-out SNR {before:.1f} -> {after:.1f} dB")
        assert before < 20 and after > 80, (before, after)
    w_out = {i.name: onnx.numpy_helper.to_array(i) for i in out.graph.initializer}
    ct = next(n for n in out.graph.node if n.name == "ct")
    np.testing.assert_allclose(w_out[ct.input[1]], onnx.numpy_helper.to_array(next(i for i in teacher.graph.initializer if i.name == "w2")), atol=1e-3)


def test_distill_refits_convtranspose_after_channel_pruning(rng):
    """prune-channels removes conv1's output channels; the ConvTranspose reading
    them is in ctx.options["pruned_layers"] and is refit (held-out error down)."""
    teacher = convtranspose_net(rng, c=16, **CT_CASES["k2s2"])
    mk = lambda n: [{"x": smooth_images(rng)[:, :, :9, :8].copy()} for _ in range(n)]
    calib, held = mk(16), mk(8)
    ctx = Context(calibration=calib, teacher=teacher)
    pruned, _ = run(teacher, ["prune-channels"], ctx, prune_channels={"ratio": 0.5})
    assert "ct" in {p[0] for p in ctx.options["pruned_layers"]}
    out, recs = run(pruned, ["distill"], ctx)
    s = stats_of(recs, "distill")
    ref = outputs(teacher, held)
    before, after = snr(ref, outputs(pruned, held)), snr(ref, outputs(out, held))
    print(f"ConvTranspose after 50% channel pruning: held-out SNR {before:.2f} -> {after:.2f} dB; {s}")
    assert "layer_snr_db_after:ct" in s and s["layer_snr_db_after:ct"] > s["layer_snr_db_before:ct"]
    assert after > before + 3.0


def test_progressive_pruning_composes_indices_and_refits_again(rng):
    """prune-channels, distill, prune-channels, distill in one pipeline: the
    second pruning runs (another pass instance), the indices it records are the
    original model's channels (a layer not refit keeps exactly the teacher's
    rows at those indices), and the second distill refits the layers the second
    pruning shrank again."""
    teacher = convnet(rng, c=16)
    mk = lambda n: [{"x": smooth_images(rng)} for _ in range(n)]
    calib, held = mk(16), mk(8)
    ctx = Context(calibration=calib, teacher=teacher)
    names = ["prune-channels", "distill", "prune-channels", "distill"]
    model = load(onnx.ModelProto.FromString(teacher.SerializeToString()))
    passes = [make_pass("prune-channels", ratio=0.25), make_pass("distill"),
              make_pass("prune-channels", ratio=0.25), make_pass("distill")]
    recs = PassManager(passes, strict=True).run(model, ctx)
    out = model.to_proto()
    onnx.checker.check_model(out, full_check=True)
    assert [r.name for r in recs] == names and all(r.modified for r in recs)
    assert weights(out)["conv1"].shape[0] == 9  # 16 -> 12 -> 9
    w_t, w_s = weights(teacher), weights(out)
    kept1 = ctx.options["pruned_channels"]["conv1"]
    assert kept1.shape == (9,) and len(set(kept1.tolist())) == 9 and kept1.max() < 16
    # conv1 reads the graph input: distill refits it toward the teacher's sliced output,
    # and the refit starts from (and here barely moves off) the teacher's rows.
    rows = w_t["conv1"][kept1]
    assert np.corrcoef(rows.ravel(), w_s["conv1"].ravel())[0, 1] > 0.9
    layers = {p.node: p for p in ctx.options["pruned_layers"]}
    assert set(layers) == {"conv2", "conv3"}
    assert np.array_equal(layers["conv2"].kept_inputs, kept1)  # composed, into the original 16
    second = recs[3].stats
    assert second["layers_refit"] >= 2  # conv2 and conv3 shrank again: refit again
    ref = outputs(teacher, held)
    plain = load(onnx.ModelProto.FromString(teacher.SerializeToString()))
    PassManager([make_pass("prune-channels", ratio=0.25), make_pass("prune-channels", ratio=0.25)]).run(plain, Context())
    assert weights(plain.to_proto())["conv1"].shape[0] == 9
    before, after = snr(ref, outputs(plain.to_proto(), held)), snr(ref, outputs(out, held))
    print(f"pruned twice held-out SNR {before:.2f} dB, with distill after each {after:.2f} dB")
    assert after > before + 3.0
