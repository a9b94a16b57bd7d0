"""factorize-lowrank: exact on low-rank weights (MatMul, Gemm with transB and
alpha), rank by energy or ratio, only when it saves parameters and MACs, never
twice, and distill after it lowers the output error."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxpress.graph import load, model_stats
from onnxpress.passes import Context, PassManager, make_pass
from onnxpress.prune.lowrank import choose_rank
from tests.conftest import assert_equivalent, run_ort
from tests.prune._models import make_model, mlp, snr, t
from tests.prune.test_distill import mlp_data


def run(proto, names, ctx=None, **options):
    model = load(onnx.ModelProto.FromString(proto.SerializeToString()))
    passes = [make_pass(n, **options.get(n.replace("-", "_"), {})) for n in names]
    records = PassManager(passes, strict=True).run(model, ctx or Context())
    out = model.to_proto()
    onnx.checker.check_model(out, full_check=True)
    return out, records


def low_rank(rng, k, n, r):
    return rng.standard_normal((k, r)) @ rng.standard_normal((r, n)) / np.sqrt(k)


@pytest.mark.parametrize("op", ["matmul", "gemm", "gemm_transB"])
def test_exact_on_low_rank_weights(rng, op):
    k, n, r = 128, 96, 8
    w = low_rank(rng, k, n, r)
    b = rng.standard_normal(n)
    if op == "matmul":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"), helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
        inits = [t(w, "w"), t(b, "b")]
    else:
        trans = op == "gemm_transB"
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=int(trans), alpha=0.5, beta=2.0)]
        inits = [t(w.T if trans else w, "w"), t(b, "b")]
    proto = make_model(nodes, [("x", ["B", k])], ["y"], inits)
    out, recs = run(proto, ["factorize-lowrank"], factorize_lowrank={"energy": 0.999999, "min_elements": 0})
    s = recs[0].stats
    assert s["layers_factorized"] == 1 and s["rank:fc"] == r
    assert s["params_after"] == r * (k + n) < s["params_before"] == k * n
    assert [rr.modified for rr in recs] == [True]
    _, again = run(out, ["factorize-lowrank"], factorize_lowrank={"energy": 0.999999, "min_elements": 0})
    assert [rr.modified for rr in again] == [False]  # factors are never factorized again
    feeds = [{"x": rng.standard_normal((4, k)).astype(np.float32)}]
    assert_equivalent(proto, out, feeds, rtol=1e-4, atol=1e-4)
    st_before, st_after = model_stats(load(proto)), model_stats(load(out))
    assert st_after.params < st_before.params and st_after.macs < st_before.macs


def test_rank_choice():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert choose_rank(s, 0.7, 0.5) == 1
    assert choose_rank(s, 0.9, 0.5) == 2
    assert choose_rank(s, 1.0, 0.5) == 4
    assert choose_rank(s, 0.0, 0.5) == 2
    assert choose_rank(s, 0.0, 0.1) == 1


def test_only_when_it_saves(rng):
    proto = mlp(rng, k=64, h=96)  # fc1 64x96, fc2 96x10
    out, recs = run(proto, ["factorize-lowrank"], factorize_lowrank={"ratio": 0.9, "min_elements": 0})
    assert recs[0].stats["layers_factorized"] == 0 and not recs[0].modified
    out, recs = run(proto, ["factorize-lowrank"], factorize_lowrank={"ratio": 0.25, "min_elements": 0})
    # fc1: rank 16 of [64, 96] saves; fc2 ([96, 10], rank 3): 3 * 106 = 318 <= 0.8 * 960 also saves.
    assert recs[0].stats["layers_factorized"] == 2
    out, recs = run(proto, ["factorize-lowrank"], factorize_lowrank={"ratio": 0.25})  # min_elements 16384
    assert recs[0].stats["layers_factorized"] == 0


def test_distill_after_factorization(rng):
    teacher = mlp(rng, k=64, h=128)
    calib, held = mlp_data(rng, 24), mlp_data(rng, 16)
    ctx = Context(calibration=calib, teacher=teacher)
    fact, _ = run(teacher, ["factorize-lowrank"], ctx, factorize_lowrank={"ratio": 0.125, "min_elements": 0})
    assert ctx.options["lowrank_layers"]
    out, recs = run(fact, ["distill"], ctx)
    ref = [run_ort(teacher, f)[0] for f in held]
    before = snr(ref, [run_ort(fact, f)[0] for f in held])
    after = snr(ref, [run_ort(out, f)[0] for f in held])
    print(f"low-rank MLP held-out SNR {before:.2f} -> {after:.2f} dB")
    assert after > before + 3.0
    s = next(r.stats for r in recs if r.name == "distill")
    assert s["layers_refit"] >= 1
