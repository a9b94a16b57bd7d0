"""runtime_check.latency: median/p90 from per-run times, emulated timings never
compared, sizes on disk (external data included) and gzip-compressed."""
from __future__ import annotations

import gzip

import numpy as np
import onnx
import pytest

from onnxpress.runtime_check import random_feeds
from onnxpress.runtime_check.latency import Timing, latency_from_times, measure, model_sizes
from onnxpress.runtime_check.targets import get_target


def _model(n: int = 64) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, n])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n])],
        [onnx.numpy_helper.from_array(w, "w")],
    )
    return onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)


def test_timing_median_and_p90():
    t = Timing.from_seconds([0.001 * k for k in range(1, 11)])
    assert t.median_ms == pytest.approx(5.5) and t.p90_ms == pytest.approx(9.1) and t.min_ms == pytest.approx(1.0)
    assert t.runs == 10
    assert Timing.from_seconds([]).runs == 0


def test_emulated_timings_are_not_representative():
    native = latency_from_times("cpu", False, 1, [0.002] * 5, [0.001] * 5)
    assert native.speedup == pytest.approx(2.0) and native.representative
    emu = latency_from_times("arm64:neoverse-n1", True, 1, [0.2] * 5, [0.1] * 5)
    assert emu.speedup is None and not emu.to_dict()["representative"]


def test_measure_on_cpu_with_threads():
    m = _model()
    lat = measure(get_target("cpu"), m, m, random_feeds(m, n=1)[0], repeats=7, threads=2)
    assert lat.threads == 2 and lat.reference.runs == 7 and lat.candidate.runs == 7
    assert 0 < lat.reference.median_ms <= lat.reference.p90_ms


def test_model_sizes_from_files_with_external_data(tmp_path):
    m = _model(256)
    plain = tmp_path / "plain.onnx"
    onnx.save(m, plain)
    ext = tmp_path / "ext.onnx"
    onnx.save(m, ext, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    assert ext.stat().st_size < 1000
    sizes = model_sizes(m, m, plain, ext)
    assert sizes["reference"]["disk"] == plain.stat().st_size
    assert sizes["candidate"]["disk"] == ext.stat().st_size + (tmp_path / "ext.onnx.data").stat().st_size
    m = _model(256)  # onnx.save moved the weights of the first one out
    data = m.SerializeToString()
    in_memory = model_sizes(m, data)
    assert in_memory["reference"]["disk"] == len(data) == in_memory["candidate"]["disk"]
    assert in_memory["reference"]["gzip"] == len(gzip.compress(data, compresslevel=6))
