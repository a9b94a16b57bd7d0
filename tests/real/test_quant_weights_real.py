"""fp16 and int4 weight-only recipes on the real models, judged by their task.

* ``fp16`` on PP-OCRv4 rec (decoded strings) and magika (top-1 file type).
* ``int4-weights`` on magika (MatMul [257, 64] with a partial last block and
  [512, 214]) and ddddocr (its Gemm [8210, 1024], 34 MB of 54 MB). Silero VAD and
  PP-OCR det have no MatMul/Gemm weights; PP-OCR rec's nine MatMul weights
  (4.1 MB) are covered by the fp16 test and the benchmarks.

Each result must keep the model's interface (input/output names, dtypes, shapes on
real inputs) and agree with fp32 on >= 7 of 8 real inputs.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxpress
from onnxpress.runtime_check import make_session
from onnxpress.testing import realmodels as rm

pytestmark = pytest.mark.real


def _interface(m: onnx.ModelProto):
    return [(v.name, v.type.tensor_type.elem_type) for v in list(m.graph.input) + list(m.graph.output)]


def _agreement(name: str, path, original: onnx.ModelProto, candidate: onnx.ModelProto) -> int:
    a, b = make_session(original), make_session(candidate, "enabled")
    if name in ("ppocr_rec", "ddddocr"):
        feeds, _ = rm.real_inputs_with_labels(name, n=8, seed=1)
        decode = rm.ctc_decode_ppocr if name == "ppocr_rec" else rm.ctc_decode_ddddocr
    else:
        feeds, decode = rm.real_inputs(name, n=8, seed=1), None
    same = 0
    for feed in feeds:
        ra, rb = a.run(None, feed)[0], b.run(None, feed)[0]
        assert ra.shape == rb.shape and ra.dtype == rb.dtype
        assert np.isfinite(rb).all()
        if decode is not None:
            same += decode(path, ra) == decode(path, rb)
        else:
            same += int(np.array_equal(ra.argmax(-1), rb.argmax(-1)))
    return same


@pytest.mark.parametrize("name", ["ppocr_rec", "magika"])
def test_fp16_halves_the_weights_and_keeps_the_task(name):
    path = rm.fetch(name)
    original = onnx.load(str(path))
    result = onnxpress.optimize(str(path), recipe="fp16", strict=True)
    assert _interface(result.model) == _interface(original)
    stats = result.pass_totals()["convert-fp16"]
    assert stats["weight_bytes_after"] * 2 == stats["weight_bytes_before"]
    assert stats["weight_rel_fro_error"] < 1e-3
    assert result.model.ByteSize() < 0.52 * original.ByteSize()
    inits = result.model.graph.initializer
    floats = [i for i in inits if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)]
    big = [i for i in floats if np.prod(i.dims) >= 256]
    assert big and all(i.data_type == onnx.TensorProto.FLOAT16 for i in big), [
        i.name for i in big if i.data_type != onnx.TensorProto.FLOAT16
    ]
    assert _agreement(name, path, original, result.model) >= 7


@pytest.mark.parametrize(
    "name, fmt, layers, max_ratio",
    [
        ("magika", "matmulnbits", 2, 0.9),
        ("magika", "qdq", 2, 0.9),
        ("ddddocr", "matmulnbits", 1, 0.5),
    ],
)
def test_int4_weights_keep_the_task(name, fmt, layers, max_ratio):
    path = rm.fetch(name)
    original = onnx.load(str(path))
    result = onnxpress.optimize(
        str(path), recipe="int4-weights", strict=True, quantize_int4_weights={"format": fmt}
    )
    assert _interface(result.model) == _interface(original)
    stats = result.pass_totals()["quantize-int4-weights"]
    assert stats["layers_quantized"] == layers
    assert stats["weight_bytes_after"] < stats["weight_bytes_before"] / 6
    assert 0.05 < stats["weight_rel_fro_error"] < 0.15
    ops = {n.op_type for n in result.model.graph.node}
    if fmt == "matmulnbits":
        assert "MatMulNBits" in ops
    else:
        assert "DequantizeLinear" in ops
        assert {o.domain: o.version for o in result.model.opset_import}[""] == 21
    assert result.model.ByteSize() < max_ratio * original.ByteSize()
    assert _agreement(name, path, original, result.model) >= 7
