"""Sensitivity analysis and the error budget of quantize-int8
(onnxpress.quant.sensitivity), on a small graph with one layer that int8 ruins."""
from __future__ import annotations

import logging
import math

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as nh
import pytest

from onnxpress.errors import InputError
from onnxpress.graph import load
from onnxpress.passes import Context, make_pass
from onnxpress.quant.sensitivity import output_error, parse_budget
from tests.conftest import run_ort

F = onnx.TensorProto.FLOAT


def _model():
    """x -> conv_a -> relu -> conv_b -> relu -> conv_c -> y.

    conv_a's output channel 0 is 500x larger than the others, and conv_b reads
    mostly the small channels: one per-tensor scale for that tensor wipes them out,
    so quantizing it (conv_a's output, conv_b's input) is what hurts."""
    rng = np.random.default_rng(0)
    wa = (rng.normal(size=(8, 3, 3, 3)) * 0.3).astype(np.float32)
    wa[0] *= 500.0
    wb = (rng.normal(size=(8, 8, 3, 3)) * 0.2).astype(np.float32)
    wb[:, 0] *= 1e-4
    wc = (rng.normal(size=(4, 8, 1, 1)) * 0.3).astype(np.float32)
    nodes = [
        oh.make_node("Conv", ["x", "Wa"], ["a"], pads=[1, 1, 1, 1], name="conv_a"),
        oh.make_node("Relu", ["a"], ["ra"], name="relu_a"),
        oh.make_node("Conv", ["ra", "Wb"], ["b"], pads=[1, 1, 1, 1], name="conv_b"),
        oh.make_node("Relu", ["b"], ["rb"], name="relu_b"),
        oh.make_node("Conv", ["rb", "Wc"], ["y"], name="conv_c"),
    ]
    g = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", F, [1, 3, 12, 12])],
        [oh.make_tensor_value_info("y", F, [1, 4, 12, 12])],
        [nh.from_array(wa, "Wa"), nh.from_array(wb, "Wb"), nh.from_array(wc, "Wc")],
    )
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


def _feeds(n, seed):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(1, 3, 12, 12)).astype(np.float32)} for _ in range(n)]


def _quantize(model, **options):
    m = load(onnx.ModelProto.FromString(model.SerializeToString()))
    p = make_pass("quantize-int8", equalize=False, **options)
    result = p.run(m, Context(calibration=_feeds(16, 1)))
    q = m.to_proto()
    onnx.checker.check_model(q, full_check=True)
    return q, result, p


def _snr(fp32, q, seed=5):
    feeds = _feeds(6, seed)
    ref = [run_ort(fp32, f, True) for f in feeds]
    got = [run_ort(q, f, True) for f in feeds]
    return output_error(ref, got)[0]


def top1(fp32_outputs, int8_outputs):
    """A user metric: channel argmax agreement of the first output."""
    return float(np.mean([(r[0].argmax(1) == g[0].argmax(1)).mean() for r, g in zip(fp32_outputs, int8_outputs)]))


def test_ranking_finds_the_sensitive_layers(caplog):
    m = _model()
    with caplog.at_level(logging.INFO, logger="onnxpress.quant.qdq"):
        q, result, p = _quantize(m, sensitivity=True)
    rows = p.sensitivity_table
    assert [r["node"] for r in rows][:2] in (["conv_a", "conv_b"], ["conv_b", "conv_a"])
    assert rows[-1]["node"] == "conv_c" and rows[-1]["snr_db"] > rows[0]["snr_db"] + 10
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert result.stats["sensitivity_layers"] == 3
    assert "sensitivity_kept_float" not in result.stats  # ranking only: nothing kept float
    assert result.stats["quantized_Conv"] == 3
    assert "conv_a" in caplog.text and "SNR alone dB" in caplog.text


def test_snr_budget_keeps_the_sensitive_layers_float():
    m = _model()
    q_all, _, _ = _quantize(m)
    q, result, p = _quantize(m, max_error="snr:30", max_float_fraction=1.0)
    st = result.stats
    assert st["sensitivity_budget_met"] == 1 and st["sensitivity_snr_db"] >= 30
    assert 1 <= st["sensitivity_kept_float"] <= 2 and st["quantized_Conv"] == 3 - st["sensitivity_kept_float"]
    kept = {n for n, _, why in p.report if why == "kept float by sensitivity"}
    assert kept and kept <= {"conv_a", "conv_b"}
    # On fresh inputs too, and far better than quantizing everything.
    assert _snr(m, q) >= 28 and _snr(m, q) > _snr(m, q_all) + 10


def test_cosine_budget_and_user_metric():
    m = _model()
    q, result, _ = _quantize(m, max_error="cosine:0.9999", max_float_fraction=1.0)
    assert result.stats["sensitivity_budget_met"] == 1 and result.stats["sensitivity_cosine"] >= 0.9999
    q, result, _ = _quantize(m, metric=f"{__name__}:top1", min_metric=0.99, max_float_fraction=1.0)
    st = result.stats
    assert st["sensitivity_budget_met"] == 1 and st["sensitivity_metric"] >= 0.99


def test_budget_capped_by_max_float_fraction(caplog):
    m = _model()
    with caplog.at_level(logging.WARNING):
        q, result, _ = _quantize(m, max_error="snr:200", max_float_fraction=0.34)
    st = result.stats
    assert st["sensitivity_kept_float"] == 1 and st["sensitivity_budget_met"] == 0
    assert "not met" in caplog.text


def test_parse_budget():
    b = parse_budget("snr:25, cosine:0.999")
    assert b.snr_db == 25 and b.cosine == 0.999 and b.active
    assert not parse_budget("").active
    assert b.met(26, 0.9995, None) and not b.met(24, 0.9995, None) and not b.met(26, 0.99, None)
    for bad in ("snr", "psnr:3", "cosine:2", "snr:x"):
        with pytest.raises(InputError):
            parse_budget(bad)
    with pytest.raises(InputError):
        parse_budget("", metric=f"{__name__}:top1")  # no min_metric
    with pytest.raises(InputError):
        parse_budget("", metric="no_such_module_xyz:f", min_metric=1)


def test_output_error():
    a = [[np.ones((2, 3), np.float32)]]
    assert output_error(a, a) == (math.inf, 1.0)
    b = [[np.ones((2, 3), np.float32) * 1.1]]
    snr, cos = output_error(a, b)
    assert snr == pytest.approx(20.0) and cos == pytest.approx(1.0)
    assert output_error(a, [[np.ones((3, 2), np.float32)]]) == (-math.inf, -1.0)


def test_skipped_above_the_weight_limit(caplog):
    m = _model()
    with caplog.at_level(logging.WARNING):
        q, result, p = _quantize(m, max_error="snr:30", sensitivity_max_mb=1e-6)
    assert result.stats["sensitivity_skipped"] == 1 and result.stats["quantized_Conv"] == 3
    assert "sensitivity_kept_float" not in result.stats and "skipped" in caplog.text
