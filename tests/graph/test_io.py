"""graph.io: loading (external data, bad files) and atomic saving."""
from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from onnxpress.errors import ExternalDataError, ModelLoadError
from onnxpress.graph import Model, load, load_proto, save, save_proto

from ..conftest import run_ort

TEXT = '''
<ir_version: 8, opset_import: ["" : 17, "ai.onnx.ml" : 3]>
g (float[N,64] x) => (float[N,64] y) <float[64,64] w = %s> {
  y = MatMul(x, w)
}'''


def _model(rng) -> onnx.ModelProto:
    w = rng.standard_normal((64, 64)).astype(np.float32)
    m = onnx.parser.parse_model(TEXT % "{0.0}".replace("{0.0}", "{" + ",".join(["0.0"] * 4096) + "}"))
    m.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "w"))
    m.metadata_props.add(key="character", value="a\nb\nc")
    m.doc_string = "doc"
    m.model_version = 7
    return m


def test_roundtrip_keeps_metadata_opsets_and_values(rng, tmp_path):
    m = _model(rng)
    model = load(m)
    out = model.to_proto()
    assert {o.domain: o.version for o in out.opset_import} == {"": 17, "ai.onnx.ml": 3}
    assert {p.key: p.value for p in out.metadata_props} == {"character": "a\nb\nc"}
    assert (out.doc_string, out.model_version, out.ir_version) == ("doc", 7, 8)
    x = {"x": rng.standard_normal((3, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(out, x)[0], run_ort(m, x)[0])


def test_external_data_save_and_load(rng, tmp_path):
    m = _model(rng)
    path = tmp_path / "m.onnx"
    save(load(m), path, external_data=True)
    assert (tmp_path / "m.onnx.data").stat().st_size == 64 * 64 * 4
    assert path.stat().st_size < 2000
    back = load_proto(path)
    x = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(back, x)[0], run_ort(m, x)[0])
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]  # no temp files left


def test_missing_and_truncated_external_data(rng, tmp_path):
    m = _model(rng)
    path = tmp_path / "m.onnx"
    save_proto(m, path, external_data=True)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ExternalDataError, match="truncated"):
        load_proto(path)
    data.unlink()
    with pytest.raises(ExternalDataError, match="not found"):
        load_proto(path)


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"this is not onnx at all", "not an ONNX model"), (None, "truncated")],
)
def test_bad_files(rng, tmp_path, content, message):
    path = tmp_path / "bad.onnx"
    if content is None:
        content = _model(rng).SerializeToString()[:-3000]
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_proto(path)
    with pytest.raises(ModelLoadError, match="no such model"):
        load_proto(tmp_path / "missing.onnx")


def test_atomic_save_leaves_nothing_on_failure(rng, tmp_path, monkeypatch):
    m = _model(rng)
    path = tmp_path / "out.onnx"
    path.write_bytes(b"previous content")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", boom)
    with pytest.raises(OSError):
        save_proto(m, path)
    assert path.read_bytes() == b"previous content"
    assert os.listdir(tmp_path) == ["out.onnx"]


def test_initializer_inputs_keep_signature_and_order():
    m = onnx.parser.parse_model('''
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[4] a, float[4] w, float[4] b) => (float[4] y) <float[4] w = {1.,2.,3.,4.}, float[2] unused = {0., 0.}> {
      s = Add(a, b)
      y = Mul(s, w)
    }''')
    model = Model.from_proto(m)
    assert model.overridable == {"w"}
    assert [t.name for t in model.orphan_initializers] == ["unused"]
    out = model.to_proto()
    assert [i.name for i in out.graph.input] == ["a", "w", "b"]
    assert sorted(t.name for t in out.graph.initializer) == ["unused", "w"]
