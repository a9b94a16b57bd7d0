#!/usr/bin/env python3
"""PyTorch model -> ``torch.onnx.export`` -> ``onnxpress.optimize`` -> save.

A small CNN (Conv-BatchNorm-ReLU x2, average pooling, two Linear layers) is
trained for a few seconds on real data, scikit-learn's 1797 labelled 8x8
digits (fetched from the scikit-learn wheel on PyPI by
:func:`onnxpress.testing.realmodels.fetch_data`, scikit-learn itself is not
needed), split 1347 / 450. It is exported with ``torch.onnx.export`` (the
``torch.export``-based exporter when ``onnxscript`` is installed, else the
TorchScript one) with a dynamic batch dimension, then optimized in the export
flow with ``onnxpress.optimize(..., recipe="edge-int8")``, calibrated on 64
training digits, and saved. The summary gives the held-out accuracy of torch,
of the exported model and of the int8 model (onnxruntime, CPU), their label
agreement, the node counts and the file sizes.

Usage::

    pip install torch==2.13.0        # a CPU wheel; add onnxscript for the new exporter
    python examples/torch_export.py [--out-dir DIR] [--exporter auto|dynamo|torchscript]

Input ``image`` float32 [N, 1, 8, 8] (pixels / 16); output ``logits`` float32 [N, 10].
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import onnxpress


def load_digits(seed: int = 0):
    """Digits from the scikit-learn wheel: (x_train, x_test, y_train, y_test),
    images float32 [N, 1, 8, 8] in [0, 1], labels int64 [N]; stratified split."""
    from onnxpress.testing.realmodels import fetch_data

    with gzip.open(fetch_data("digits"), "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.float32)
    x = (rows[:, :64] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    y = rows[:, 64].astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:45] for c in range(10)])
    train = np.setdiff1d(np.arange(len(y)), test)
    return x[train], x[test], y[train], y[test]


def build_model():
    import torch.nn as nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def train(model, x: np.ndarray, y: np.ndarray, epochs: int = 15, seed: int = 0) -> None:
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    g = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batches this small: one thread is fastest, and immune to a busy machine
    try:
        model.train()
        for _ in range(epochs):
            for idx in torch.randperm(len(xt), generator=g).split(64):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
        model.eval()


def export(model, path: Path, exporter: str = "auto") -> str:
    """``torch.onnx.export`` with a dynamic batch; returns the exporter used."""
    import torch

    if exporter == "auto":
        exporter = "dynamo" if importlib.util.find_spec("onnxscript") else "torchscript"
    example = (torch.zeros(1, 1, 8, 8),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if exporter == "dynamo":
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=["image"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
            )
        else:
            torch.onnx.export(
                model,
                example,
                str(path),
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    return exporter


def logits(model: str | Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


def main(out_dir: str | Path | None = None, exporter: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Train, export, optimize with edge-int8, save; return a summary dict."""
    import torch

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="onnxpress-torch-"))
    out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = load_digits(seed)
    model = build_model()
    train(model, x_train, y_train, seed=seed)
    with torch.no_grad():
        torch_pred = model(torch.from_numpy(x_test)).argmax(1).numpy()

    exported = out / "digits_cnn.onnx"
    used = export(model, exported, exporter)

    # The export flow: the exported file in, an int8 model out.
    rng = np.random.default_rng(seed)
    calibration = [{"image": x_train[i : i + 1]} for i in rng.choice(len(x_train), 64, replace=False)]
    result = onnxpress.optimize(exported, recipe="edge-int8", calibration=calibration, check=[{"image": x_test}])
    int8 = result.save(out / "digits_cnn.int8.onnx")

    fp32_pred = logits(exported, x_test).argmax(1)
    int8_pred = logits(int8, x_test).argmax(1)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    return {
        "exporter": used,
        "exported": str(exported),
        "optimized": str(int8),
        "accuracy_torch": float((torch_pred == y_test).mean()),
        "accuracy_onnx": float((fp32_pred == y_test).mean()),
        "accuracy_int8": float((int8_pred == y_test).mean()),
        "label_agreement": float((fp32_pred == int8_pred).mean()),
        "nodes_before": result.before.nodes,
        "nodes_after": result.after.nodes,
        # The torch.export-based exporter writes the weights to digits_cnn.onnx.data.
        "bytes_before": sum(p.stat().st_size for p in out.glob("digits_cnn.onnx*")),
        "bytes_after": int8.stat().st_size,
        "quantized_ops": sorted(ops & {"QuantizeLinear", "DequantizeLinear"}),
        "check_min_cosine": min(o.cosine for o in result.report.outputs),
        "check_passed": bool(result.report.passed),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", help="where to write the models (default: a temporary folder)")
    parser.add_argument("--exporter", choices=["auto", "dynamo", "torchscript"], default="auto")
    args = parser.parse_args()
    print(json.dumps(main(args.out_dir, args.exporter), indent=2))
