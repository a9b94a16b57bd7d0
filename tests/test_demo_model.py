"""The packaged demo model runs and classifies the held-out MNIST digits."""
from importlib.resources import files

import numpy as np
import onnx
import pytest

ort = pytest.importorskip("onnxruntime")

DATA = files("onnxpress.data")


def _load_test_set():
    with DATA.joinpath("mnist_test.npz").open("rb") as f, np.load(f) as d:
        x = d["x_uint8"].astype(np.float32) / 255.0
        y = d["y"]
    return x, y


def test_test_set_layout():
    with DATA.joinpath("mnist_test.npz").open("rb") as f, np.load(f) as d:
        assert sorted(d.files) == ["x_uint8", "y"]
        assert d["x_uint8"].dtype == np.uint8 and d["x_uint8"].shape == (1000, 784)
        assert d["y"].dtype == np.int64 and d["y"].shape == (1000,)
        assert np.bincount(d["y"], minlength=10).tolist() == [100] * 10


def test_model_is_valid():
    model = onnx.load_from_string(DATA.joinpath("mnist_mlp.onnx").read_bytes())
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]


def test_model_accuracy():
    x, y = _load_test_set()
    sess = ort.InferenceSession(DATA.joinpath("mnist_mlp.onnx").read_bytes(),
                                providers=["CPUExecutionProvider"])
    (logits,) = sess.run(["logits"], {"input": x})
    assert logits.shape == (1000, 10) and logits.dtype == np.float32
    acc = float((logits.argmax(axis=1) == y).mean())
    assert acc >= 0.9, acc
