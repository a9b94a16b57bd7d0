"""The emulated aarch64 onnxruntime (shared/ARM.md): setup once per session
(cached in ``~/.cache/onnxpress/arm64`` or ``$ONNXPRESS_ARM64_DIR``), then the
bundled MNIST MLP and two real models, fp32 and QDQ int8, on two emulated CPU
models against the host's cpu target.

Agreement asserted (ARM.md's measurements):
- fp32: within 1e-5 absolute of x86 on every output;
- int8: every int8 tensor (the QuantizeLinear outputs, exposed as extra graph
  outputs) bit-exact or within one quantization step of x86; the float outputs
  within 1e-5;
- the NEON CPU models (neoverse-n1 with dotprod and fp16, cortex-a53 without)
  bit-identical to each other.

All jobs of a CPU model go to one worker process (one emulated start); the two
CPU models run in parallel.
"""
from __future__ import annotations

import platform
import shutil
import threading
import time

import numpy as np
import onnx
import pytest

import onnxpress
from onnxpress.demo import load_demo
from onnxpress.runtime_check.arm64 import load_arm64, setup_arm64
from onnxpress.runtime_check.targets import Job, get_target
from onnxpress.testing import realmodels as rm

pytestmark = pytest.mark.arm64

CPUS = ("neoverse-n1", "cortex-a53")
MIDR = {"neoverse-n1": "0x414fd0c1", "cortex-a53": "0x410fd034"}  # r4p1 and r0p4, as QEMU 7.2 reports
FP32_ATOL = 1e-5
LEVELS = ("disabled", "enabled")

if platform.machine().lower() in ("aarch64", "arm64"):
    pytest.skip("aarch64 host: arm64 targets run natively (covered by the cpu target tests)", allow_module_level=True)


@pytest.fixture(scope="session")
def arm64_setup():
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip("the arm64 emulator setup needs apt-get and dpkg-deb (a Debian-like host)")
    lines: list[str] = []
    start = time.perf_counter()
    rt = setup_arm64(cpu_models=CPUS, log=lines.append)
    return rt, lines, time.perf_counter() - start


def with_int8_tensors(model: onnx.ModelProto) -> tuple[bytes, list[str]]:
    """The model with every top-level QuantizeLinear output as an extra graph output."""
    m = onnx.ModelProto.FromString(model.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    inits = {t.name: t.data_type for t in m.graph.initializer}
    have = {o.name for o in m.graph.output}
    names = []
    for node in m.graph.node:
        if node.op_type != "QuantizeLinear" or node.output[0] in have:
            continue
        name = node.output[0]
        elem = types.get(name) or (inits.get(node.input[2]) if len(node.input) > 2 else None) or onnx.TensorProto.UINT8
        m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
        names.append(name)
    return m.SerializeToString(), names


@pytest.fixture(scope="module")
def cases():
    """name -> (kind, model bytes, feeds, int8 tensor names)."""
    out = {}
    model, x, _ = load_demo()
    inp = model.graph.input[0].name
    out["mnist"] = ("fp32", model.SerializeToString(), [{inp: x[:64]}, {inp: x[64:128]}], [])
    n_feeds = {"magika": 2, "silero_vad": 4}
    for name, n in n_feeds.items():
        path = rm.fetch(name)
        feeds = rm.real_inputs(name, n=n, seed=0)
        out[name] = ("fp32", path.read_bytes(), feeds, [])
        q = onnxpress.optimize(str(path), recipe="edge-int8", calibration=rm.real_inputs(name, n=8, seed=100)).model
        data, qnames = with_int8_tensors(q)
        assert qnames, f"{name}: no QuantizeLinear in the edge-int8 model"
        out[f"{name}_int8"] = ("int8", data, feeds, qnames)
    return out


@pytest.fixture(scope="module")
def results(arm64_setup, cases):
    """target name -> {(case, level): JobResult}; plus the targets' infos and wall times."""
    keys = [(c, lv) for c in cases for lv in LEVELS]
    jobs = [Job(cases[c][1], cases[c][2], level=lv) for c, lv in keys]
    # extra: timing and a per-job error under emulation
    jobs.append(Job(cases["mnist"][1], cases["mnist"][2][:1], level="enabled", repeats=2))
    jobs.append(Job(b"not an onnx model", cases["mnist"][2]))
    keys += [("mnist_timed", "enabled"), ("broken", "disabled")]
    out, infos, walls, errors = {}, {}, {}, []

    def run(spec: str) -> None:
        try:
            start = time.perf_counter()
            with get_target(spec) as t:
                res = t.run(jobs)
                infos[t.name] = dict(t.info, emulated=t.emulated)
            walls[t.name] = time.perf_counter() - start
            out[t.name] = dict(zip(keys, res))
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"arm64:{cpu}",)) for cpu in CPUS]
    for th in threads:
        th.start()
    run("cpu")
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return out, infos, walls


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


# ------------------------------------------------------------------ setup


def test_setup_reports_what_it_installed(arm64_setup):
    rt, lines, seconds = arm64_setup
    from importlib.metadata import version

    v = rt.versions
    assert v["onnxruntime"] == version("onnxruntime") and v["numpy"] == version("numpy")
    assert v["qemu"].startswith("7.2") and v["python"].startswith("3.11") and v["glibc"] >= "2.28"
    assert "CPUExecutionProvider" in v["providers"]
    last = lines[-1]
    for word in ("QEMU", v["qemu"], "CPython", v["python"], "onnxruntime", v["onnxruntime"], "numpy", v["numpy"]):
        assert word in last, last
    print(f"\narm64 setup: {seconds:.1f} s; " + "\n".join(lines))


