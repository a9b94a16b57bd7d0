"""CLI: optimize/check/inspect/passes/recipes, exit codes, bad input writes nothing."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxpress.cli import main
from onnxpress.demo import load_demo


@pytest.fixture
def mlp(tmp_path):
    model, x, _ = load_demo()
    path = tmp_path / "mlp.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "feed.npz", input=x[:8])
    return path


def test_optimize_shrinks_and_checks(mlp, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    code = main(["optimize", str(mlp), "-o", str(out), "--data", str(tmp_path / "feed.npz"), "--json", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "nodes" in text and "PASS" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["after"]["nodes"] < report["before"]["nodes"]
    assert report["check"]["passed"]
    assert len(onnx.load(out).graph.node) == 3  # Gemm, Relu, Gemm


def test_check_inspect_passes_recipes(mlp, tmp_path, capsys):
    assert main(["check", str(mlp), str(mlp), "--dim", "N=3"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["inspect", str(mlp), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["op_types"]["Gemm"] == 2
    assert main(["inspect", str(mlp)]) == 0
    assert "Gemm" in capsys.readouterr().out
    assert main(["passes"]) == 0
    listed = capsys.readouterr().out
    for name in ("lift-constants", "fold-constants", "remove-noops", "fold-batchnorm", "eliminate-dead-code"):
        assert name in listed
    assert main(["recipes", "show", "lossless"]) == 0
    assert "fold-constants" in capsys.readouterr().out


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "onnxpress", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_onnx", "not an ONNX model"),
        ("truncated", "truncated"),
        ("missing_data", "external data file"),
        ("unknown_pass", "unknown pass 'no-such-pass'"),
        ("unknown_input", "no input 'nope'"),
        ("missing", "no such model file"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(mlp, tmp_path, case, message):
    src = mlp
    extra = []
    if case == "not_onnx":
        src = tmp_path / "x.onnx"
        src.write_text("hello")
    elif case == "truncated":
        src = tmp_path / "t.onnx"
        src.write_bytes(mlp.read_bytes()[: mlp.stat().st_size // 2])
    elif case == "missing_data":
        src = tmp_path / "ext.onnx"
        onnx.save(onnx.load(mlp), src, save_as_external_data=True, location="ext.onnx.data")
        (tmp_path / "ext.onnx.data").unlink()
    elif case == "unknown_pass":
        extra = ["--passes", "fold-constants,no-such-pass"]
    elif case == "unknown_input":
        np.savez(tmp_path / "bad.npz", nope=np.zeros((1, 784), np.float32))
        extra = ["--data", str(tmp_path / "bad.npz")]
    elif case == "missing":
        src = tmp_path / "missing.onnx"
    out = tmp_path / "out.onnx"
    before = sorted(os.listdir(tmp_path))
    r = _run("optimize", str(src), "-o", str(out), *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == before


def test_verbose_shows_traceback(tmp_path):
    src = tmp_path / "x.onnx"
    src.write_text("hello")
    r = _run("--verbose", "optimize", str(src), "-o", str(tmp_path / "o.onnx"))
    assert r.returncode == 2 and "Traceback" in r.stderr  # the exit code of bad input, as without --verbose
    assert r.stderr.strip().splitlines()[-1].startswith("onnxpress: error:")


def test_failed_check_exits_1_and_does_not_write(tmp_path, capsys):
    a = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) { y = Relu(x) }''')
    b = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) { y = Abs(x) }''')
    onnx.save(a, tmp_path / "a.onnx")
    onnx.save(b, tmp_path / "b.onnx")
    assert main(["check", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx")]) == 1
    assert "FAIL" in capsys.readouterr().out


@pytest.fixture(scope="module")
def demo_output():
    """``onnxpress demo``'s exit code and its table rows: name -> the row's numbers."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["demo"])
    out = buf.getvalue()
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    assert lines[header].split() == [
        "model", "nodes", "MACs", "size", "(bytes)", "x", "size", "latency", "us", "x", "lat", "accuracy"
    ]
    rows = {}
    for line in lines[header + 1 :]:
        fields = line.split()
        if len(fields) < 8 or not fields[-1].replace(".", "").isdigit():
            break  # the end of the table
        name = " ".join(fields[:-7])
        nodes, macs, size, x_size, latency, x_lat, acc = fields[-7:]
        rows[name] = {
            "nodes": int(nodes), "macs": int(macs.replace(",", "")), "size": int(size.replace(",", "")),
            "x_size": float(x_size), "latency": float(latency), "x_lat": float(x_lat), "accuracy": float(acc),
        }
    return code, out, rows


def test_demo_runs_every_recipe_and_keeps_accuracy(demo_output):
    code, out, rows = demo_output
    assert code == 0, out
    assert list(rows)[:3] == ["original (fp32)", "lossless", "edge-int8"], out
    fp32 = rows["original (fp32)"]
    assert fp32["macs"] == 784 * 128 + 128 * 10
    assert rows["lossless"]["accuracy"] == fp32["accuracy"]
    assert rows["lossless"]["nodes"] < fp32["nodes"]
    assert rows["edge-int8"]["accuracy"] >= fp32["accuracy"] - 0.01  # int8 within 1 point
    assert rows["edge-int8"]["x_size"] < 0.35  # int8 weights
    assert all(r["latency"] > 0 for r in rows.values())


def test_demo_prunes_distills_and_quantizes_step_by_step(demo_output):
    """Issue #5: the MLP pruned (50% of the hidden neurons), distilled and
    quantized, with test accuracy at each step (benchmarks/results/prune.md:
    0.9378 fp32, 0.8456 pruned, 0.9333 + distill, 0.9311 + int8)."""
    code, out, rows = demo_output
    assert code == 0, out
    steps = ["pruned 50%", "pruned 50% + distill", "pruned 50% + distill + int8"]
    assert list(rows)[3:] == steps, out
    fp32 = rows["original (fp32)"]
    pruned, distilled, int8 = (rows[s] for s in steps)
    # Half of the 128 hidden neurons: half the MACs, half the fp32 weights.
    assert pruned["macs"] == distilled["macs"] == int8["macs"] == 784 * 64 + 64 * 10
    assert 0.45 < pruned["x_size"] < 0.55 and 0.45 < distilled["x_size"] < 0.55
    assert int8["x_size"] < 0.2  # int8 weights of the pruned model
    assert int8["nodes"] > distilled["nodes"]  # Q/DQ nodes
    # Pruning alone loses accuracy; distillation to the original wins it back.
    assert pruned["accuracy"] < distilled["accuracy"] - 0.03
    assert pruned["accuracy"] > 0.5  # not broken, just less accurate
    assert distilled["accuracy"] >= fp32["accuracy"] - 0.01
    assert int8["accuracy"] >= fp32["accuracy"] - 0.015
    assert "recipe='edge-int8-pruned'" in out and "prune_channels={'ratio': 0.5}" in out
