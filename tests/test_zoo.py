"""``onnxpress zoo``: a folder of models, one worker process each, atomic results,
--resume, --calib-map, timeouts and crashes, JSON/CSV reports, and the Ray path.

The real-model tests build a zoo folder with the five real ONNX models of
shared/MODELS.md (ddddocr stored with an external-data file), a truncated model
and a file that is not ONNX: 5 successes and 2 clear failures. Each model is
checked on its real inputs, given through a calibration map.
"""
from __future__ import annotations

import csv
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxpress import zoo
from onnxpress.cli import main
from onnxpress.demo import load_demo
from onnxpress.errors import InputError

# Fields that depend on timing, not on the work.
_TIMING = {"seconds", "seconds_passes", "latency_ms_before", "latency_ms_after", "resumed"}


def _report(out: Path) -> dict:
    return json.loads((out / "zoo-report.json").read_text())


def _files(out: Path) -> list[str]:
    """Every file under ``out`` except the zoo's own state and reports."""
    return sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and zoo.STATE_DIR not in p.parts and not p.name.startswith("zoo-report.")
    )


def _save_npz_folder(folder: Path, feeds: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, feed in enumerate(feeds):
        np.savez(folder / f"{i:03d}.npz", **feed)


# --------------------------------------------------------------------------
# The real zoo
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_zoo(tmp_path_factory):
    from onnxpress.testing import realmodels as rm

    base = tmp_path_factory.mktemp("zoo")
    models, calib = base / "models", base / "calib"
    models.mkdir()
    for name in ("magika", "silero_vad", "ppocr_det", "ppocr_rec"):
        shutil.copy(rm.fetch(name), models / f"{name}.onnx")
        _save_npz_folder(calib / name, rm.real_inputs(name, n=2, seed=0))
    # ddddocr (54 MB) with its weights in an external-data file beside it.
    (models / "ocr").mkdir()
    proto = onnx.load(str(rm.fetch("ddddocr")))
    onnx.save_model(
        proto, str(models / "ocr" / "ddddocr.onnx"), save_as_external_data=True,
        all_tensors_to_one_file=True, location="ddddocr.onnx.data", size_threshold=1024,
    )
    assert (models / "ocr" / "ddddocr.onnx.data").stat().st_size > 40e6
    _save_npz_folder(calib / "ddddocr", rm.real_inputs("ddddocr", n=2, seed=0))
    # Two broken files.
    (models / "broken").mkdir()
    rec_bytes = rm.fetch("ppocr_rec").read_bytes()
    (models / "broken" / "truncated.onnx").write_bytes(rec_bytes[: len(rec_bytes) // 2])
    (models / "broken" / "not_a_model.onnx").write_text("This is a README, not an ONNX model.\n" * 20)
    (base / "map.toml").write_text(
        textwrap.dedent(
            """\
            # glob (relative to the zoo folder) = calibration source (relative to this file)
            "magika.onnx" = "calib/magika"
            "silero_vad.onnx" = "calib/silero_vad"
            "ppocr_*.onnx" = "calib/ppocr_det"
            ["ocr/*.onnx"]
            calibration = "calib/ddddocr"
            limit = 2
            """
        )
    )
    # ppocr_rec needs its own data: an earlier, more specific glob wins.
    text = (base / "map.toml").read_text().replace(
        '"ppocr_*.onnx"', '"ppocr_rec.onnx" = "calib/ppocr_rec"\n"ppocr_*.onnx"'
    )
    (base / "map.toml").write_text(text)
    out = base / "out"
    argv = [
        "zoo", str(models), "-o", str(out), "--recipe", "lossless", "--calib-map", str(base / "map.toml"),
        "--workers", "2", "--timeout", "600", "--check-samples", "2", "--latency-repeats", "2",
    ]
    code = main(argv)
    return base, models, out, argv, code


@pytest.mark.real
def test_zoo_real_models_five_ok_two_failed(real_zoo, capsys):
    base, models, out, _, code = real_zoo
    assert code == 1  # some model failed
    report = _report(out)
    by = {r["model"]: r for r in report["models"]}
    assert report["counts"] == {"ok": 5, "failed": 2}, report["counts"]
    assert list(by) == sorted(by)  # discovery order
    ok = ["magika.onnx", "ocr/ddddocr.onnx", "ppocr_det.onnx", "ppocr_rec.onnx", "silero_vad.onnx"]
    assert sorted(k for k, r in by.items() if r["status"] == "ok") == ok
    for name in ok:
        r = by[name]
        assert r["check_passed"] is True and r["check_feeds"] == 2, r
        assert r["nodes_after"] < r["nodes_before"], r
        assert r["latency_ms_before"] > 0 and r["latency_ms_after"] > 0
        assert r["output_bytes"] > 0 and r["input_sha256"] and r["output_sha256"]
        assert r["calibration"].startswith("2 samples"), r["calibration"]
    # Clear failures: the exception type and the file at fault.
    trunc, junk = by["broken/truncated.onnx"], by["broken/not_a_model.onnx"]
    assert trunc["status"] == junk["status"] == "failed"
    assert trunc["error_type"] == junk["error_type"] == "ModelLoadError"
    assert "truncated.onnx" in trunc["error"] and "truncated" in trunc["error"]
    assert "not_a_model.onnx" in junk["error"] and "not an ONNX model" in junk["error"]
    # The external-data model was read with its data and written with external data.
    dd = by["ocr/ddddocr.onnx"]
    assert dd["input_bytes"] > 40e6
    # No partial output: exactly the five results (+ ddddocr's data), nothing of the
    # failures, no staging or temporary files.
    assert _files(out) == ["magika.onnx", "ocr/ddddocr.onnx", "ocr/ddddocr.onnx.data", "ppocr_det.onnx",
                           "ppocr_rec.onnx", "silero_vad.onnx"]
    assert not (out / zoo.STATE_DIR / "staging").exists()
    assert not [p for p in out.rglob(".*") if p.name != zoo.STATE_DIR and zoo.STATE_DIR not in p.parts]
    # Every result runs and equals the original on a real input.
    from onnxpress.testing import realmodels as rm

    for name in ok:
        short = Path(name).stem
        feed = rm.real_inputs(short, n=1, seed=3)[0]
        a = ort.InferenceSession(str(models / name), providers=["CPUExecutionProvider"]).run(None, feed)
        b = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"]).run(None, feed)
        for x, y in zip(a, b):
            np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)
    # The CSV report has the same rows.
    rows = list(csv.DictReader((out / "zoo-report.csv").open()))
    assert [r["model"] for r in rows] == list(by)
    assert [r["status"] for r in rows] == [by[k]["status"] for k in by]
    assert set(zoo.FIELDS) <= set(rows[0])


@pytest.mark.real
def test_zoo_resume_does_no_work(real_zoo, monkeypatch, capsys):
    base, models, out, argv, _ = real_zoo
    before = {p: (out / p).stat().st_mtime_ns for p in _files(out)}
    first = _report(out)

    def no_work(*a, **k):
        raise AssertionError("--resume started a worker")

    monkeypatch.setattr(zoo, "_run_local", no_work)
    monkeypatch.setattr(zoo, "run_job", no_work)
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 1  # the two failures are still failures
    summary = capsys.readouterr().out
    assert "7 resumed" in summary
    again = _report(out)
    assert all(r["resumed"] for r in again["models"])
    strip = lambda rep: [{k: v for k, v in r.items() if k not in _TIMING} for r in rep["models"]]  # noqa: E731
    assert strip(again) == strip(first)
    assert {p: (out / p).stat().st_mtime_ns for p in _files(out)} == before
    # A changed input is redone; the others are still skipped.
    monkeypatch.undo()
    original = (models / "magika.onnx").read_bytes()
    proto = onnx.load(str(models / "magika.onnx"))
    proto.doc_string = "changed"
    onnx.save(proto, str(models / "magika.onnx"))
    try:
        assert main([*argv, "--resume"]) == 1
        third = {r["model"]: r for r in _report(out)["models"]}
        assert third["magika.onnx"]["resumed"] is False and third["magika.onnx"]["status"] == "ok"
        assert sum(r["resumed"] for r in third.values()) == 6
    finally:  # back to the first run's state, for the Ray comparison
        (models / "magika.onnx").write_bytes(original)
        assert main([*argv, "--resume"]) == 1
    assert strip(_report(out)) == strip(first)


@pytest.mark.real
def test_zoo_on_ray_gives_the_same_results(real_zoo, tmp_path):
    ray = pytest.importorskip("ray", reason="the Ray path needs 'pip install onnxpress[ray]'")
    base, models, out, argv, _ = real_zoo
    ray_out = tmp_path / "ray-out"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        argv_ray = [a if a != str(out) else str(ray_out) for a in argv]
        assert main([*argv_ray, "--ray", "auto"]) == 1
    finally:
        ray.shutdown()
    local, remote = _report(out), _report(ray_out)
    assert remote["executor"] == "ray:auto" and local["executor"] == "local"
    strip = lambda rep: [{k: v for k, v in r.items() if k not in _TIMING} for r in rep["models"]]  # noqa: E731
    assert strip(remote) == strip(local)
    assert _files(ray_out) == _files(out)
    for rel in _files(out):  # byte-identical results
        assert (ray_out / rel).read_bytes() == (out / rel).read_bytes(), rel


# --------------------------------------------------------------------------
# Small zoos built in code (no download)
# --------------------------------------------------------------------------


@pytest.fixture()
def small_zoo(tmp_path):
    model, x, _ = load_demo()
    models = tmp_path / "models"
    (models / "a").mkdir(parents=True)
    onnx.save(model, str(models / "mlp.onnx"))
    onnx.save(model, str(models / "a" / "hang.onnx"))
    onnx.save(model, str(models / "a" / "crash.onnx"))
    np.savez(tmp_path / "calib.npz", input=x[:4])
    (tmp_path / "feeds.py").write_text(
        textwrap.dedent(
            """\
            import os, signal, time

            def hang():
                time.sleep(3600)
                return []

            def crash():
                os.kill(os.getpid(), signal.SIGKILL)
            """
        )
    )
    (tmp_path / "map.toml").write_text(
        textwrap.dedent(
            """\
            "a/hang.onnx" = "feeds.py:hang"
            "a/crash.onnx" = "feeds.py:crash"
            "*" = "calib.npz"
            """
        )
    )
    return tmp_path, models


def test_zoo_timeout_and_crash_do_not_stop_the_others(small_zoo, capsys):
    base, models = small_zoo
    out = base / "out"
    code = main([
        "zoo", str(models), "-o", str(out), "--recipe", "edge-int8", "--calib-map", str(base / "map.toml"),
        "--workers", "3", "--timeout", "30", "--latency-repeats", "0",
    ])
    assert code == 1
    by = {r["model"]: r for r in _report(out)["models"]}
    assert by["mlp.onnx"]["status"] == "ok", by["mlp.onnx"]
    assert by["mlp.onnx"]["check_passed"] is True
    assert by["a/hang.onnx"]["status"] == "timeout" and "30 s" in by["a/hang.onnx"]["error"]
    assert by["a/crash.onnx"]["status"] == "crashed" and "SIGKILL" in by["a/crash.onnx"]["error"]
    assert _files(out) == ["mlp.onnx"]  # nothing partial of the killed workers
    summary = capsys.readouterr().out
    assert "1 ok" in summary and "1 timeout" in summary and "1 crashed" in summary
    # Timeouts and crashes are retried by --resume; the finished model is not.
    run = zoo.run_zoo(models, out, "edge-int8", calib_map=base / "map.toml", resume=True, timeout=5,
                      latency_repeats=0, workers=2)
    again = {r["model"]: r for r in run.records}
    assert again["mlp.onnx"]["resumed"] is True
    assert not again["a/hang.onnx"]["resumed"] and again["a/hang.onnx"]["status"] == "timeout"


def test_zoo_edge_int8_without_calibration_fails_clearly(tmp_path):
    model, _, _ = load_demo()
    (tmp_path / "m").mkdir()
    onnx.save(model, str(tmp_path / "m" / "mlp.onnx"))
    run = zoo.run_zoo(tmp_path / "m", tmp_path / "out", "edge-int8", workers=1, latency_repeats=0)
    (r,) = run.records
    assert r["status"] == "failed" and r["error_type"] == "InputError"
    assert "needs calibration" in r["error"]
    assert not run.ok and _files(tmp_path / "out") == []
    # --calib gives every model the same source.
    run = zoo.run_zoo(tmp_path / "m", tmp_path / "out", "edge-int8", calib="random:4", workers=1,
                      latency_repeats=0, resume=True)
    (r,) = run.records
    assert r["status"] == "ok" and "random" in r["calibration"]
    assert _files(tmp_path / "out") == ["mlp.onnx"]
    q = onnx.load(str(tmp_path / "out" / "mlp.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)


def test_zoo_removes_stale_output_of_a_model_that_now_fails(tmp_path):
    model, _, _ = load_demo()
    models, out = tmp_path / "m", tmp_path / "out"
    models.mkdir()
    onnx.save(model, str(models / "mlp.onnx"))
    assert zoo.run_zoo(models, out, "lossless", workers=1, latency_repeats=0).ok
    assert _files(out) == ["mlp.onnx"]
    (models / "mlp.onnx").write_bytes((models / "mlp.onnx").read_bytes()[:1000])
    run = zoo.run_zoo(models, out, "lossless", workers=1, latency_repeats=0, resume=True)
    assert run.records[0]["status"] == "failed" and _files(out) == []


def test_calib_map_errors_name_the_line(tmp_path):
    (tmp_path / "c").mkdir()
    m = tmp_path / "map.toml"
    m.write_text('"a*.onnx" = "c"\n\n["b*.onnx"]\ncalibration = "c"\nlimits = 3\n')
    with pytest.raises(InputError, match=r"map\.toml:5: unknown key 'limits' for 'b\*\.onnx'; valid keys: calibration, data, dims, limit"):
        zoo.load_calib_map(m)
    m.write_text('"a*.onnx" = "c"\n"b*.onnx" = "missing/"\n')
    with pytest.raises(InputError, match=r"map\.toml:2: calibration 'missing/': no such file or folder"):
        zoo.load_calib_map(m)
    m.write_text('"a*.onnx" = "c"\n"b*.onnx" = "random:4"\n"c.onnx" = "pkg.mod:fn"\n')
    entries = zoo.load_calib_map(m)
    assert [e.calibration for e in entries] == [str((tmp_path / "c").resolve()), "random:4", "pkg.mod:fn"]
    assert zoo._match(entries, "sub/a1.onnx", zoo.CalibEntry()).pattern == "a*.onnx"
    assert zoo._match(entries, "zzz.onnx", zoo.CalibEntry()).pattern == ""


def test_zoo_bad_invocations(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["zoo", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--recipe", "lossless"]) == 2
    assert "no .onnx models" in capsys.readouterr().err
    assert main(["zoo", str(tmp_path / "nope"), "-o", str(tmp_path / "o")]) == 2
    assert main(["zoo", str(tmp_path / "empty"), "-o", str(tmp_path / "empty")]) == 2
    assert "is the model folder" in capsys.readouterr().err
    assert main(["zoo", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--recipe", "nope"]) == 2


def test_input_hash_covers_external_data(tmp_path):
    model, _, _ = load_demo()
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
                    size_threshold=0)
    h = zoo.input_sha256(tmp_path / "m.onnx")
    data = bytearray((tmp_path / "m.onnx.data").read_bytes())
    data[-1] ^= 1
    (tmp_path / "m.onnx.data").write_bytes(bytes(data))
    assert zoo.input_sha256(tmp_path / "m.onnx") != h
    assert zoo._external_files(tmp_path / "m.onnx") == [tmp_path / "m.onnx.data"]
    (tmp_path / "x.onnx").write_text("junk")
    assert len(zoo.input_sha256(tmp_path / "x.onnx")) == 64


def test_run_job_skips_the_check_of_a_model_over_2gb(tmp_path, monkeypatch):
    # As if the model were over 2 GB: optimized and written, the check skipped and said so.
    model, _, _ = load_demo()
    onnx.save(model, str(tmp_path / "m.onnx"))
    monkeypatch.setattr(zoo, "CHECK_MAX_BYTES", 1000)
    from onnxpress.recipes import load_recipe

    recipe = load_recipe("lossless")
    (tmp_path / "stage").mkdir()
    job = zoo.ZooJob(str(tmp_path / "m.onnx"), "m.onnx", str(tmp_path / "stage"), recipe.text, recipe.source)
    rec = zoo.run_job(job)
    assert rec["status"] == "ok" and rec["check_passed"] is None
    assert rec["note"].startswith("check skipped: the model is over")
    assert rec["files"] == ["m.onnx"] and (tmp_path / "stage" / "m.onnx").is_file()


def test_zoo_on_ray_kills_hung_tasks_and_survives_crashes(small_zoo):
    ray = pytest.importorskip("ray", reason="the Ray path needs 'pip install onnxpress[ray]'")
    base, models = small_zoo
    out = base / "ray-out"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run = zoo.run_zoo(models, out, "edge-int8", calib_map=base / "map.toml", timeout=30,
                          latency_repeats=0, ray_address="auto")
    finally:
        ray.shutdown()
    by = {r["model"]: r for r in run.records}
    assert by["mlp.onnx"]["status"] == "ok"
    assert by["a/hang.onnx"]["status"] == "timeout" and "Ray task cancelled" in by["a/hang.onnx"]["error"]
    assert by["a/crash.onnx"]["status"] == "crashed", by["a/crash.onnx"]
    assert _files(out) == ["mlp.onnx"]
    assert json.loads(run.report_json.read_text())["executor"] == "ray:auto"


def test_zoo_check_failure_writes_the_model_and_fails_the_run(tmp_path, capsys):
    model, _, _ = load_demo()
    models = tmp_path / "m"
    models.mkdir()
    onnx.save(model, str(models / "mlp.onnx"))
    recipe = tmp_path / "strict.toml"
    recipe.write_text(
        'name = "strict"\n[[passes]]\nname = "quantize-int8"\n[calibration]\nrequired = true\n'
        "[check]\nmin_snr_db = 200\n"
    )
    code = main(["zoo", str(models), "-o", str(tmp_path / "out"), "--recipe", str(recipe), "--calib", "random:4",
                 "--latency-repeats", "0"])
    assert code == 1
    (r,) = _report(tmp_path / "out")["models"]
    assert r["status"] == "check_failed" and r["check_passed"] is False
    assert r["error"].startswith("check failed: output 'logits'")
    assert _files(tmp_path / "out") == ["mlp.onnx"]  # written, as `onnxpress optimize` does
    assert "1 check_failed" in capsys.readouterr().out