def test_cpuinfo_per_cpu_model(arm64_setup):
    rt, _, _ = arm64_setup
    for cpu in CPUS:
        assert rt.cpu_models[cpu]["midr"] == MIDR[cpu]
        text = (rt.view(cpu) / "proc" / "cpuinfo").read_text()
        part = f"0x{int(MIDR[cpu], 16) >> 4 & 0xFFF:03x}"
        assert f"CPU part\t: {part}" in text and "CPU implementer\t: 0x41" in text
    n1 = rt.cpu_models["neoverse-n1"]["features"].split()
    a53 = rt.cpu_models["cortex-a53"]["features"].split()
    assert {"fp", "asimd", "asimddp", "fphp", "asimdhp", "atomics"} <= set(n1)
    assert {"fp", "asimd"} <= set(a53) and not {"asimddp", "fphp", "atomics"} & set(a53)


def test_setup_is_idempotent_and_fast(arm64_setup):
    rt, _, _ = arm64_setup
    lines: list[str] = []
    start = time.perf_counter()
    again = setup_arm64(rt.root, cpu_models=CPUS, log=lines.append)
    seconds = time.perf_counter() - start
    assert seconds < 5, seconds
    assert len(lines) == 1 and "nothing to do" in lines[0], lines
    assert again.versions == rt.versions and again.cpu_models == rt.cpu_models
    assert load_arm64(rt.root, CPUS) is not None


# ------------------------------------------------------------------ numerics


def test_targets_are_emulated_aarch64(results):
    _, infos, _ = results
    from importlib.metadata import version

    assert infos["cpu"]["emulated"] is False
    for cpu in CPUS:
        info = infos[f"arm64:{cpu}"]
        assert info["emulated"] is True and info["machine"] == "aarch64"
        assert info["onnxruntime"] == version("onnxruntime")


def test_every_job_ran(results, cases):
    out, _, _ = results
    for target, res in out.items():
        for (case, level), r in res.items():
            if case == "broken":
                assert r.error.startswith("load:"), (target, r.error)
                continue
            assert r.error is None, (target, case, level, r.error)
            assert r.providers[0] == "CPUExecutionProvider"
        timed = res[("mnist_timed", "enabled")]
        assert len(timed.times) == 2 and all(t > 0 for t in timed.times)


def test_fp32_agrees_with_x86(results, cases):
    out, _, _ = results
    worst = {}
    for cpu in CPUS:
        for case, (kind, *_rest) in cases.items():
            for lv in LEVELS:
                ref, got = out["cpu"][(case, lv)], out[f"arm64:{cpu}"][(case, lv)]
                assert got.output_names == ref.output_names
                for f_ref, f_got in zip(ref.outputs, got.outputs):
                    for name, r, g in zip(ref.output_names, f_ref, f_got):
                        assert r.shape == g.shape and r.dtype == g.dtype, (case, name)
                        if r.dtype.kind != "f":
                            continue
                        d = max_abs(r, g)
                        key = (case, lv, name)
                        worst[key] = max(worst.get(key, 0.0), d)
    print("\nmax |arm64 - x86| per float output:")
    for (case, lv, name), d in sorted(worst.items()):
        print(f"  {case:<16} {lv:<9} {name[:40]:<40} {d:.3g}")
    bad = {k: d for k, d in worst.items() if d > FP32_ATOL}
    assert not bad, bad


def test_int8_tensors_bit_exact_or_one_step(results, cases):
    out, _, _ = results
    summary = []
    for cpu in CPUS:
        for case, (kind, _m, _f, qnames) in cases.items():
            if kind != "int8":
                continue
            for lv in LEVELS:
                ref, got = out["cpu"][(case, lv)], out[f"arm64:{cpu}"][(case, lv)]
                total = exact = 0
                worst = 0
                for f_ref, f_got in zip(ref.outputs, got.outputs):
                    for name, r, g in zip(ref.output_names, f_ref, f_got):
                        if name not in qnames:
                            continue
                        assert r.dtype in (np.int8, np.uint8) and g.dtype == r.dtype, (name, r.dtype)
                        diff = np.abs(r.astype(np.int32) - g.astype(np.int32))
                        total += diff.size
                        exact += int(np.count_nonzero(diff == 0))
                        worst = max(worst, int(diff.max()) if diff.size else 0)
                summary.append((cpu, case, lv, worst, exact, total))
                assert worst <= 1, (cpu, case, lv, worst)
    print("\nint8 tensors arm64 vs x86 (worst step, exact/total):")
    for cpu, case, lv, worst, exact, total in summary:
        print(f"  {cpu:<12} {case:<16} {lv:<9} worst {worst}  exact {exact}/{total}")


def test_neon_cpu_models_are_bit_identical(results, cases):
    out, _, _ = results
    a, b = (out[f"arm64:{cpu}"] for cpu in CPUS)
    for key in a:
        if key[0] == "broken":
            continue
        for f_a, f_b in zip(a[key].outputs, b[key].outputs):
            for name, x, y in zip(a[key].output_names, f_a, f_b):
                assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), (key, name, max_abs(x, y))


def test_wall_times(results):
    _, infos, walls = results
    print("\nwall time per target (start + all jobs): " + ", ".join(f"{k} {v:.1f} s" for k, v in walls.items()))
    print("worker start: " + ", ".join(f"{k} {v.get('start_s', 0):.1f} s" for k, v in infos.items() if "start_s" in v))
