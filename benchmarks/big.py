"""Big-model benchmark: recipes on a synthetic model with ~2.5 GB of weights in
external data, measuring each run's peak RSS against the weights' size.

Not a test. Run: ``python benchmarks/big.py [--gb 2.5] [--dir /tmp/onnxpress-big]
[--recipes lossless,int4-weights,edge-int8] [--out benchmarks/results/big.md]``.
``tests/graph/test_external_lazy.py`` runs the same code path (:func:`build`,
:func:`run_recipe`) on a ~100 MB model in CI.

Each recipe runs as ``onnxpress optimize`` in a fresh process (``--no-check``;
edge-int8 with ``--calib random:4``); its peak RSS is the process's VmHWM read from
``/proc``. Outputs are then compared with the original's on one seeded input in
onnxruntime (SNR in dB and max abs error). The target (issue "Trust") is peak RSS
<= 1.5x the weights.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN = 4096


def build(path: Path, gigabytes: float, hidden: int = HIDDEN) -> int:
    """Write a MatMul+Add+Relu stack of ``hidden`` x ``hidden`` float32 layers with its
    weights in ``path.data``; returns the weight bytes."""
    layers = max(1, int(gigabytes * 1e9 // (hidden * hidden * 4)))
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((hidden, hidden), dtype=np.float32) / np.sqrt(hidden)).astype(np.float32)
        b = np.zeros(hidden, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
            helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
        ]
        x = f"r{i}"
    graph = helper.make_graph(
        nodes, "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", hidden])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from onnxpress.graph import save

    save(model, path, external_data=True)
    return layers * (hidden * hidden + hidden) * 4


def run_recipe(src: Path, out: Path, recipe: str, calib: int = 4) -> tuple[int, float, float, str]:
    """Run ``onnxpress optimize`` in a fresh process; returns (exit code, seconds,
    peak RSS bytes, stderr tail)."""
    cmd = [sys.executable, "-m", "onnxpress", "optimize", str(src), "-o", str(out), "--recipe", recipe, "--no-check"]
    if recipe != "lossless" and recipe != "int4-weights":
        cmd += ["--calib", f"random:{calib}"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        time.sleep(0.05)
    _, err = proc.communicate()
    return proc.returncode, time.perf_counter() - start, peak, err.strip().splitlines()[-1] if err.strip() else ""


def compare(src: Path, out: Path) -> tuple[float, float]:
    import onnxruntime as ort

    hidden = onnx.load(str(src), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = np.random.default_rng(1).standard_normal((1, hidden)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    err = ref.astype(np.float64) - got
    snr = float("inf") if not err.any() else 10 * np.log10((ref.astype(np.float64) ** 2).sum() / (err**2).sum())
    return snr, float(np.abs(err).max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=2.5)
    ap.add_argument("--dir", default="/tmp/onnxpress-big")
    ap.add_argument("--recipes", default="lossless,int4-weights,edge-int8")
    ap.add_argument("--out", default="benchmarks/results/big.md")
    args = ap.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "big.onnx"
    if not src.exists():
        print(f"building {args.gb} GB model in {folder} ...", flush=True)
        build(src, args.gb)
    weight_bytes = (folder / "big.onnx.data").stat().st_size
    rows = []
    for recipe in args.recipes.split(","):
        out = folder / f"big.{recipe}.onnx"
        code, seconds, peak, err = run_recipe(src, out, recipe)
        snr, max_abs = compare(src, out) if code == 0 else (float("nan"), float("nan"))
        ratio = peak / weight_bytes
        rows.append((recipe, code, seconds, peak, ratio, snr, max_abs, err))
        print(f"{recipe}: exit {code}, {seconds:.1f} s, peak RSS {peak / 1e9:.2f} GB ({ratio:.2f}x weights), "
              f"SNR {snr:.1f} dB {err}", flush=True)
    lines = [
        f"# Big model: {weight_bytes / 1e9:.2f} GB of weights in external data",
        "",
        "| recipe | exit | time s | peak RSS GB | x weights | output SNR dB | max abs | target (<= 1.5x) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for recipe, code, seconds, peak, ratio, snr, max_abs, err in rows:
        lines.append(
            f"| {recipe} | {code} | {seconds:.1f} | {peak / 1e9:.2f} | {ratio:.2f} | {snr:.1f} | {max_abs:.3g} | "
            f"{'PASS' if ratio <= 1.5 and code == 0 else 'FAIL'} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
