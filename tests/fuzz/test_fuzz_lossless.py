"""Differential fuzzing of every lossless pass, alone and as the ``lossless`` recipe.

For each random model (:func:`tests.fuzz.strategies.onnx_models`) the rewritten
model must pass ``onnx.checker`` (full check), load in onnxruntime, keep its
input/output names, element types and ranks, and give the original's outputs
(rtol 1e-4, atol 1e-5, same shapes and dtypes; graph optimizations disabled) at
two sizes of every dynamic dimension; running the pass again, on the same model
and on the exported one reloaded, must report ``modified=False``.
"""
from __future__ import annotations

import pytest
from hypothesis import event, given

from onnxpress.passes import Context, PassManager, make_pass, registered_passes
from onnxpress.recipes import load_recipe
from tests.fuzz.checks import (
    assert_outputs_match,
    check_valid,
    copy_model,
    reference,
    run_sizes,
    signature,
)
from tests.fuzz.strategies import FuzzModel, onnx_models

LOSSLESS = sorted(name for name, cls in registered_passes().items() if cls.lossless)


def test_lossless_passes_are_discovered() -> None:
    assert {"fold-constants", "remove-noops", "fold-batchnorm"} <= set(LOSSLESS)


def check_rewrite(fm: FuzzModel, out, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    ref = reference(fm)
    sess = check_valid(out, what)
    assert signature(out) == signature(fm.proto), f"{what}: the input/output signature changed"
    assert_outputs_match(ref, run_sizes(sess, fm.feeds), what, rtol, atol)


@pytest.mark.parametrize("name", LOSSLESS)
@given(fm=onnx_models())
def test_lossless_pass(name: str, fm: FuzzModel) -> None:
    model = copy_model(fm.proto)
    result = make_pass(name).run(model, Context())
    event(f"{name}: modified={result.modified}")
    out = model.to_proto()
    check_rewrite(fm, out, name)
    again = make_pass(name).run(model, Context())
    assert not again.modified, f"{name}: a second run modified the model again: {again.stats}"
    reloaded = make_pass(name).run(copy_model(out), Context())
    assert not reloaded.modified, f"{name}: a run on the exported model modified it again: {reloaded.stats}"


def _recipe_passes():
    recipe = load_recipe("lossless")
    return recipe, [make_pass(name, **options) for name, options in recipe.passes]


@given(fm=onnx_models())
def test_lossless_recipe(fm: FuzzModel) -> None:
    recipe, passes = _recipe_passes()
    model = copy_model(fm.proto)
    records = PassManager(
        passes, max_iterations=recipe.max_iterations, fixed_point=recipe.fixed_point, strict=True
    ).run(model, Context())
    event(f"lossless recipe: {max(r.iteration for r in records)} iterations")
    out = model.to_proto()
    check_rewrite(fm, out, "lossless recipe", recipe.rtol, recipe.atol)
    _, passes = _recipe_passes()
    second = PassManager(passes, max_iterations=1).run(model, Context())
    changed = [(r.name, r.stats) for r in second if r.modified]
    assert not changed, f"lossless recipe is not at a fixed point: {changed}"
    _, passes = _recipe_passes()
    second = PassManager(passes, max_iterations=1).run(copy_model(out), Context())
    changed = [(r.name, r.stats) for r in second if r.modified]
    assert not changed, f"lossless recipe: the exported model is not at a fixed point: {changed}"
