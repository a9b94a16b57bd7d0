"""Check targets without emulation: cpu, ep:..., a runner (a local python as the
fake board), spec errors; and the arm64 setup's error paths."""
from __future__ import annotations

import ast
import platform
import shlex
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxpress.demo import load_demo
from onnxpress.errors import CheckError, InputError
from onnxpress.runtime_check import arm64, worker
from onnxpress.runtime_check.compare import make_session
from onnxpress.runtime_check.targets import (
    Job,
    JobResult,
    Target,
    TargetError,
    TargetRunError,
    available_providers,
    get_target,
)


@pytest.fixture(scope="module")
def mnist():
    model, x, _ = load_demo()
    name = model.graph.input[0].name
    return model.SerializeToString(), [{name: x[:16]}, {name: x[16:40]}]


def two_outputs() -> bytes:
    """y = x + 1, z = x * 2 (float32 [2, 3]), opset 17."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3]) for n in ("y", "z")]
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"]), helper.make_node("Mul", ["x", "two"], ["z"])],
        "two", [x], outs, initializer=[one, two],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def expected(model: bytes, feeds, level="disabled"):
    sess = make_session(model, level)
    return [sess.run(None, f) for f in feeds]


def assert_same(res: JobResult, want) -> None:
    assert res.error is None, res.error
    assert len(res.outputs) == len(want)
    for got_f, want_f in zip(res.outputs, want):
        for g, w in zip(got_f, want_f):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------ cpu and ep


def test_cpu_target_runs_both_levels_and_times(mnist):
    model, feeds = mnist
    t = get_target("cpu")
    assert isinstance(t, Target) and t.name == "cpu" and t.emulated is False
    res = t.run([Job(model, feeds, level="disabled"), Job(model, feeds, level="enabled", repeats=3)])
    assert_same(res[0], expected(model, feeds, "disabled"))
    assert_same(res[1], expected(model, feeds, "enabled"))
    assert res[0].output_names == ["logits"]
    assert res[0].times == [] and len(res[1].times) == 3 and all(s > 0 for s in res[1].times)
    assert res[0].providers == ["CPUExecutionProvider"]


def test_cpu_target_model_path_and_output_subset(tmp_path):
    path = tmp_path / "two.onnx"
    path.write_bytes(two_outputs())
    feeds = [{"x": np.arange(6, dtype=np.float32).reshape(2, 3)}]
    (res,) = get_target("cpu").run([Job(str(path), feeds, outputs=["z"])])
    assert res.error is None and res.output_names == ["z"]
    np.testing.assert_array_equal(res.outputs[0][0], feeds[0]["x"] * 2)
    (res,) = get_target("cpu").run([Job(path, feeds)])
    assert res.output_names == ["y", "z"]


def test_job_errors_are_per_job(mnist):
    model, feeds = mnist
    res = get_target("cpu").run([
        Job(b"not a model", feeds),
        Job(model, [{"nope": np.zeros((1, 784), np.float32)}]),
        Job(model, feeds),
    ])
    assert res[0].error.startswith("load:") and res[0].outputs == []
    assert res[1].error.startswith("run (feed 0):")
    assert res[2].error is None and len(res[2].outputs) == 2


def test_ep_target_with_available_provider(mnist):
    model, feeds = mnist
    assert "CPUExecutionProvider" in available_providers()
    t = get_target("ep:CPUExecutionProvider")
    assert t.name == "ep:CPUExecutionProvider" and not t.emulated
    (res,) = t.run([Job(model, feeds)])
    assert_same(res, expected(model, feeds))
    assert "CPUExecutionProvider" in res.providers


@pytest.mark.parametrize("provider", ["XnnpackExecutionProvider", "NoSuchExecutionProvider"])
def test_unknown_provider_is_an_error_listing_the_available(provider):
    if provider in available_providers():
        pytest.skip(f"{provider} is available here")
    with pytest.raises(TargetError) as err:
        get_target(f"ep:CPUExecutionProvider,{provider}")
    msg = str(err.value)
    assert provider in msg and "available" in msg
    for p in available_providers():
        assert p in msg
    assert isinstance(err.value, InputError)


@pytest.mark.parametrize(
    "spec, runner, words",
    [
        ("gpu", None, ["unknown target", "cpu", "arm64", "ep:"]),
        ("", None, ["unknown target"]),
        ("cpu:fast", None, ["unknown target"]),
        ("ep:", None, ["execution provider"]),
        ("arm64:cortex-z9", None, ["cortex-z9", "neoverse-n1", "cortex-a53"]),
        ("arm64:cortex-a53", "python3", ["board's own CPU"]),
        ("cpu", "python3", ["runner"]),
    ],
)
def test_bad_target_specs(spec, runner, words):
    with pytest.raises(TargetError) as err:
        get_target(spec, runner=runner)
    for w in words:
        assert w in str(err.value)


# ------------------------------------------------------------------ runner


def test_runner_target_with_local_python_as_fake_board(mnist, tmp_path):
    model, feeds = mnist
    path = tmp_path / "two.onnx"
    path.write_bytes(two_outputs())
    x = {"x": np.ones((2, 3), np.float32)}
    with get_target("arm64", runner=sys.executable) as t:
        assert t.name == f"runner:{sys.executable}" and t.emulated is False
        info = t.info
        assert info["machine"] == platform.machine() and "CPUExecutionProvider" in info["providers"]
        res = t.run([
            Job(model, feeds, level="disabled"),
            Job(model, feeds, level="enabled", repeats=2),
            Job(str(path), [x], outputs=["y"]),  # a path is sent as bytes
            Job(b"garbage", feeds),
        ])
        assert_same(res[0], expected(model, feeds, "disabled"))
        assert_same(res[1], expected(model, feeds, "enabled"))
        assert len(res[1].times) == 2
        assert res[2].output_names == ["y"] and np.array_equal(res[2].outputs[0][0], x["x"] + 1)
        assert res[3].error.startswith("load:")
        # one process serves the whole check
        (again,) = t.run([Job(model, feeds[:1])])
        assert again.error is None and t.info["pid"] == info["pid"]


def test_runner_through_a_remote_shell(mnist, tmp_path):
    """A fake ``ssh`` that, like ssh, joins its arguments and hands them to a shell:
    the bootstrap must survive that second parse."""
    model, feeds = mnist
    fake = tmp_path / "ssh"
    fake.write_text('#!/bin/sh\nshift\nexec sh -c "$*"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    runner = f"{shlex.quote(str(fake))} pi@board {shlex.quote(sys.executable)}"
    with get_target("arm64", runner=runner) as t:
        (res,) = t.run([Job(model, feeds)])
    assert_same(res, expected(model, feeds))


def test_runner_provider_missing_on_the_board(mnist):
    model, feeds = mnist
    with get_target("ep:NoSuchExecutionProvider", runner=sys.executable) as t:
        with pytest.raises(TargetError, match="NoSuchExecutionProvider.*available: .*CPUExecutionProvider"):
            t.run([Job(model, feeds)])


@pytest.mark.parametrize("runner", ["/nonexistent/python3", "false"])
def test_runner_that_cannot_start(runner, mnist):
    model, feeds = mnist
    t = get_target("arm64", runner=runner)
    with pytest.raises(TargetRunError) as err:
        t.run([Job(model, feeds)])
    assert "runner:" in str(err.value) and isinstance(err.value, CheckError)


def test_worker_dying_mid_batch_is_reported(mnist, tmp_path):
    """A board python that exits as soon as it gets a batch."""
    model, feeds = mnist
    fake = tmp_path / "dies"
    fake.write_text(
        f"#!{sys.executable}\nimport sys, runpy\n"
        "sys.argv = sys.argv[2:]\n"
        "import onnxpress.runtime_check.worker as w\n"
        "def boom(jobs):\n    import os; os._exit(3)\n"
        "w.run_jobs = boom\n"
        "r = sys.stdin.buffer; n = int(r.readline()); r.read(n)\n"
        "sys.exit(w.main())\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    t = get_target("arm64", runner=str(fake))
    with pytest.raises(TargetRunError, match="died during a batch.*exit 3"):
        t.run([Job(model, feeds)])


# ------------------------------------------------------------------ worker script


def test_worker_imports_only_onnxruntime_numpy_and_stdlib():
    tree = ast.parse(Path(worker.__file__).read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports in the worker"
            names.add(node.module.split(".")[0])
    assert names - set(sys.stdlib_module_names) <= {"onnxruntime", "numpy"}


def test_worker_npz_roundtrip():
    jobs = [{"model": b"\x01\x02", "feeds": [{"a": np.arange(3, dtype=np.int64), "s": np.array(["x", "yz"])}],
             "level": "enabled", "threads": 2, "repeats": 1, "outputs": ["o"], "providers": ["P"]},
            {"model": "/some/path.onnx", "feeds": [], "level": "disabled"}]
    back = worker.decode_request(worker.load_npz(worker.save_npz(worker.encode_request(jobs))))
    assert back[0]["model"] == b"\x01\x02" and back[1]["model"] == "/some/path.onnx"
    assert back[0]["feeds"][0]["a"].tolist() == [0, 1, 2] and back[0]["feeds"][0]["s"].tolist() == ["x", "yz"]
    assert (back[0]["level"], back[0]["threads"], back[0]["repeats"], back[0]["outputs"], back[0]["providers"]) == (
        "enabled", 2, 1, ["o"], ["P"])
    assert back[1]["providers"] == ["CPUExecutionProvider"]


# ------------------------------------------------------------------ arm64 setup (no download)


def test_arm64_setup_unknown_cpu_model(tmp_path):
    with pytest.raises(arm64.Arm64SetupError, match="'max'.*supported.*neoverse-n1"):
        arm64.setup_arm64(tmp_path, cpu_models=("max",), log=None)


def test_arm64_setup_without_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(arm64.shutil, "which", lambda name: None)
    monkeypatch.setattr(arm64, "_host_version", lambda dist: "1.0")
    with pytest.raises(arm64.Arm64SetupError) as err:
        arm64.setup_arm64(tmp_path, log=None)
    assert err.value.step == "apt" and "apt-get not found" in str(err.value)
    assert isinstance(err.value, InputError)


@pytest.mark.skipif(not arm64.shutil.which("apt-get"), reason="needs apt-get")
def test_arm64_setup_apt_download_failure(tmp_path, monkeypatch):
    # connection refused at once: apt-get update warns, apt-get download fails
    monkeypatch.setenv("ONNXPRESS_DEBIAN_MIRROR", "http://127.0.0.1:9/debian")
    monkeypatch.setenv("ONNXPRESS_DEBIAN_SECURITY_MIRROR", "http://127.0.0.1:9/debian-security")
    with pytest.raises(arm64.Arm64SetupError) as err:
        arm64._step_apt(tmp_path, log=lambda m: None)
    assert err.value.step in ("apt", "apt download") and "apt-get" in str(err.value)


def test_arm64_setup_pip_download_failure(tmp_path):
    with pytest.raises(arm64.Arm64SetupError) as err:
        arm64._step_wheels(tmp_path, tmp_path / "site", "0.0.0.1", "0.0.0.1", log=lambda m: None)
    assert err.value.step == "pip download" and "onnxruntime==0.0.0.1" in str(err.value)


def test_arm64_setup_glibc_check():
    assert arm64._check_glibc("2.36-9+deb12u4") == "2.36"
    with pytest.raises(arm64.Arm64SetupError, match="glibc 2.24.*2.28") as err:
        arm64._check_glibc("2.24-11+deb9u4")
    assert err.value.step == "glibc"


def test_arm64_setup_qemu_that_fails_to_start(tmp_path):
    with pytest.raises(arm64.Arm64SetupError) as err:
        arm64._probe_cpu(Path("/bin/false"), tmp_path, "cortex-a53")
    assert err.value.step == "qemu start" and "cortex-a53" in str(err.value)


def test_cpuinfo_text_matches_linux_format():
    # neoverse-n1 r4p1 with fp asimd atomics asimddp
    text = arm64.cpuinfo_text(0x414FD0C1, (1 << 0) | (1 << 1) | (1 << 8) | (1 << 20), 1 << 13, 2)
    blocks = text.strip().split("\n\n")
    assert len(blocks) == 2 and blocks[1].startswith("processor\t: 1")
    fields = dict(line.split(":", 1) for line in blocks[0].splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["Features"] == "fp asimd atomics asimddp i8mm"
    assert (fields["CPU implementer"], fields["CPU variant"], fields["CPU part"], fields["CPU revision"]) == (
        "0x41", "0x4", "0xd0c", "1")
    assert fields["CPU architecture"] == "8"


def test_guest_env_drops_host_leaks(monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/x")
    monkeypatch.setenv("LD_PRELOAD", "/x.so")
    monkeypatch.setenv("QEMU_CPU", "max")
    env = arm64.guest_env("/site")
    assert "PYTHONHOME" not in env and "LD_PRELOAD" not in env and "QEMU_CPU" not in env
    assert env["PYTHONPATH"] == "/site" and env["PYTHONNOUSERSITE"] == "1" and env["OPENBLAS_NUM_THREADS"] == "1"


def test_setup_cli_rejects_unknown_cpu(tmp_path, capsys):
    from onnxpress.cli import main

    assert main(["setup", "arm64", str(tmp_path), "--cpu", "cortex-z9"]) == 2
    err = capsys.readouterr().err
    assert "cortex-z9" in err and "neoverse-n1" in err


def test_runner_banner_before_hello_is_skipped(mnist, tmp_path):
    """A board whose login shell prints to stdout before python starts."""
    model, feeds = mnist
    fake = tmp_path / "board"
    fake.write_text(f'#!/bin/sh\necho "Welcome to the board"\nexec {shlex.quote(sys.executable)} "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    with get_target("arm64", runner=str(fake)) as t:
        (res,) = t.run([Job(model, feeds)])
    assert_same(res, expected(model, feeds))
