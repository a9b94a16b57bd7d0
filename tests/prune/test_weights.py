"""prune-weights: exact sparsity per layer/row/global, exact N:M patterns, Wanda
scores against a direct computation, exclusions, idempotence, valid models in ORT,
and the gzip line of ``onnxpress inspect``."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxpress.errors import InputError
from onnxpress.graph import load
from onnxpress.passes import Context, PassManager, make_pass
from tests.conftest import run_ort
from tests.prune._models import convnet, mlp, weights


def prune(proto, ctx=None, **options):
    model = load(onnx.ModelProto.FromString(proto.SerializeToString()))
    ctx = ctx or Context()
    records = PassManager([make_pass("prune-weights", **options)], strict=True).run(model, ctx)
    out = model.to_proto()
    onnx.checker.check_model(out, full_check=True)
    return out, records


def feeds(rng, n=4, shape=(8, 64)):
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.75])
def test_magnitude_per_layer_exact(rng, sparsity):
    proto = mlp(rng)
    out, recs = prune(proto, method="magnitude", sparsity=sparsity)
    before, after = weights(proto), weights(out)
    for name, w in before.items():
        a = after[name]
        assert a.shape == w.shape  # zeros stored densely
        assert np.sum(a == 0) == int(np.floor(sparsity * w.size))
        # The zeros are the smallest magnitudes; kept weights are unchanged.
        kept = a != 0
        assert np.abs(w[~kept]).max() <= np.abs(w[kept]).min()
        np.testing.assert_array_equal(a[kept], w[kept])
    s = recs[0].stats
    assert s["layers_pruned"] == 2 and abs(s["sparsity"] - sparsity) < 0.01
    assert s["sparsity:fc1"] == pytest.approx(sparsity, abs=1e-3)
    # A second run at the same sparsity changes nothing.
    assert [r.modified for r in recs] == [True]
    _, again = prune(out, method="magnitude", sparsity=sparsity)
    assert [r.modified for r in again] == [False]
    run_ort(out, feeds(rng)[0])


def test_wanda_matches_direct_computation(rng):
    proto = mlp(rng, matmul=True)
    scale = np.linspace(0.05, 3.0, 64).astype(np.float32)  # very different input channel norms
    data = [{"x": rng.standard_normal((8, 64)).astype(np.float32) * scale} for _ in range(6)]
    out, recs = prune(proto, Context(calibration=data), method="wanda", sparsity=0.5)
    x = np.concatenate([d["x"] for d in data]).astype(np.float64)
    norm = np.sqrt((x**2).sum(0))
    w = weights(proto)["fc1"]  # MatMul [K, N]
    score = np.abs(w) * norm[:, None]
    expect = np.zeros_like(w, bool)
    for j in range(w.shape[1]):  # per output neuron (Wanda's comparison group)
        expect[np.argsort(score[:, j], kind="stable")[:32], j] = True
    np.testing.assert_array_equal(weights(out)["fc1"] == 0, expect)
    # Wanda prunes low-norm channels harder than magnitude does.
    low = np.mean(weights(out)["fc1"][:16] == 0)
    high = np.mean(weights(out)["fc1"][-16:] == 0)
    assert low > 0.8 and high < 0.3
    assert recs[0].stats["sparsity:fc1"] == 0.5


def test_wanda_error_lower_than_magnitude(rng):
    proto = mlp(rng, matmul=True)
    scale = np.exp(rng.uniform(-2, 2, 64)).astype(np.float32)
    data = [{"x": rng.standard_normal((16, 64)).astype(np.float32) * scale} for _ in range(8)]
    ev = [{"x": rng.standard_normal((16, 64)).astype(np.float32) * scale} for _ in range(8)]
    errs = {}
    for method in ("magnitude", "wanda"):
        out, _ = prune(proto, Context(calibration=data), method=method, sparsity=0.5)
        errs[method] = sum(float(np.sum((run_ort(proto, f)[0] - run_ort(out, f)[0]) ** 2)) for f in ev)
    assert errs["wanda"] < 0.7 * errs["magnitude"], errs


@pytest.mark.parametrize("layer", ["matmul", "gemm", "conv"])
def test_n_m_pattern_exact(rng, layer):
    if layer == "conv":
        proto = convnet(rng, c=8)
        feed = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    else:
        proto = mlp(rng, matmul=layer == "matmul")
        feed = feeds(rng)[0]
    out, recs = prune(proto, Context(calibration=[feed]), method="wanda", n_m="2:4")
    after = weights(out)
    checked = 0
    for name, w in weights(proto).items():
        a = after[name]
        if layer == "conv":
            if w.shape[1] % 4:  # conv1 has 3 input channels: left dense
                np.testing.assert_array_equal(a, w)
                assert recs[0].stats[f"excluded:{name}"] == 1
                continue
            groups = np.moveaxis(a, 1, -1).reshape(-1, 4)  # along input channels
        elif layer == "matmul" or name == "fc2":  # [K, N]: along K
            groups = a.T.reshape(-1, 4)
        else:  # Gemm transB=1 [N, K]
            groups = a.reshape(-1, 4)
        assert np.all(np.sum(groups == 0, axis=1) == 2), name
        checked += 1
    assert checked >= 2
    run_ort(out, feed)


def test_global_scope_and_overrides(rng):
    proto = mlp(rng)
    w = weights(proto)
    out, recs = prune(proto, method="magnitude", sparsity=0.6, scope="global")
    a = weights(out)
    total = sum(x.size for x in w.values())
    assert sum(int(np.sum(x == 0)) for x in a.values()) == int(np.floor(0.6 * total))
    thr = max(np.abs(w[n][a[n] == 0]).max() for n in w)
    assert all(np.abs(w[n][a[n] != 0]).min() >= thr for n in w)
    out, recs = prune(proto, method="magnitude", sparsity=0.5, layer_sparsity={"fc2": 0.2, "w1": 0.8})
    s = recs[0].stats
    assert s["sparsity:fc1"] == pytest.approx(0.8, abs=1e-3) and s["sparsity:fc2"] == pytest.approx(0.2, abs=1e-2)


def test_exclude_first_last(rng):
    proto = convnet(rng)
    out, recs = prune(proto, method="magnitude", sparsity=0.5, exclude_first=True, exclude_last=True)
    w, a = weights(proto), weights(out)
    np.testing.assert_array_equal(a["conv1"], w["conv1"])
    np.testing.assert_array_equal(a["conv3"], w["conv3"])
    assert np.mean(a["conv2"] == 0) == pytest.approx(0.5, abs=0.01)
    assert recs[0].stats["excluded:conv1"] == 1 and recs[0].stats["excluded:conv3"] == 1


def test_grouped_conv_wanda(rng):
    proto = convnet(rng, c=8, group2=4)
    feed = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    out, recs = prune(proto, Context(calibration=[feed]), method="wanda", sparsity=0.5)
    a = weights(out)["conv2"]  # [8, 2, 3, 3]: 18 weights per output row
    assert np.all(np.sum(a.reshape(8, -1) == 0, axis=1) == 9)
    ref, got = run_ort(proto, feed)[0], run_ort(out, feed)[0]
    assert ref.shape == got.shape


def test_errors(rng):
    proto = mlp(rng)
    with pytest.raises(InputError, match="calibration"):
        prune(proto, method="wanda")
    with pytest.raises(Exception, match="N:M|0 < N < M"):
        prune(proto, method="magnitude", n_m="4:2")


def test_inspect_prints_gzip_size(rng, tmp_path, capsys):
    from onnxpress.cli import main

    proto = mlp(rng, k=256, h=256)
    dense = tmp_path / "dense.onnx"
    onnx.save(proto, str(dense))
    out, _ = prune(proto, method="magnitude", sparsity=0.9)
    sparse = tmp_path / "sparse.onnx"
    onnx.save(out, str(sparse))
    sizes = {}
    for p in (dense, sparse):
        assert main(["inspect", str(p)]) == 0
        line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("compressed (gzip):"))
        sizes[p.name] = float(line.split(":")[1].split()[0])
    assert abs(dense.stat().st_size - sparse.stat().st_size) < 0.05 * dense.stat().st_size  # zeros stored densely
    assert sizes["sparse.onnx"] < 0.4 * sizes["dense.onnx"], sizes
