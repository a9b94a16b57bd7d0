"""The ``check`` subcommand and ``optimize --check``: targets, tolerances,
reports, localization, exit codes (0 pass, 1 tolerance missed, 2 bad input)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.numpy_helper as nh
import pytest

from onnxpress.cli import _target_specs, main
from onnxpress.demo import load_demo


@pytest.fixture
def models(tmp_path):
    model, x, _ = load_demo()
    ref = tmp_path / "mlp.onnx"
    onnx.save(model, ref)
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    w = next(t for t in bad.graph.initializer if t.name == "fc1.weight")
    arr = nh.to_array(w).copy()
    arr[:, 400:410] += 0.5
    w.CopyFrom(nh.from_array(arr, w.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(bad, broken)
    np.savez(tmp_path / "feed.npz", input=x[:16])
    return ref, broken, tmp_path / "feed.npz"


def test_target_specs_split_on_commas_but_keep_provider_lists():
    assert _target_specs(["cpu,arm64"]) == ["cpu", "arm64"]
    assert _target_specs(["cpu,ep:AExecutionProvider,BExecutionProvider,arm64:cortex-a53", "ep:C"]) == [
        "cpu", "ep:AExecutionProvider,BExecutionProvider", "arm64:cortex-a53", "ep:C"]


def test_check_passes_on_two_targets_with_latency(models, tmp_path, capsys):
    ref, _, feed = models
    out = tmp_path / "r.json"
    code = main(["check", str(ref), str(ref), "--data", str(feed), "--target", "cpu", "--target", "ep:CPUExecutionProvider",
                 "--latency", "--repeats", "3", "--threads", "1", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "PASS: 1 feed(s) on cpu, ep:CPUExecutionProvider" in text and "cross-target" in text
    d = json.loads(out.read_text())
    assert [t["name"] for t in d["targets"]] == ["cpu", "ep:CPUExecutionProvider"]
    assert len(d["latency"]) == 2 and d["latency"][0]["reference"]["runs"] == 3
    assert d["sizes"]["reference"]["disk"] == ref.stat().st_size


def test_check_failure_localized_with_reports(models, tmp_path, capsys):
    ref, broken, feed = models
    md, html = tmp_path / "r.md", tmp_path / "r.html"
    assert main(["check", str(ref), str(broken), "--data", str(feed), "--localize", "--report", str(md)]) == 1
    text = capsys.readouterr().out
    assert "FAIL" in text and "first departing tensor: '/fc1/Gemm_output_0' = Gemm node '/fc1/Gemm'" in text
    assert f"wrote {md}" in text
    body = md.read_text()
    assert "# onnxpress check: mlp.onnx vs broken.onnx" in body and "## Localization" in body
    assert main(["check", str(ref), str(broken), "--data", str(feed), "--localize", "--latency", "--repeats", "2",
                 "--report", str(html)]) == 1
    page = html.read_text()
    assert 'id="layer-plot"' in page and "Model size" in page


def test_check_tolerance_flags(models, capsys):
    ref, broken, feed = models
    args = ["check", str(ref), str(broken), "--data", str(feed)]
    assert main(args + ["--atol", "logits=100"]) == 0
    assert "|a-b| <= 100 + 0.0001*|a|" in capsys.readouterr().out
    assert main(args + ["--atol", "100", "--min-top1", "0.99"]) == 1
    assert "top-1 agreement" in capsys.readouterr().out
    assert main(args + ["--atol", "100", "--min-snr", "logits=30"]) == 1
    assert "SNR" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target", "bogus"], "unknown target 'bogus'"),
        (["--target", "ep:NoSuchExecutionProvider"], "not available"),
        (["--target", "arm64:pentium"], "unknown CPU model"),
        (["--report", "r.txt"], "use a .md, .html or .json"),
        (["--atol", "abc"], "--atol 'abc': expected VALUE or OUTPUT=VALUE"),
        (["--atol", "nope=1"], "output 'nope'"),
    ],
)
def test_check_bad_options_exit_2_with_one_line(models, capsys, extra, message):
    ref, _, feed = models
    assert main(["check", str(ref), str(ref), "--data", str(feed), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_optimize_check_targets_and_report(models, tmp_path, capsys):
    ref, _, feed = models
    out, rep = tmp_path / "out.onnx", tmp_path / "check.html"
    code = main(["optimize", str(ref), "-o", str(out), "--data", str(feed), "--check", "cpu,ep:CPUExecutionProvider",
                 "--report", str(rep)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert out.is_file() and "PASS" in text and "ep:CPUExecutionProvider" in text
    assert "vs out.onnx" in rep.read_text()


def test_optimize_check_missed_tolerance_still_writes(models, tmp_path, capsys):
    ref, _, feed = models
    out = tmp_path / "half.onnx"
    code = main(["optimize", str(ref), "-o", str(out), "--recipe", "fp16", "--data", str(feed), "--check", "cpu",
                 "--atol", "logits=1e-9", "--rtol", "logits=0"])
    captured = capsys.readouterr()
    assert code == 1 and out.is_file()
    assert "criterion (fp16 candidate): |a-b| <= 1e-09 + 0*|a| and cosine >= 0.999" in captured.out
    assert "written to" in captured.err


def test_optimize_unknown_target_exits_2_before_writing(models, tmp_path, capsys):
    ref, _, feed = models
    out = tmp_path / "never.onnx"
    assert main(["optimize", str(ref), "-o", str(out), "--data", str(feed), "--check", "cpu,nowhere"]) == 2
    assert "unknown target 'nowhere'" in capsys.readouterr().err
    assert not out.exists()
    # --no-check skips the targets entirely.
    assert main(["optimize", str(ref), "-o", str(out), "--no-check", "--check", "nowhere"]) == 0


@pytest.mark.arm64
def test_check_on_emulated_arm64_explains_fp16_and_int8(models, tmp_path, capsys):
    """The check on the real emulated aarch64 onnxruntime (shared/ARM.md): fp16
    accumulates in fp16 on neoverse-n1 (differs from x86 by up to ~4e-2) but not on
    cortex-a53 (computes in fp32 like x86); int8 QDQ is bit-exact across."""
    import platform
    import shutil

    if platform.machine().lower() in ("aarch64", "arm64") or not shutil.which("apt-get"):
        pytest.skip("needs an x86 Debian-like host for the emulated arm64 runtime")
    import onnxpress
    from onnxpress.runtime_check.arm64 import setup_arm64

    setup_arm64(cpu_models=("neoverse-n1", "cortex-a53"))  # verifies only, when set up already
    ref, _, feed = models
    half = tmp_path / "half.onnx"
    onnx.save(onnxpress.optimize(str(ref), recipe="fp16").model, half)
    out = tmp_path / "arm.json"
    code = main(["check", str(ref), str(half), "--data", str(feed), "--target", "cpu,arm64:neoverse-n1,arm64:cortex-a53",
                 "--latency", "--repeats", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    d = json.loads(out.read_text())
    cross = {(o["target"], o["level"]): o for o in d["cross"]}
    assert 2e-3 < cross[("arm64:neoverse-n1 vs cpu", "disabled")]["max_abs"] < 0.1
    assert cross[("arm64:cortex-a53 vs cpu", "disabled")]["max_abs"] <= 2e-3
    assert "neoverse-n1 has FP16 arithmetic" in text and "cortex-a53 has no FP16 arithmetic" in text
    assert [lat["emulated"] for lat in d["latency"]] == [False, True, True]
    assert all(lat["speedup"] is None for lat in d["latency"][1:])

    _, x, _ = load_demo()
    q = tmp_path / "int8.onnx"
    onnx.save(onnxpress.optimize(str(ref), recipe="edge-int8", calibration=[{"input": x[i:i + 8]} for i in range(0, 64, 8)]).model, q)
    assert main(["check", str(ref), str(q), "--data", str(feed), "--target", "cpu,arm64:cortex-a53", "--json", str(out)]) == 0
    d = json.loads(out.read_text())
    assert d["kind"] == "int8" and all(o["max_abs"] <= 1e-5 for o in d["cross"])
    assert "bit-exact" in capsys.readouterr().out


def test_check_takes_tolerances_from_a_recipe(models, tmp_path, capsys):
    from onnxpress.errors import UnknownPassError
    from onnxpress.recipes import parse_recipe

    ref, broken, feed = models
    recipe = tmp_path / "mine.toml"
    recipe.write_text('name = "mine"\n[check]\nmin_snr_db = 1\n[check.outputs.logits]\natol = 100\n')
    assert main(["check", str(ref), str(broken), "--data", str(feed), "--recipe", str(recipe)]) == 0
    assert "|a-b| <= 100 + 0.0001*|a| and SNR >= 1 dB" in capsys.readouterr().out
    # The command line overrides the recipe.
    assert main(["check", str(ref), str(broken), "--data", str(feed), "--recipe", str(recipe), "--atol", "logits=1e-6"]) == 1
    r = parse_recipe('[check]\natol = 1\n[check.outputs.probs]\nmin_top1 = 0.9\nrtol = 0\n')
    assert r.check_options == {"atol": 1.0} and r.check_outputs == {"probs": {"min_top1": 0.9, "rtol": 0.0}}
    with pytest.raises(UnknownPassError, match=r"unknown key 'bogus' in \[check.outputs.p\]"):
        parse_recipe("[check.outputs.p]\nbogus = 1\n")
