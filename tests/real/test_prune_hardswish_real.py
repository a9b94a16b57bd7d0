"""edge-int8-pruned's prune-channels with and without fuse-hardswish, on PP-OCRv4 det/rec.

PP-OCRv4's PP-LCNetV3 backbone writes HardSwish as ``x * Clip(x + 3, 0, 6) / 6``
(24 patterns in det, 28 in rec); at its opset 12, fuse-hardswish rewrites each as
``Mul(x, HardSigmoid(x))``. The recipe's passes up to prune-channels run as the
recipe runs them (the lossless passes to their fixed point, then prune-channels with
its default options: ratio 0.3, L1),
once with and once without fuse-hardswish: the dependency groups, the groups
pruned and skipped with their reasons, the channels kept and the MACs after must
be the same, and the two pruned models must compute the same on a real input.
No calibration: about 2 s per model.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxpress.graph import load
from onnxpress.passes import Context, PassManager, make_pass
from onnxpress.recipes import load_recipe
from onnxpress.runtime_check import make_session
from onnxpress.testing import realmodels as rm

pytestmark = pytest.mark.real

RECIPE = "edge-int8-pruned"
# Measured (with and without the fusion alike): patterns fused, (groups, pruned, skipped).
# rec: 27 / 24 / 3 as after the lossless recipe (test_prune_channels_real.py). Before
# the pass manager ran in stages, prune-channels ran in the first sweep, before the
# run-time Shape arithmetic was folded away, and got 25 / 18 / 7.
EXPECTED = {"ppocr_det": (24, (37, 36, 1)), "ppocr_rec": (28, (27, 24, 3))}


def _prune(name: str, fuse: bool):
    recipe = load_recipe(RECIPE)
    names = [n for n, _ in recipe.passes]
    head = recipe.passes[: names.index("prune-channels") + 1]
    model = load(onnx.load(str(rm.fetch(name))))
    ctx = Context()
    passes = [make_pass(n, **o) for n, o in head if fuse or n != "fuse-hardswish"]
    records = PassManager(passes, recipe.max_iterations, recipe.fixed_point).run(model, ctx)
    stats = next(r.stats for r in records if r.name == "prune-channels" and r.modified)
    fused = sum(r.stats.get("patterns_fused", 0) for r in records if r.name == "fuse-hardswish")
    return stats, fused, ctx.options, model.to_proto()


def test_recipe_runs_the_lossless_passes_before_pruning():
    recipe = load_recipe(RECIPE).passes
    head = recipe[: [n for n, _ in recipe].index("prune-channels")]
    assert head == load_recipe("lossless").passes  # fuse-hardswish included, at the same place


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fused_hardswish_loses_no_group(name):
    (s1, fused, o1, m1), (s0, none, o0, m0) = _prune(name, True), _prune(name, False)
    print(
        f"{name}: {fused} HardSwish fused; groups {s1['groups']} pruned {s1['groups_pruned']} skipped "
        f"{s1['groups_skipped']}, channels removed {s1['channels_removed']}, MACs {s1['macs_before']} -> "
        f"{s1['macs_after']} (without the fusion: {s0['groups']} / {s0['groups_pruned']} / {s0['groups_skipped']}, "
        f"{s0['channels_removed']}, {s0['macs_before']} -> {s0['macs_after']})"
    )
    patterns, counts = EXPECTED[name]
    assert (fused, none) == (patterns, 0)
    ops = [n.op_type for n in m1.graph.node]
    assert "Clip" not in ops and ops.count("HardSigmoid") >= patterns
    assert (s1["groups"], s1["groups_pruned"], s1["groups_skipped"]) == counts
    # Everything but the parameter count (the fusion drops the 3, 0, 6, 1/6 scalars).
    same = lambda s: {k: v for k, v in s.items() if not k.startswith("params_")}
    assert same(s1) == same(s0)
    assert o1["prune_report"] == o0["prune_report"]
    assert not any(w in why for _, why in o1["prune_report"] for w in ("HardSigmoid", "HardSwish", "hardswish"))
    k1, k0 = o1["pruned_channels"], o0["pruned_channels"]
    assert k1.keys() == k0.keys() and all(np.array_equal(k1[k], k0[k]) for k in k1)
    feed = rm.real_inputs(name, n=1, seed=7)[0]
    a, b = make_session(m1, "disabled").run(None, feed), make_session(m0, "disabled").run(None, feed)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4)
