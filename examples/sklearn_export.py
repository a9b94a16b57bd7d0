#!/usr/bin/env python3
"""scikit-learn pipeline -> skl2onnx -> ``onnxpress.optimize`` -> save.

Two pipelines on scikit-learn's 1797 labelled 8x8 digits (64 features, pixel
values 0..16), split 1347 / 450 (stratified, seeded):

* ``StandardScaler -> PCA(32) -> LogisticRegression``: skl2onnx writes the
  scaler and the classifier as ``ai.onnx.ml`` operators (``Scaler``,
  ``LinearClassifier``, ``Normalizer``) and the PCA as standard ``Sub`` +
  ``MatMul``. Optimized with ``edge-int8`` (calibrated on training rows): the
  ``ai.onnx.ml`` nodes pass through untouched; the quantizer reports what it
  did with the standard part in its stats (``quantized``/``kept_float``; with
  onnxpress 0.1 the PCA ``MatMul``, fed by the ml ``Scaler``, is kept float:
  its input is not a calibrated activation).
* ``StandardScaler -> RandomForestClassifier(20 trees)``: a ``TreeEnsembleClassifier``
  model, optimized with ``lossless``.

For each: accuracy of scikit-learn, of the exported ONNX model and of the
optimized model on the held-out rows (onnxruntime, CPU), and the label
agreement between the ONNX models; every ``ai.onnx.ml`` node of the optimized
model is byte-for-byte the exported one (:func:`ml_nodes`).

Usage::

    pip install scikit-learn skl2onnx
    python examples/sklearn_export.py [--out-dir DIR]

Requires scikit-learn, skl2onnx, onnx, onnxruntime and onnxpress.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

import onnxpress

ML_DOMAIN = "ai.onnx.ml"


def load_data(seed: int = 0):
    """Digits: train/test split, float32 features ``[N, 64]`` and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x.astype(np.float32), y.astype(np.int64), test_size=0.25, random_state=seed, stratify=y)


def ml_nodes(model: onnx.ModelProto) -> list[bytes]:
    """The serialized ``ai.onnx.ml`` nodes of a model's main graph, sorted."""
    return sorted(n.SerializeToString() for n in model.graph.node if n.domain == ML_DOMAIN)


def export(pipeline, name: str) -> onnx.ModelProto:
    """The fitted pipeline as ONNX: input ``input`` float [N, 64]; outputs
    ``label`` int64 [N] and ``probabilities`` float [N, 10] (no ZipMap)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    clf = pipeline.steps[-1][1]
    return convert_sklearn(
        pipeline,
        name=name,
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, ML_DOMAIN: 3},
    )


def predict(model: onnx.ModelProto | str | Path, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(["label"], {"input": x})[0]


def run_pipeline(pipeline, name: str, recipe: str, out_dir: Path, data) -> dict[str, Any]:
    x_train, x_test, y_train, y_test = data
    pipeline.fit(x_train, y_train)
    exported = export(pipeline, name)
    rng = np.random.default_rng(0)
    calib = [{"input": x_train[i : i + 16]} for i in rng.choice(len(x_train) - 16, 16, replace=False)]
    result = onnxpress.optimize(
        exported,
        recipe=recipe,
        calibration=calib if recipe == "edge-int8" else None,
        check=[{"input": x_test}],
    )
    path = result.save(out_dir / f"{name}.{recipe}.onnx")
    optimized = onnx.load(str(path))
    onnx.checker.check_model(optimized)
    labels_onnx, labels_opt = predict(exported, x_test), predict(path, x_test)
    return {
        "name": name,
        "recipe": recipe,
        "path": str(path),
        "accuracy_sklearn": float((pipeline.predict(x_test) == y_test).mean()),
        "accuracy_onnx": float((labels_onnx == y_test).mean()),
        "accuracy_optimized": float((labels_opt == y_test).mean()),
        "label_agreement": float((labels_onnx == labels_opt).mean()),
        "ml_nodes": len(ml_nodes(exported)),
        "ml_nodes_untouched": ml_nodes(exported) == ml_nodes(optimized),
        "ops_before": result.before.op_types,
        "ops_after": result.after.op_types,
        "quantize_int8": {
            k: v for k, v in result.pass_totals().get("quantize-int8", {}).items() if k in ("quantized", "kept_float")
        },
        "bytes_before": exported.ByteSize(),
        "bytes_after": path.stat().st_size,
        "check_passed": bool(result.report.passed),
    }


def main(out_dir: str | Path | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Fit, export, optimize and save both pipelines; return one summary dict each."""
    from sklearn.decomposition import PCA
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="onnxpress-sklearn-"))
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(seed)
    linear = Pipeline(
        [
            ("scale", StandardScaler()),
            ("pca", PCA(n_components=32, random_state=seed)),
            ("clf", LogisticRegression(max_iter=2000)),
        ]
    )
    forest = Pipeline(
        [("scale", StandardScaler()), ("clf", RandomForestClassifier(n_estimators=20, max_depth=8, random_state=seed))]
    )
    return [
        run_pipeline(linear, "digits_pca_logreg", "edge-int8", out, data),
        run_pipeline(forest, "digits_forest", "lossless", out, data),
    ]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", help="where to write the models (default: a temporary folder)")
    args = parser.parse_args()
    for summary in main(args.out_dir):
        print(json.dumps(summary, indent=2, default=str))
