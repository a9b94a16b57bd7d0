"""Checks shared by the fuzz tests: validity, signature, differential runs in
onnxruntime with graph optimizations disabled."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import assume, currently_in_test_context

from onnxpress.graph import Model, load
from onnxpress.passes import Context, PassManager, make_pass
from onnxpress.recipes import load_recipe

__all__ = [
    "RTOL",
    "ATOL",
    "copy_model",
    "check_valid",
    "signature",
    "run_sizes",
    "reference",
    "assert_outputs_match",
    "assert_same_kinds",
    "check_lossless_pass",
    "check_lossless_recipe",
]

RTOL, ATOL = 1e-4, 1e-5
MAX_MAGNITUDE = 1e4  # larger reference outputs are rejected (the generator keeps values moderate)


def copy_model(proto: onnx.ModelProto) -> Model:
    """A fresh working model of ``proto`` (which stays untouched)."""
    return load(onnx.ModelProto.FromString(proto.SerializeToString()))


def session(proto: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def check_valid(proto: onnx.ModelProto, what: str) -> ort.InferenceSession:
    """``onnx.checker`` full check and an onnxruntime load; returns the session."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise AssertionError(f"{what}: model fails onnx.checker(full_check=True): {exc}") from exc
    try:
        return session(proto)
    except Exception as exc:
        raise AssertionError(f"{what}: onnxruntime cannot load the model: {exc}") from exc


def _rank(vi: onnx.ValueInfoProto) -> int | None:
    tt = vi.type.tensor_type
    return len(tt.shape.dim) if tt.HasField("shape") else None


def signature(proto: onnx.ModelProto) -> tuple:
    """(name, element type, rank) of every graph input and output, in order."""
    g = proto.graph
    return (
        tuple((vi.name, vi.type.tensor_type.elem_type, _rank(vi)) for vi in g.input),
        tuple((vi.name, vi.type.tensor_type.elem_type, _rank(vi)) for vi in g.output),
    )


def run_sizes(sess: ort.InferenceSession, feeds_list) -> list[list[np.ndarray]]:
    return [sess.run(None, feeds) for feeds in feeds_list]


def reference(fm, what: str = "generated model") -> list[list[np.ndarray]]:
    """Validate the generated model and run it at every size. A generated model
    that fails here is a bug of the strategy; non-finite or huge outputs are
    rejected (``assume``)."""
    sess = check_valid(fm.proto, what)
    outs = run_sizes(sess, fm.feeds)
    for per_size in outs:
        for o in per_size:
            if o.dtype.kind == "f":
                ok = bool(np.all(np.isfinite(o))) and (o.size == 0 or float(np.abs(o).max()) < MAX_MAGNITUDE)
                if currently_in_test_context():
                    assume(ok)
                else:
                    assert ok, f"{what}: non-finite or huge outputs"
    return outs


def assert_same_kinds(ref, got, what: str) -> None:
    """Same number of outputs, shapes and dtypes at every size."""
    for k, (r_list, g_list) in enumerate(zip(ref, got)):
        assert len(r_list) == len(g_list), f"{what}: {len(g_list)} outputs, expected {len(r_list)}"
        for i, (r, g) in enumerate(zip(r_list, g_list)):
            assert r.shape == g.shape, f"{what}: size {k} output {i}: shape {g.shape}, expected {r.shape}"
            assert r.dtype == g.dtype, f"{what}: size {k} output {i}: dtype {g.dtype}, expected {r.dtype}"


def assert_outputs_match(ref, got, what: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    assert_same_kinds(ref, got, what)
    for k, (r_list, g_list) in enumerate(zip(ref, got)):
        for i, (r, g) in enumerate(zip(r_list, g_list)):
            np.testing.assert_allclose(
                g, r, rtol=rtol, atol=atol, err_msg=f"{what}: size {k} output {i} differs"
            )


def check_rewrite(fm, out: onnx.ModelProto, what: str, rtol: float = RTOL, atol: float = ATOL) -> None:
    """``out`` is valid, keeps ``fm``'s signature and computes its outputs."""
    ref = reference(fm)
    sess = check_valid(out, what)
    assert signature(out) == signature(fm.proto), f"{what}: the input/output signature changed"
    assert_outputs_match(ref, run_sizes(sess, fm.feeds), what, rtol, atol)


def check_lossless_pass(fm, name: str, **options):
    """Run pass ``name`` once on ``fm``; check the rewrite, and that a second run,
    on the same model and on the exported one reloaded, modifies nothing.

    Returns:
        The PassResult of the first run.
    """
    model = copy_model(fm.proto)
    result = make_pass(name, **options).run(model, Context())
    out = model.to_proto()
    check_rewrite(fm, out, name)
    again = make_pass(name, **options).run(model, Context())
    assert not again.modified, f"{name}: a second run modified the model again: {again.stats}"
    reloaded = make_pass(name, **options).run(copy_model(out), Context())
    assert not reloaded.modified, f"{name}: a run on the exported model modified it again: {reloaded.stats}"
    return result


def _recipe_passes(recipe):
    return [make_pass(name, **options) for name, options in recipe.passes]


def check_lossless_recipe(fm, recipe_name: str = "lossless"):
    """Run the recipe's passes to a fixed point (strict: validated after every
    modifying pass); check the rewrite, and that one more round of every pass, on
    the same model and on the exported one reloaded, modifies nothing.

    Returns:
        The PassRecords of the run.
    """
    recipe = load_recipe(recipe_name)
    model = copy_model(fm.proto)
    records = PassManager(
        _recipe_passes(recipe), max_iterations=recipe.max_iterations, fixed_point=recipe.fixed_point, strict=True
    ).run(model, Context())
    out = model.to_proto()
    check_rewrite(fm, out, f"{recipe_name} recipe", recipe.rtol, recipe.atol)
    for what, target in (("the model", model), ("the exported model", copy_model(out))):
        second = PassManager(_recipe_passes(recipe), max_iterations=1).run(target, Context())
        changed = [(r.name, r.stats) for r in second if r.modified]
        assert not changed, f"{recipe_name} recipe: {what} is not at a fixed point: {changed}"
    return records
