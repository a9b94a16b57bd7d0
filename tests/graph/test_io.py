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


FUNC_MODEL = '''
<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
g (float[N,4] x, bool c) => (float[N,4] y) <float[4] w = {1.,2.,3.,4.}> {
  h = local.ScaleAdd(x, w)
  y = If(c) <then_branch = t () => (float[N,4] o) { o = Relu(h) }, else_branch = e () => (float[N,4] o2) { o2 = Neg(h) }>
}
<domain: "local", opset_import: ["" : 17]>
ScaleAdd (a, b) => (r) {
  m = Mul(a, b)
  r = Add(m, b)
}'''


def _func_model() -> onnx.ModelProto:
    m = onnx.parser.parse_model(FUNC_MODEL)
    vi = m.graph.value_info.add()
    vi.CopyFrom(onnx.helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT, ["N", 4]))
    m.metadata_props.add(key="k", value="v")
    return m


def test_functions_value_info_and_subgraphs_survive(rng):
    m = _func_model()
    out = load(m).to_proto()
    assert [f.name for f in out.functions] == ["ScaleAdd"]
    assert [v.name for v in out.graph.value_info] == ["h"]
    onnx.checker.check_model(out, full_check=True)
    for c in (True, False):
        feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32), "c": np.array(c)}
        np.testing.assert_array_equal(run_ort(out, feeds)[0], run_ort(m, feeds)[0])


@pytest.mark.parametrize("external", [False, True])
def test_streamed_save_and_load_equal_plain(rng, tmp_path, monkeypatch, external):
    import onnxpress.graph.io as gio

    m = _model(rng)
    path = tmp_path / "m.onnx"
    save(load(m), path, external_data=external)  # streams the initializers
    plain = onnx.load(str(path))
    monkeypatch.setattr(gio, "STREAM_THRESHOLD", 0)  # parse field by field
    streamed = load_proto(path)
    if not external:
        assert streamed.SerializeToString() == plain.SerializeToString()
    x = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    np.testing.assert_array_equal(run_ort(streamed, x)[0], run_ort(m, x)[0])
    assert {p.key for p in streamed.metadata_props} == {"character"}
    if external:
        assert streamed.graph.initializer[0].data_location == onnx.TensorProto.DEFAULT  # loaded
        assert (tmp_path / "m.onnx.data").stat().st_size >= 64 * 64 * 4


def test_streamed_load_detects_truncation(rng, tmp_path, monkeypatch):
    import onnxpress.graph.io as gio

    monkeypatch.setattr(gio, "STREAM_THRESHOLD", 0)
    m = _func_model()
    path = tmp_path / "f.onnx"
    save(load(m), path)
    data = path.read_bytes()
    assert load_proto(path).functions[0].name == "ScaleAdd"
    for cut in (len(data) // 3, len(data) - 5):
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="truncated|not an ONNX"):
            load_proto(path)
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError):
        load_proto(path)
