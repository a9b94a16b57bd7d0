"""Lazy external data: a model's weights stay on disk from load to save.

``load(path)`` leaves external tensors as stubs with ``basepath``; the passes read
them one at a time (:class:`ExternalValues`), onnxruntime gets a small model file
beside the data (``make_session``), ``capture`` never loads them and ``save``
copies them a chunk at a time. The last test runs ``onnxpress optimize`` in a
subprocess on a ~100 MB model, as ``benchmarks/big.py`` does on 2.5 GB, and bounds
its peak RSS.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpress.calibration import MinMax, capture
from onnxpress.errors import ExternalDataError
from onnxpress.graph import constant_array, load, load_proto, save, save_proto
from onnxpress.graph import io as gio
from onnxpress.graph.model import (
    BASEPATH,
    ExternalValues,
    is_lazy_external,
    iter_tensor_protos,
)
from onnxpress.runtime_check import make_session

from ..conftest import run_ort

HIDDEN = 256
ROOT = Path(__file__).resolve().parents[2]


def _mlp(path: Path, layers: int = 4, hidden: int = HIDDEN, seed: int = 0) -> onnx.ModelProto:
    """MatMul+Add+Relu layers (one Transpose of a weight, foldable) with external
    data in ``path.data``; returns the in-memory original."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
        b = rng.standard_normal(hidden).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        wname = f"w{i}"
        if i == 0:  # a Transpose of a weight: fold-constants computes it
            nodes.append(helper.make_node("Transpose", ["w0"], ["w0t"], perm=[1, 0]))
            wname = "w0t"
        nodes += [
            helper.make_node("MatMul", [x, wname], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", hidden])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_proto(model, path, external_data=True)
    return model


def _feeds(n: int = 3, hidden: int = HIDDEN, seed: int = 1) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((n, hidden)).astype(np.float32)}


def _ort_path(path: Path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _stubs(model) -> list[onnx.TensorProto]:
    return [
        c._values.tensor
        for c in model.graph.tensors().values()
        if isinstance(c, gs.Constant) and isinstance(c._values, ExternalValues)
    ]


@pytest.fixture
def mlp(tmp_path):
    path = tmp_path / "m.onnx"
    return path, _mlp(path)


# ------------------------------------------------------------------ load
def test_load_leaves_external_data_on_disk(tmp_path):
    path = tmp_path / "big.onnx"
    _mlp(path, layers=10, hidden=1024)  # 40 MB of weights
    weights = (tmp_path / "big.onnx.data").stat().st_size
    before = _rss()
    model = load(path)
    grown = _rss() - before
    stubs = _stubs(model)
    assert len(stubs) == 20
    for t in stubs:
        assert not t.HasField("raw_data") and t.data_location == TensorProto.EXTERNAL
        assert {e.key: e.value for e in t.external_data}[BASEPATH] == os.path.abspath(tmp_path)
    assert grown < weights / 4, (grown, weights)
    # the eager reader still loads everything (the public contract of load_proto)
    eager = load_proto(path)
    assert all(t.HasField("raw_data") and not t.external_data for t in eager.graph.initializer)


def test_values_through_gs_and_constant_array(mlp):
    path, original = mlp
    model = load(path)
    by_name = {c.name: c for c in model.graph.tensors().values() if isinstance(c, gs.Constant)}
    for init in original.graph.initializer:
        c = by_name[init.name]
        want = numpy_helper.to_array(init)
        got = constant_array(c)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype and got.flags.writeable
        assert isinstance(c._values, ExternalValues)  # not cached by constant_array
    c = by_name["b1"]
    np.testing.assert_array_equal(c.values, numpy_helper.to_array(original.graph.initializer[3]))  # gs caches


def test_to_proto_self_contained_or_external(mlp):
    path, original = mlp
    model = load(path)
    full = model.to_proto()
    assert not any(is_lazy_external(t) or t.external_data for t in iter_tensor_protos(full))
    np.testing.assert_array_equal(run_ort(full, _feeds())[0], run_ort(original, _feeds())[0])
    cheap = model.to_proto(external=True)
    assert cheap.ByteSize() < 10_000
    assert all(is_lazy_external(t) for t in cheap.graph.initializer)
    assert all(isinstance(c._values, ExternalValues) for c in model.graph.tensors().values() if isinstance(c, gs.Constant))


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    outside = tmp_path / "outside"
    inside = tmp_path / "model"
    outside.mkdir()
    inside.mkdir()
    _mlp(outside / "m.onnx")
    (inside / "m.onnx").write_bytes((outside / "m.onnx").read_bytes())
    (inside / "m.onnx.data").symlink_to(outside / "m.onnx.data")
    with pytest.raises(ExternalDataError, match="outside the model folder"):
        load(inside / "m.onnx")


# ------------------------------------------------------------------ passes
@pytest.mark.parametrize("recipe", ["lossless", "int4-weights"])
def test_recipes_match_the_eager_path(mlp, tmp_path, recipe):
    from onnxpress import optimize

    path, original = mlp
    lazy = optimize(path, recipe=recipe)
    eager = optimize(load_proto(path), recipe=recipe)
    assert lazy.after.to_dict() == eager.after.to_dict()
    a, b = tmp_path / "lazy.onnx", tmp_path / "eager.onnx"
    lazy.save(a)
    eager.save(b)
    feeds = _feeds()
    np.testing.assert_array_equal(_ort_path(a, feeds)[0], _ort_path(b, feeds)[0])
    if recipe == "lossless":
        np.testing.assert_allclose(_ort_path(a, feeds)[0], run_ort(original, feeds)[0], rtol=1e-5, atol=1e-5)
        folded = [n for n in lazy.working.graph.nodes if n.op == "Transpose"]
        assert not folded  # fold-constants read the external weight


def test_edge_int8_matches_the_eager_path(mlp):
    from onnxpress import optimize

    path, _ = mlp
    lazy = optimize(path, recipe="edge-int8", calibration="random:2")
    eager = optimize(load_proto(path), recipe="edge-int8", calibration="random:2")
    feeds = _feeds()
    np.testing.assert_array_equal(run_ort(lazy.model, feeds)[0], run_ort(eager.model, feeds)[0])


def test_optimize_check_on_a_path_with_external_data(mlp):
    from onnxpress import optimize

    path, _ = mlp
    result = optimize(path, recipe="lossless", check=True)
    assert result.report.passed


# ------------------------------------------------------------------ save
@pytest.mark.parametrize("external", [False, True])
def test_save_from_a_lazy_model(mlp, tmp_path, external):
    path, original = mlp
    out = tmp_path / "out" / "o.onnx"
    out.parent.mkdir()
    save(load(path), out, external_data=external)
    assert (out.parent / "o.onnx.data").exists() == external
    written = onnx.load(str(out), load_external_data=False)
    for t in iter_tensor_protos(written):
        assert BASEPATH not in {e.key for e in t.external_data}
    back = load_proto(out)
    for a, b in zip(back.graph.initializer, original.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    np.testing.assert_array_equal(_ort_path(out, _feeds())[0], run_ort(original, _feeds())[0])
    assert sorted(os.listdir(out.parent)) == sorted(["o.onnx"] + (["o.onnx.data"] if external else []))


def test_save_decides_external_by_tensor_sizes_not_stub_sizes(mlp, tmp_path, monkeypatch):
    path, _ = mlp
    monkeypatch.setattr(gio, "PROTOBUF_LIMIT", (64 << 20) + 500_000)  # weights ~1 MB: over this limit
    out = tmp_path / "o.onnx"
    save(load(path), out)
    assert (tmp_path / "o.onnx.data").exists()


@pytest.mark.parametrize("external", [False, True])
def test_save_over_the_source(mlp, external):
    path, original = mlp
    model = load(path)
    save(model, path, external_data=external, size_threshold=2048)  # biases (1 KB) inline
    feeds = _feeds()
    np.testing.assert_array_equal(_ort_path(path, feeds)[0], run_ort(original, feeds)[0])
    # the model in memory still reads the right weights (re-pointed to the new file)
    for init in original.graph.initializer:
        c = next(t for t in model.graph.tensors().values() if t.name == init.name)
        np.testing.assert_array_equal(constant_array(c), numpy_helper.to_array(init))
    assert sorted(os.listdir(path.parent)) == ["m.onnx", "m.onnx.data"]


def test_cli_output_same_as_input(mlp):
    from onnxpress.cli import main

    path, original = mlp
    assert main(["optimize", str(path), "-o", str(path), "--recipe", "lossless", "--no-check", "--external-data"]) == 0
    np.testing.assert_allclose(_ort_path(path, _feeds())[0], run_ort(original, _feeds())[0], rtol=1e-5, atol=1e-5)


def test_subgraph_and_attribute_tensors_in_external_data(tmp_path):
    """onnx itself also moves Constant attributes and If-branch initializers out."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    c = rng.standard_normal((64,)).astype(np.float32)
    k = rng.standard_normal((64,)).astype(np.float32)
    then_g = helper.make_graph(
        [helper.make_node("Add", ["m", "k"], ["t"])], "then", [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)], [numpy_helper.from_array(k, "k")],
    )
    else_g = helper.make_graph(
        [helper.make_node("Sub", ["m", "cst"], ["e"])], "else", [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["cst"], value=numpy_helper.from_array(c, "cst")),
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")],
    )
    original = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    original.ir_version = 8
    path = tmp_path / "s.onnx"
    onnx.save_model(onnx.ModelProto.FromString(original.SerializeToString()), str(path), save_as_external_data=True, location="s.onnx.data", size_threshold=0,
                    convert_attribute=True)
    stored = onnx.load(str(path), load_external_data=False)
    assert sum(1 for t in iter_tensor_protos(stored) if t.external_data) == 3
    feeds = [{"x": rng.standard_normal((2, 64)).astype(np.float32), "cond": np.array(v)} for v in (True, False)]
    want = [run_ort(original, f)[0] for f in feeds]
    model = load(path)
    for f, w_ in zip(feeds, want):
        np.testing.assert_array_equal(run_ort(model.to_proto(), f)[0], w_)
        np.testing.assert_array_equal(make_session(model.to_proto(external=True)).run(None, f)[0], w_)
    save(model, path, external_data=True)  # over the source: the small ones are read first
    for f, w_ in zip(feeds, want):
        np.testing.assert_array_equal(_ort_path(path, f)[0], w_)
        np.testing.assert_array_equal(run_ort(model.to_proto(), f)[0], w_)


# ------------------------------------------------------------------ onnxruntime
def test_make_session_with_external_tensors(mlp):
    path, original = mlp
    proto = load(path).to_proto(external=True)
    sess = make_session(proto)
    assert sorted(os.listdir(path.parent)) == ["m.onnx", "m.onnx.data"]  # the session file is gone
    feeds = _feeds()
    np.testing.assert_array_equal(sess.run(None, feeds)[0], run_ort(original, feeds)[0])
    assert all(is_lazy_external(t) for t in proto.graph.initializer)  # the proto is untouched


def test_make_session_falls_back_when_the_folder_is_not_writable(mlp, monkeypatch, caplog):
    path, original = mlp
    proto = load(path).to_proto(external=True)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "read-only", str(path.parent))

    monkeypatch.setattr(gio.tempfile, "mkstemp", refuse)
    with caplog.at_level(logging.WARNING):
        sess = make_session(proto)
    assert "reading the weights into memory" in caplog.text
    np.testing.assert_array_equal(sess.run(None, _feeds())[0], run_ort(original, _feeds())[0])


def test_make_session_large_self_contained_proto_goes_through_a_file(mlp, monkeypatch):
    path, original = mlp
    monkeypatch.setattr(gio, "SESSION_FILE_ABOVE", 1000)
    monkeypatch.setattr(gio, "SESSION_LIMIT", 100_000)  # weights ~1 MB: saved with external data
    written = []
    real = gio.save_proto

    def spy(proto, p, external_data=None, size_threshold=1024):
        written.append(external_data)
        return real(proto, p, external_data, size_threshold)

    monkeypatch.setattr(gio, "save_proto", spy)
    sess = make_session(load_proto(path))
    assert written == [True]
    np.testing.assert_array_equal(sess.run(None, _feeds())[0], run_ort(original, _feeds())[0])


# ------------------------------------------------------------------ capture
def test_capture_on_a_lazy_model(mlp):
    path, original = mlp
    model = load(path)
    proto = model.to_proto(external=True)
    tensors = ["r0", "a2", "w1"]
    feeds = [_feeds(seed=s) for s in range(3)]
    lazy = capture(proto, tensors, feeds, lambda t: [MinMax()], progress=False)
    eager = capture(original, tensors, feeds, lambda t: [MinMax()], progress=False)
    for t in tensors:
        assert (lazy[t][0].min, lazy[t][0].max) == (eager[t][0].min, eager[t][0].max)
    assert all(is_lazy_external(t) and not t.HasField("raw_data") for t in proto.graph.initializer)
    assert sorted(os.listdir(path.parent)) == ["m.onnx", "m.onnx.data"]


def test_cli_edge_int8_on_external_data(mlp, tmp_path):
    from onnxpress.cli import main

    path, original = mlp
    out = tmp_path / "q.onnx"
    assert main(["optimize", str(path), "-o", str(out), "--recipe", "edge-int8", "--calib", "random:2", "--no-check"]) == 0
    got = _ort_path(out, _feeds())[0]
    ref = run_ort(original, _feeds())[0]
    snr = 10 * np.log10((ref.astype(np.float64) ** 2).sum() / ((ref - got).astype(np.float64) ** 2).sum())
    assert snr > 15, snr
    # with the check (the original is read eagerly for it)
    assert main(["optimize", str(path), "-o", str(out), "--recipe", "edge-int8", "--calib", "random:2"]) in (0, 1)


# ------------------------------------------------------------------ CI profile of benchmarks/big.py
def _big():
    spec = importlib.util.spec_from_file_location("onnxpress_bench_big", ROOT / "benchmarks" / "big.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_100mb(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    src = folder / "big.onnx"
    _big().build(src, 0.1, hidden=1024)
    return src


ALLOWANCE = 200 << 20  # bytes: the interpreter, numpy, onnx, onnxruntime


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
@pytest.mark.parametrize("recipe", ["lossless", "int4-weights", "edge-int8"])
def test_peak_rss_on_a_100mb_external_data_model(model_100mb, recipe):
    big = _big()
    weights = (model_100mb.parent / "big.onnx.data").stat().st_size
    out = model_100mb.with_name(f"big.{recipe}.onnx")
    code, _seconds, peak, err = big.run_recipe(model_100mb, out, recipe, calib=2)
    assert code == 0, err
    snr, _ = big.compare(model_100mb, out)
    assert snr > (100 if recipe == "lossless" else 5), snr
    assert peak <= 1.5 * weights + ALLOWANCE, (
        f"{recipe}: peak RSS {peak / 1e6:.0f} MB > 1.5 x {weights / 1e6:.0f} MB + {ALLOWANCE >> 20} MB"
    )
