"""Calibration readers: every source kind, re-iteration, limits, and every error."""
from __future__ import annotations

import logging
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxpress.calibration import CalibrationData, open_calibration
from onnxpress.errors import InputNameError, ModelLoadError


def two_input_model() -> onnx.ModelProto:
    """x: float32 [N, 3], ids: int64 [N] -> y = x * 2 (ids unused but declared)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    g = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "g", [x, ids], [y], [two])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def one_input_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def sample(i: int, n: int = 2) -> dict[str, np.ndarray]:
    return {"x": np.full((n, 3), float(i), np.float32), "ids": np.arange(n, dtype=np.int64) + i}


@pytest.fixture
def model() -> onnx.ModelProto:
    return two_input_model()


def as_list(data: CalibrationData) -> list[dict]:
    return list(data)


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for fa, fb in zip(a, b):
        assert fa.keys() == fb.keys()
        for k in fa:
            np.testing.assert_array_equal(fa[k], fb[k])
            assert fa[k].dtype == fb[k].dtype


# ------------------------------------------------------------------ npz folder
def test_npz_folder_sorted_reiterable_with_count_and_limit(model, tmp_path):
    d = tmp_path / "calib"
    d.mkdir()
    for i in (2, 0, 1, 10):
        np.savez(d / f"s{i:02d}.npz", **sample(i))
    data = open_calibration(d, model)
    assert data.count == 4
    assert data.description == f"4 samples from {d}/ (npz folder)"
    first = as_list(data)
    assert [int(f["x"][0, 0]) for f in first] == [0, 1, 2, 10]  # sorted by file name
    assert_same(first, as_list(data))  # a second pass restarts
    limited = open_calibration(str(d), model, limit=2)
    assert limited.count == 2 and len(as_list(limited)) == 2


def test_npz_folder_errors_name_the_file(model, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no .npz"):
        open_calibration(empty, model)
    d = tmp_path / "calib"
    d.mkdir()
    np.savez(d / "a.npz", **sample(0))
    (d / "b.npz").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="b.npz"):
        as_list(open_calibration(d, model))
    bad = sample(1)
    bad["x"] = bad["x"][:, :2]
    np.savez(d / "b.npz", **bad)
    with pytest.raises(InputNameError, match=r"calibration sample 1 \(b.npz\): input 'x' has shape \[2, 2\]"):
        as_list(open_calibration(d, model))


def test_missing_path(model, tmp_path):
    with pytest.raises(ModelLoadError, match="no such calibration file"):
        open_calibration(tmp_path / "nope.npz", model)


# ------------------------------------------------------------------ stacked npz
def test_stacked_npz_splits_the_leading_axis(model, tmp_path):
    f = tmp_path / "calib.npz"
    xs = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    ids = np.arange(10, dtype=np.int64).reshape(5, 2)
    np.savez(f, x=xs, ids=ids)
    data = open_calibration(f, model)
    assert data.count == 5 and "stacked npz" in data.description
    got = as_list(data)
    assert len(got) == 5
    for i, feed in enumerate(got):
        np.testing.assert_array_equal(feed["x"], xs[i])
        np.testing.assert_array_equal(feed["ids"], ids[i])
    assert len(as_list(open_calibration(f, model, limit=3))) == 3


def test_stacked_npz_with_unequal_sample_counts_names_the_key(model, tmp_path):
    f = tmp_path / "calib.npz"
    np.savez(f, x=np.zeros((5, 2, 3), np.float32), ids=np.zeros((4, 2), np.int64))
    with pytest.raises(InputNameError, match="'ids' has 4 samples"):
        open_calibration(f, model)


def test_single_sample_npz_is_one_sample(model, tmp_path):
    f = tmp_path / "one.npz"
    np.savez(f, **sample(3))
    data = open_calibration(f, model)
    assert data.count == 1
    assert_same(as_list(data), [sample(3)])


def test_unreadable_npz(model, tmp_path):
    f = tmp_path / "bad.npz"
    f.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="bad.npz"):
        open_calibration(f, model)


# ------------------------------------------------------------------ module:function
MODULE = textwrap.dedent(
    """
    import numpy as np

    def feeds():
        for i in range(3):
            yield {"x": np.full((1, 3), i, np.float32), "ids": np.array([i], np.int64)}

    def feeds_for(model):
        n = len(model.graph.input) if hasattr(model, "graph") else 0
        return [{"x": np.zeros((n, 3), np.float32), "ids": np.zeros(n, np.int64)}]

    def not_iterable():
        return 42

    VALUE = 3
    """
)


def test_module_function_sources(model, tmp_path, monkeypatch):
    (tmp_path / "calib_mod_for_tests.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    data = open_calibration("calib_mod_for_tests:feeds", model)
    assert data.count is None and "calib_mod_for_tests:feeds" in data.description
    got = as_list(data)
    assert [int(f["ids"][0]) for f in got] == [0, 1, 2]
    assert len(as_list(data)) == 3  # the generator function is called again: re-iterable
    # One argument: the model as given.
    got = as_list(open_calibration("calib_mod_for_tests:feeds_for", model))
    assert got[0]["x"].shape == (2, 3)
    # A file path.
    got = as_list(open_calibration(f"{tmp_path}/calib_mod_for_tests.py:feeds", model, limit=2))
    assert len(got) == 2


def test_module_function_errors(model, tmp_path, monkeypatch):
    (tmp_path / "calib_mod_for_tests2.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match="no_such_module_xyz"):
        open_calibration("no_such_module_xyz:feeds", model)
    with pytest.raises(ModelLoadError, match="has no attribute 'missing'"):
        open_calibration("calib_mod_for_tests2:missing", model)
    with pytest.raises(ModelLoadError, match="not callable"):
        open_calibration("calib_mod_for_tests2:VALUE", model)
    with pytest.raises(ModelLoadError, match="no such file"):
        open_calibration(f"{tmp_path}/nope.py:feeds", model)
    with pytest.raises(InputNameError, match="returned a int"):
        as_list(open_calibration("calib_mod_for_tests2:not_iterable", model))
    broken = tmp_path / "broken_calib.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ModelLoadError, match="boom"):
        open_calibration(f"{broken}:feeds", model)


# ------------------------------------------------------------------ random
def test_random_source_is_seeded_and_warns(model, caplog):
    with caplog.at_level(logging.WARNING, logger="onnxpress.calibration.readers"):
        data = open_calibration("random", model, seed=3)
    assert "random calibration data is for smoke tests only" in caplog.text
    assert data.count == 8
    a, b = as_list(data), as_list(data)
    assert_same(a, b)
    assert_same(a, as_list(open_calibration("random", model, seed=3)))
    assert not np.array_equal(a[0]["x"], as_list(open_calibration("random", model, seed=4))[0]["x"])
    data = open_calibration("random:3", model)
    assert data.count == 3 and len(as_list(data)) == 3
    with pytest.raises(InputNameError, match="random:N"):
        open_calibration("random:many", model)


# ------------------------------------------------------------------ in-memory
def test_list_dict_array_callable_and_iterator_sources(model):
    feeds = [sample(i) for i in range(4)]
    data = open_calibration(feeds, model)
    assert data.count == 4
    assert_same(as_list(data), feeds)
    assert_same(as_list(data), feeds)
    assert len(as_list(open_calibration(feeds, model, limit=1))) == 1

    assert open_calibration(sample(0), model).count == 1  # one feed dict

    made = []

    def factory():
        made.append(1)
        return iter(feeds)

    data = open_calibration(factory, model)
    assert len(as_list(data)) == 4 and len(as_list(data)) == 4 and len(made) == 2

    gen = (f for f in feeds)
    data = open_calibration(gen, model)
    assert len(as_list(data)) == 4
    with pytest.raises(InputNameError, match="one-shot iterator"):
        as_list(data)

    single = one_input_model()
    arrays = [np.ones((1, 4), np.float32), np.zeros((1, 4), np.float32)]
    got = as_list(open_calibration(arrays, single))  # bare arrays for a one-input model
    assert [f["x"].sum() for f in got] == [4.0, 0.0]


def test_feeds_are_cast_within_a_dtype_kind_and_not_mutated(model):
    f = {"x": np.zeros((1, 3), np.float64), "ids": np.zeros(1, np.int32)}
    got = as_list(open_calibration([f], model))[0]
    assert got["x"].dtype == np.float32 and got["ids"].dtype == np.int64
    assert f["x"].dtype == np.float64  # the caller's dict is untouched


def test_model_may_be_a_path(model, tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(model, p)
    got = as_list(open_calibration([sample(0)], str(p)))
    assert got[0]["x"].dtype == np.float32


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "change, error",
    [
        (lambda f: f.update(x=np.zeros((2, 4), np.float32)), r"input 'x' has shape \[2, 4\]"),
        (lambda f: f.update(x=np.zeros((2, 3, 1), np.float32)), "input 'x' has rank 3"),
        (lambda f: f.update(ids=np.zeros(2, np.float32)), "input 'ids' has dtype float32"),
        (lambda f: f.update(z=np.zeros(1, np.float32)), "no input 'z'"),
        (lambda f: f.pop("ids"), "no value for input 'ids'"),
        (lambda f: f["x"].__setitem__((0, 0), np.nan), "input 'x' has NaN/Inf values"),
        (lambda f: f["x"].__setitem__((1, 2), -np.inf), "input 'x' has NaN/Inf values"),
    ],
    ids=["shape", "rank", "dtype", "unknown", "missing", "nan", "inf"],
)
def test_bad_sample_errors_name_the_sample_and_input(model, change, error):
    feeds = [sample(i) for i in range(5)]
    change(feeds[3])
    data = open_calibration(feeds, model)
    it = iter(data)
    for _ in range(3):
        next(it)  # the good ones pass
    with pytest.raises(InputNameError, match=f"^calibration sample 3: .*{error}"):
        next(it)


def test_other_errors(model):
    with pytest.raises(InputNameError, match="expected a dict"):
        as_list(open_calibration([(1, 2)], model))
    with pytest.raises(InputNameError, match="empty"):
        open_calibration([], model)
    with pytest.raises(InputNameError, match="cannot read calibration data"):
        open_calibration(3.5, model)
    with pytest.raises(ValueError):
        open_calibration([sample(0)], model, limit=-1)
