"""runtime_check.report: the terminal table, JSON, Markdown, and the HTML report,
rendered in headless Chromium (Debian's ``chromium``) to check that its inline
SVG plots are drawn."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import pytest

from onnxpress.errors import InputError
from onnxpress.runtime_check import compare, random_feeds

from .test_compare import _NoisyTarget

F = onnx.TensorProto.FLOAT


def _mlp(w2_shift: float = 0.0) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 16)).astype(np.float32) / 3
    w2 = rng.standard_normal((16, 10)).astype(np.float32) / 3
    w2[2, 3] += w2_shift
    nodes = [
        oh.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        oh.make_node("Relu", ["h"], ["r"], name="relu"),
        oh.make_node("MatMul", ["r", "w2"], ["logits"], name="fc2"),
        oh.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    g = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", F, ["N", 8])],
                      [oh.make_tensor_value_info("logits", F, ["N", 10]), oh.make_tensor_value_info("probs", F, ["N", 10])],
                      [nh.from_array(w1, "w1"), nh.from_array(w2, "w2")])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def failing_report():
    ref, bad = _mlp(), _mlp(1.5)
    feeds = random_feeds(ref, n=2, dim_sizes={"N": 16})
    return compare(ref, bad, feeds, targets=["cpu", _NoisyTarget()], measure_latency=True, latency_repeats=5,
                   localize=True, per_output={"probs": {"atol": 1e-3}})


def test_table_has_every_section(failing_report):
    text = failing_report.to_table()
    for part in ("logits", "probs", "arm64:cortex-a76", "criterion of 'probs'", "FAIL: 2 feed(s) on cpu, arm64:cortex-a76 (emulated)",
                 "cross-target", "note:", "latency on cpu", "[emulated: not representative]", "size:",
                 "localization on cpu", "first departing tensor: 'logits' = MatMul node 'fc2'", "worst layers"):
        assert part in text, part


def test_json_and_markdown(failing_report, tmp_path):
    d = json.loads(failing_report.write(tmp_path / "r.json").read_text())
    assert d["passed"] is False and d["kind"] == "fp32"
    assert {o["target"] for o in d["outputs"]} == {"cpu", "arm64:cortex-a76"}
    assert d["localization"]["first"]["node"] == "fc2"
    assert d["latency"][0]["reference"]["median_ms"] > 0
    assert d["outputs"][0]["top1"] is not None
    md = failing_report.write(tmp_path / "r.md").read_text()
    assert md.startswith("# onnxpress check")
    assert "**FAIL**" in md and "## Localization" in md and "## Cross-target" in md
    assert re.search(r"\| \d+ \| MatMul \| fc2 \| logits \|", md)
    assert "emulated: not representative" in md
    with pytest.raises(InputError, match="unknown report format"):
        failing_report.write(tmp_path / "r.txt")


def test_html_is_self_contained(failing_report):
    page = failing_report.to_html()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") >= 5  # 2 output plots, the layer plot, size, 2 latency plots
    for bad in ("<script", "<link", "src=", "href=", "@import", "url("):
        assert bad not in page
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"] * page.count("<svg")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_html_renders_its_plots_in_headless_chromium(failing_report, tmp_path):
    from PIL import Image

    html_path = failing_report.write(tmp_path / "report.html")
    png = tmp_path / "shot.png"
    base = [_chromium(), *_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    r = subprocess.run([*base, f"--screenshot={png}", "--window-size=1280,2000", html_path.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert png.is_file(), r.stderr[-2000:]
    dom = subprocess.run([*base, "--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120).stdout
    # After rendering, the DOM holds the plots and their marks.
    assert dom.count("<svg") >= 5
    assert len(re.findall(r'<rect class="bar"', dom)) >= 10
    assert '<polyline class="series"' in dom and 'id="layer-plot"' in dom

    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert img.shape[:2] == (2000, 1280)
    assert img.std() > 10  # not blank

    def pixels(rgb: str, region=None) -> int:
        target = np.array([int(rgb[i : i + 2], 16) for i in (1, 3, 5)])
        sub = img if region is None else img[region]
        return int((np.abs(sub - target).sum(axis=2) < 40).sum())

    # Bars of failing outputs (red), of the size/latency plots (blue, grey), the
    # layer curve (blue), threshold markers (orange): drawn, not just declared.
    assert pixels("#c0392b") > 500
    assert pixels("#3366cc") > 500
    assert pixels("#888888") > 200
    assert pixels("#e67e22") > 50
    # The output plots are at the top of the page: colored pixels there.
    top = (slice(0, 500), slice(0, 1280))
    assert pixels("#c0392b", top) > 200
