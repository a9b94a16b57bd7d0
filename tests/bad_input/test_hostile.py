"""Hostile input: every case gets a one-line error, exit code 2, nothing written,
and never hangs (each CLI run has a timeout)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxpress.demo import load_demo

TIMEOUT = 120


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "onnxpress", *args], capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd
    )


def _assert_refused(r, out, folder, before, message):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert sorted(os.listdir(folder)) == before


def _small() -> onnx.ModelProto:
    return onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x) => (float[N,4] y) <float[4] w = {1.,2.,3.,4.}> { a = Identity(x)  y = Mul(a, w) }''')


def _write(folder, name, proto=None, data: bytes | None = None):
    path = folder / name
    if data is not None:
        path.write_bytes(data)
    else:
        path.write_bytes(proto.SerializeToString())
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "file is empty"),
        ("random_bytes", "not an ONNX model"),
        ("truncated", "truncated"),
        ("opset_too_new", "supports opsets up to"),
        ("cycle", "cycle"),
        ("written_twice", "written twice"),
        ("missing_external", "not found next to the model"),
        ("outside_folder", "outside the model folder"),
    ],
)
def test_bad_models(tmp_path, case, message):
    model = _small()
    if case == "empty":
        src = _write(tmp_path, "m.onnx", data=b"")
    elif case == "random_bytes":
        src = _write(tmp_path, "m.onnx", data=np.random.default_rng(0).bytes(4096))
    elif case == "truncated":
        model, _, _ = load_demo()
        blob = model.SerializeToString()
        src = _write(tmp_path, "m.onnx", data=blob[: len(blob) * 2 // 3])
    elif case == "opset_too_new":
        model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
        src = _write(tmp_path, "m.onnx", model)
    elif case == "cycle":
        model = onnx.parser.parse_model('''
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) { a = Add(x, b)  b = Relu(a)  y = Neg(b) }''')
        src = _write(tmp_path, "m.onnx", model)
    elif case == "written_twice":
        model = onnx.parser.parse_model('''
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x) => (float[4] y) { a = Relu(x)  a = Neg(x)  y = Abs(a) }''')
        src = _write(tmp_path, "m.onnx", model)
    elif case in ("missing_external", "outside_folder"):
        t = model.graph.initializer[0]
        t.ClearField("float_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        location = "w.bin" if case == "missing_external" else "../../etc/passwd"
        t.external_data.add(key="location", value=location)
        src = _write(tmp_path, "m.onnx", model)
    out = tmp_path / "out.onnx"
    before = sorted(os.listdir(tmp_path))
    r = _cli("optimize", str(src), "-o", str(out))
    _assert_refused(r, out, tmp_path, before, message)


def test_external_path_outside_folder_is_never_read(tmp_path, monkeypatch):
    from onnxpress.errors import ExternalDataError
    from onnxpress.graph import load_proto

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    folder = tmp_path / "models"
    folder.mkdir()
    model = _small()
    t = model.graph.initializer[0]
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    t.external_data.add(key="location", value="../secret.bin")
    (folder / "m.onnx").write_bytes(model.SerializeToString())
    opened = []
    real_open = open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(ExternalDataError, match="outside the model folder"):
        load_proto(folder / "m.onnx")
    assert not any("secret" in f for f in opened)


@pytest.mark.parametrize(
    "case, message",
    [
        ("wrong_shape", "has shape"),
        ("wrong_dtype", "dtype"),
        ("nan", "NaN/Inf"),
        ("unknown_name", "no input 'nope'"),
    ],
)
def test_bad_calibration_data(tmp_path, case, message):
    model, x, _ = load_demo()
    src = _write(tmp_path, "m.onnx", model)
    calib = tmp_path / "calib"
    calib.mkdir()
    sample = x[:2].copy()
    feed = {"input": sample}
    if case == "wrong_shape":
        feed = {"input": sample[:, :100]}
    elif case == "wrong_dtype":
        feed = {"input": (sample * 255).astype(np.int32)}
    elif case == "nan":
        sample[0, 3] = np.nan
        feed = {"input": sample}
    elif case == "unknown_name":
        feed = {"nope": sample}
    np.savez(calib / "0.npz", **feed)
    out = tmp_path / "out.onnx"
    before = sorted(os.listdir(tmp_path))
    r = _cli("optimize", str(src), "-o", str(out), "--calib", str(calib))
    _assert_refused(r, out, tmp_path, before, message)


def test_custom_domain_node_is_left_untouched_and_the_rest_optimized(tmp_path):
    model = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[4] x) => (float[4] y) {
      a = Identity(x)
      b = com.example.Frobnicate <gain = 2.0> (a)
      c = Identity(b)
      y = Relu(c)
    }''')
    src = _write(tmp_path, "m.onnx", model)
    out = tmp_path / "out.onnx"
    r = _cli("optimize", str(src), "-o", str(out), "--no-check")
    assert r.returncode == 0, r.stderr
    result = onnx.load(out)
    assert [n.op_type for n in result.graph.node] == ["Frobnicate", "Relu"]
    assert result.graph.node[0].domain == "com.example"
    assert result.graph.node[0].attribute[0].f == 2.0
    assert {o.domain: o.version for o in result.opset_import}["com.example"] == 1
    # With the check, onnxruntime cannot run the original: say so, exit 2.
    r = _cli("optimize", str(src), "-o", str(tmp_path / "checked.onnx"))
    assert r.returncode == 2 and "original model cannot serve as reference" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
