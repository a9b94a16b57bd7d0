"""Differential fuzzing of every lossless pass, alone and as the ``lossless`` recipe.

For each random model (:func:`tests.fuzz.strategies.onnx_models`) the rewritten
model must pass ``onnx.checker`` (full check), load in onnxruntime, keep its
input/output names, element types and ranks, and give the original's outputs
(rtol 1e-4, atol 1e-5, same shapes and dtypes; graph optimizations disabled) at
two sizes of every dynamic dimension; running the pass (for the recipe: every
pass) again, on the same model and on the exported one reloaded, must report
``modified=False``. See :mod:`tests.fuzz.checks`.
"""
from __future__ import annotations

import pytest
from hypothesis import event, given

from onnxpress.passes import registered_passes
from tests.fuzz.checks import check_lossless_pass, check_lossless_recipe
from tests.fuzz.strategies import FuzzModel, onnx_models

LOSSLESS = sorted(name for name, cls in registered_passes().items() if cls.lossless)


def test_lossless_passes_are_discovered() -> None:
    assert {"fold-constants", "remove-noops", "fold-batchnorm"} <= set(LOSSLESS)


@pytest.mark.parametrize("name", LOSSLESS)
@given(fm=onnx_models())
def test_lossless_pass(name: str, fm: FuzzModel) -> None:
    result = check_lossless_pass(fm, name)
    event(f"{name}: modified={result.modified}")


@given(fm=onnx_models())
def test_lossless_recipe(fm: FuzzModel) -> None:
    records = check_lossless_recipe(fm)
    event(f"lossless recipe: {max(r.iteration for r in records)} iterations")
