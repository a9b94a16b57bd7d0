"""Shared test helpers: differential checks in onnxruntime with optimizations off and on."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, settings

from onnxpress.graph import Model, load
from onnxpress.passes import Context, PassManager, make_pass


# Hypothesis profiles (the fuzz tests in tests/fuzz): "ci", loaded by default, runs
# 50 derandomized examples per test (the same on every run, no example database);
# "long" runs 2000 random ones: python -m pytest --hypothesis-profile=long tests/fuzz
_HYPOTHESIS = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)
settings.register_profile("ci", max_examples=50, derandomize=True, database=None, **_HYPOTHESIS)
settings.register_profile("long", max_examples=2000, **_HYPOTHESIS)
settings.load_profile("ci")


def pytest_configure(config) -> None:
    # An explicit --hypothesis-profile wins over the "ci" default loaded above.
    try:
        profile = config.getoption("hypothesis_profile")
    except ValueError:
        profile = None
    if profile:
        settings.load_profile(profile)


def run_ort(model: onnx.ModelProto | Model, feeds: dict, optimize: bool = False) -> list[np.ndarray]:
    """Run ``model`` on the CPU EP; ``optimize=False`` disables every ORT graph rewrite."""
    proto = model.to_proto() if isinstance(model, Model) else model
    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_equivalent(before, after, feeds_list, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """Outputs of ``after`` equal those of ``before`` (values and shapes), ORT opts off and on."""
    if isinstance(feeds_list, dict):
        feeds_list = [feeds_list]
    for feeds in feeds_list:
        for optimize in (False, True):
            ref = run_ort(before, feeds, optimize)
            got = run_ort(after, feeds, optimize)
            assert len(ref) == len(got)
            for r, g in zip(ref, got):
                assert r.shape == g.shape, (r.shape, g.shape)
                assert r.dtype == g.dtype
                np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)


def apply(proto: onnx.ModelProto, *names: str, strict: bool = True, **options):
    """Run passes ``names`` (with ``options`` for a single pass) to a fixed point.

    Returns:
        (exported ModelProto, list of PassRecord)
    """
    model = load(onnx.ModelProto.FromString(proto.SerializeToString()))
    passes = [make_pass(n, **(options if len(names) == 1 else {})) for n in names]
    records = PassManager(passes, strict=strict).run(model, Context())
    out = model.to_proto()
    onnx.checker.check_model(out, full_check=True)
    return out, records


def run_once(proto: onnx.ModelProto, name: str, **options):
    """Run one pass once; return (exported proto, PassResult, Model)."""
    model = load(onnx.ModelProto.FromString(proto.SerializeToString()))
    result = make_pass(name, **options).run(model, Context())
    return model.to_proto(), result, model


def with_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its graph outputs' shapes filled in by ONNX shape inference,
    checked with ``full_check`` (for hand-built graphs declared without output shapes)."""
    inferred = {o.name: o for o in onnx.shape_inference.infer_shapes(model).graph.output}
    for i, o in enumerate(model.graph.output):
        model.graph.output[i].CopyFrom(inferred[o.name])
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
