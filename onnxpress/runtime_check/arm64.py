"""An emulated aarch64 onnxruntime on an x86 host: the official PyPI aarch64
wheels of ``onnxruntime`` and ``numpy`` under Debian's arm64 CPython 3.11, run
through ``qemu-aarch64-static`` (user-mode emulation; no root, chroot, binfmt
or ``dpkg --add-architecture`` needed).

:func:`setup_arm64` builds it in one folder (``~/.cache/onnxpress/arm64``, or
``$ONNXPRESS_ARM64_DIR``, or the ``dir`` argument), in steps, each stamped so
that a second call only verifies (and says so), and a changed input (another
host onnxruntime or numpy version, a new CPU model) redoes only its own step:

1. ``apt``: a private apt state in ``DIR/apt`` (own sources list, lists, cache,
   status; architectures amd64 and arm64), ``apt-get update`` into it, then
   ``apt-get download`` of ``qemu-user-static`` (Debian bookworm, QEMU 7.2) and
   the 11 arm64 packages a python + numpy + onnxruntime process opens.
2. ``qemu``: ``usr/bin/qemu-aarch64-static`` extracted from its .deb.
3. ``sysroot``: the arm64 packages extracted with ``dpkg-deb -x``; glibc must
   be at least 2.28 (the onnxruntime wheel is manylinux_2_28 only); the
   stdlib's ``.pyc`` precompiled with the host's CPython 3.11 (same magic), else
   every emulated start recompiles it.
4. ``wheels``: ``pip install --target DIR/site-ORT-NP --platform
   manylinux_2_28_aarch64`` of ``onnxruntime`` and ``numpy`` pinned to the
   host's versions.
5. ``views``: one view of the sysroot per CPU model (``DIR/views/MODEL``:
   symlinks to the sysroot plus its own ``proc/cpuinfo``). QEMU 7.2 passes the
   host's x86 ``/proc/cpuinfo`` through, and ``import onnxruntime`` segfaults
   parsing it; QEMU's ``-L`` prefix is consulted for ``/proc`` paths too, so an
   arm64 cpuinfo there fixes it. Its MIDR and feature list are *read from the
   emulator itself* (``mrs x0, midr_el1`` run through ctypes in the guest, and
   ``AT_HWCAP``/``AT_HWCAP2`` from ``/proc/self/auxv``), so onnxruntime's kernel
   selection sees the CPU that QEMU emulates.
6. ``verify``: the guest imports onnxruntime and numpy on every CPU model.

Timings under emulation are meaningless (fp32 is 100-600x slower than native);
use the runtime for correctness. See :mod:`onnxpress.runtime_check.targets`.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import InputError

__all__ = [
    "Arm64SetupError",
    "Arm64Runtime",
    "DEFAULT_CPU_MODELS",
    "SUPPORTED_CPU_MODELS",
    "ARM64_PACKAGES",
    "default_arm64_dir",
    "setup_arm64",
    "load_arm64",
    "cpuinfo_text",
    "guest_env",
]

#: Bump when the layout or a step changes, so old folders are rebuilt.
LAYOUT = 1

DEFAULT_CPU_MODELS = ("neoverse-n1", "cortex-a53")

#: CPU models of QEMU 7.2 (``qemu-aarch64 -cpu help``) worth emulating, with the
#: hardware each stands for. ``max`` is left out on purpose: under QEMU 7.2 it
#: enables SME, and onnxruntime's KleidiAI kernels then give wrong dynamic-int8
#: results there (an emulator bug). Models that only QEMU 10 knows (cortex-a55,
#: cortex-a710, neoverse-n2/v1) are not available with Debian bookworm's QEMU.
SUPPORTED_CPU_MODELS = {
    "neoverse-n1": "dotprod + fp16 arithmetic: AWS Graviton2, Ampere Altra",
    "cortex-a76": "dotprod + fp16 arithmetic: Raspberry Pi 5",
    "cortex-a72": "NEON only: Raspberry Pi 4",
    "cortex-a57": "NEON only: Jetson Nano/TX1",
    "cortex-a53": "NEON only, in-order (narrow-load kernels): Raspberry Pi 3, many cheap SoCs",
    "a64fx": "SVE-512 (Fujitsu A64FX)",
}

#: The arm64 packages of the sysroot: found by tracing which shared objects
#: python, numpy and onnxruntime open (numpy.load needs bz2 and lzma; ctypes
#: needs libffi).
ARM64_PACKAGES = (
    "libc6",
    "libgcc-s1",
    "libstdc++6",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "libbz2-1.0",
    "liblzma5",
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
)
QEMU_PACKAGE = "qemu-user-static"
DEBIAN_SUITE = "bookworm"
GUEST_PYTHON = "usr/bin/python3.11"
GUEST_PY_VERSION = "3.11"
WHEEL_PLATFORM = "manylinux_2_28_aarch64"
MIN_GLIBC = (2, 28)
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# Linux arm64 hwcap names in /proc/cpuinfo order (arch/arm64/kernel/cpuinfo.c):
# AT_HWCAP bits 0.., then AT_HWCAP2 bits 0..
_HWCAP_NAMES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc "
    "dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
).split()
_HWCAP2_NAMES = (
    "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm "
    "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 "
    "smeb16f32 smef32f32 smefa64 wfxt ebf16 sveebf16 cssc rprfm sve2p1 sme2 sme2p1 smei16i32 "
    "smebi32i32 smeb16b16 smef16f16 mops hbc"
).split()

# Run in the guest (no site, no onnxruntime): the MIDR through ``mrs x0,
# midr_el1; ret`` in an executable page called with ctypes, and the hwcaps that
# QEMU puts in the auxiliary vector.
_PROBE = r"""
import ctypes, json, mmap, platform, struct, sys
code = struct.pack('<II', 0xd5380000, 0xd65f03c0)  # mrs x0, midr_el1; ret
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
midr = ctypes.CFUNCTYPE(ctypes.c_uint64)(addr)()
aux = {}
raw = open('/proc/self/auxv', 'rb').read()
for i in range(0, len(raw) - 15, 16):
    k, v = struct.unpack_from('<QQ', raw, i)
    aux[k] = v
print(json.dumps({'midr': midr, 'hwcap': aux.get(16, 0), 'hwcap2': aux.get(26, 0),
                  'machine': platform.machine(), 'python': platform.python_version(),
                  'libc': platform.libc_ver()[1]}))
"""

_VERIFY = (
    "import json, platform, numpy, onnxruntime as ort; "
    "print(json.dumps({'python': platform.python_version(), 'machine': platform.machine(), "
    "'onnxruntime': ort.__version__, 'numpy': numpy.__version__, "
    "'providers': ort.get_available_providers()}))"
)


class Arm64SetupError(InputError):
    """A step of the arm64 emulator setup failed; the message names the step."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"arm64 setup, step {step!r}: {message}")
        self.step = step


def default_arm64_dir() -> Path:
    """``$ONNXPRESS_ARM64_DIR``, else ``~/.cache/onnxpress/arm64``."""
    env = os.environ.get("ONNXPRESS_ARM64_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "onnxpress" / "arm64"


def guest_env(site: Path | str | None = None) -> dict[str, str]:
    """The environment of an emulated guest process: the host's, minus what
    would leak host libraries or settings into it (PYTHONHOME, LD_PRELOAD,
    LD_LIBRARY_PATH, QEMU_*, PYTHON*), plus PYTHONPATH=site, no user site,
    no bytecode writes, single-threaded OpenBLAS."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("PYTHON") or k.startswith("QEMU_") or k in ("LD_PRELOAD", "LD_LIBRARY_PATH", "VIRTUAL_ENV"))
    }
    env.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1", OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return env


def cpuinfo_text(midr: int, hwcap: int, hwcap2: int, processors: int) -> str:
    """An arm64 ``/proc/cpuinfo`` (Linux format) for ``processors`` identical CPUs."""
    features = [n for i, n in enumerate(_HWCAP_NAMES) if hwcap >> i & 1]
    features += [n for i, n in enumerate(_HWCAP2_NAMES) if hwcap2 >> i & 1]
    block = (
        "BogoMIPS\t: 50.00\n"
        f"Features\t: {' '.join(features)}\n"
        f"CPU implementer\t: 0x{midr >> 24 & 0xFF:02x}\n"
        f"CPU architecture: 8\n"
        f"CPU variant\t: 0x{midr >> 20 & 0xF:x}\n"
        f"CPU part\t: 0x{midr >> 4 & 0xFFF:03x}\n"
        f"CPU revision\t: {midr & 0xF}\n"
    )
    return "".join(f"processor\t: {i}\n{block}\n" for i in range(processors))


def _host_cpus() -> int:
    """Number of possible CPUs of the host kernel (what cpuinfo readers size by)."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        top = max(int(part.split("-")[-1]) for part in text.split(","))
        return max(top + 1, os.cpu_count() or 1)
    except (OSError, ValueError):
        return os.cpu_count() or 1


@dataclass
class Arm64Runtime:
    """A ready emulated aarch64 python with onnxruntime (see :func:`setup_arm64`).

    Attributes:
        root: the setup folder.
        qemu: the ``qemu-aarch64-static`` binary.
        sysroot: the arm64 sysroot (glibc, CPython 3.11).
        site: the folder of the aarch64 onnxruntime and numpy (guest PYTHONPATH).
        versions: what is installed: ``qemu``, ``python``, ``glibc``,
            ``onnxruntime``, ``numpy``, and ``packages`` (Debian name -> version).
        cpu_models: CPU models that have a view (name -> {"midr": hex, "features": str}).
    """

    root: Path
    qemu: Path
    sysroot: Path
    site: Path
    versions: dict = field(default_factory=dict)
    cpu_models: dict = field(default_factory=dict)

    def view(self, cpu: str) -> Path:
        """The sysroot view of CPU model ``cpu`` (QEMU's ``-L`` prefix)."""
        if cpu not in self.cpu_models:
            raise Arm64SetupError("views", f"CPU model {cpu!r} is not set up in {self.root}; set up: "
                                  f"{', '.join(self.cpu_models) or 'none'}")
        return self.root / "views" / cpu

    def python_command(self, cpu: str, *args: str) -> list[str]:
        """argv running the guest CPython 3.11 on emulated CPU ``cpu``."""
        view = self.view(cpu)
        return [str(self.qemu), "-cpu", cpu, "-L", str(view), str(view / GUEST_PYTHON), *args]

    def env(self) -> dict[str, str]:
        """Environment for :meth:`python_command`."""
        return guest_env(self.site)

    def run_python(self, cpu: str, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """Run ``python -c code`` in the guest; returns the completed process (text)."""
        return subprocess.run(self.python_command(cpu, "-c", code), env=self.env(), capture_output=True,
                              text=True, timeout=timeout)

    def describe(self) -> str:
        v = self.versions
        cpus = ", ".join(f"{c} (MIDR {m['midr']})" for c, m in self.cpu_models.items())
        return (f"arm64 runtime in {self.root}: QEMU {v.get('qemu')}, CPython {v.get('python')} "
                f"(glibc {v.get('glibc')}), onnxruntime {v.get('onnxruntime')}, numpy {v.get('numpy')}; "
                f"CPU models: {cpus}")


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _tail(text: str | bytes | None, lines: int = 8) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " | ".join((text or "").strip().splitlines()[-lines:])


def _run(step: str, argv: Sequence[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        res = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    except FileNotFoundError as exc:
        raise Arm64SetupError(step, f"{what}: {argv[0]} not found ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise Arm64SetupError(step, f"{what}: timed out after {exc.timeout:.0f} s") from exc
    if res.returncode != 0:
        raise Arm64SetupError(step, f"{what} failed (exit {res.returncode}): {_tail(res.stderr or res.stdout)}")
    return res


def _host_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError as exc:
        raise Arm64SetupError("wheels", f"{dist} is not installed on the host, so there is no version to pin") from exc


def _stamp_ok(path: Path, want: dict) -> bool:
    try:
        return json.loads(path.read_text()) == want
    except (OSError, ValueError):
        return False


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _debian_mirrors() -> tuple[str, str]:
    """(main, security) Debian archive URLs: ``$ONNXPRESS_DEBIAN_MIRROR`` /
    ``$ONNXPRESS_DEBIAN_SECURITY_MIRROR``, else the host's own Debian sources
    (a mirror or proxy the host can reach), else deb.debian.org."""
    main = os.environ.get("ONNXPRESS_DEBIAN_MIRROR")
    sec = os.environ.get("ONNXPRESS_DEBIAN_SECURITY_MIRROR")
    found: list[str] = []
    files = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for f in files:
        if not (f.name.endswith(".list") or f.name.endswith(".sources")):
            continue
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("URIs:"):
                found += line[5:].split()
            elif line.startswith("deb "):
                found += [w for w in line.split()[1:] if "://" in w][:1]
    debian = [u.rstrip("/") for u in found if re.search(r"/debian(-security)?/?$", u)]
    main = main or next((u for u in debian if not u.endswith("-security")), "http://deb.debian.org/debian")
    sec = sec or next((u for u in debian if u.endswith("-security")), "http://deb.debian.org/debian-security")
    return main.rstrip("/"), sec.rstrip("/")


@contextlib.contextmanager
def _locked(root: Path):
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------


def _apt_options(apt: Path) -> list[str]:
    opts = {
        "Dir::State::Lists": apt / "lists",
        "Dir::State::Status": apt / "status",
        "Dir::Cache": apt / "cache",
        "Dir::Etc::SourceList": apt / "sources.list",
        "Dir::Etc::SourceParts": apt / "sources.list.d",
        "Dir::Etc::Preferences": apt / "preferences",
        "Dir::Etc::PreferencesParts": apt / "preferences.d",
        "Acquire::Languages": "none",
        "APT::Get::List-Cleanup": "false",
    }
    out = []
    for k, v in opts.items():
        out += ["-o", f"{k}={v}"]
    out += ["-o", "APT::Architecture=amd64", "-o", "APT::Architectures::=amd64", "-o", "APT::Architectures::=arm64"]
    if os.geteuid() == 0:  # apt would drop to _apt, which cannot write under /root
        out += ["-o", "APT::Sandbox::User=root"]
    return out


def _check_apt_tools() -> None:
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise Arm64SetupError("apt", f"{tool} not found: the arm64 emulator setup needs a Debian-like host "
                                  "(apt-get and dpkg-deb download and unpack Debian's qemu and arm64 python)")
    if not Path(KEYRING).exists():
        raise Arm64SetupError("apt", f"{KEYRING} is missing (Debian package debian-archive-keyring); it "
                              "verifies the Debian archive")


def _step_apt(root: Path, log: Callable[[str], None]) -> dict[str, Path]:
    """Download the .debs with a private apt state; returns {package: deb path}."""
    step = "apt"
    _check_apt_tools()
    apt = root / "apt"
    debs = root / "debs"
    _rmtree(apt)
    _rmtree(debs)
    for d in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d"):
        (apt / d).mkdir(parents=True, exist_ok=True)
    debs.mkdir(parents=True)
    (apt / "status").write_text("")
    main, sec = _debian_mirrors()
    opt = f"[arch=amd64,arm64 signed-by={KEYRING}]"
    (apt / "sources.list").write_text(
        f"deb {opt} {main} {DEBIAN_SUITE} main\n"
        f"deb {opt} {main} {DEBIAN_SUITE}-updates main\n"
        f"deb {opt} {sec} {DEBIAN_SUITE}-security main\n"
    )
    opts = _apt_options(apt)
    log(f"  apt: updating a private package list ({main}, {DEBIAN_SUITE}, amd64+arm64)")
    _run(step, ["apt-get", "-q", *opts, "update"], "apt-get update", timeout=900)
    pkgs = [f"{QEMU_PACKAGE}:amd64"] + [f"{p}:arm64" for p in ARM64_PACKAGES]
    log(f"  apt: downloading {len(pkgs)} packages")
    _run("apt download", ["apt-get", "-q", *opts, "download", *pkgs], "apt-get download", cwd=debs, timeout=1800)
    found: dict[str, Path] = {}
    for deb in debs.glob("*.deb"):
        found[deb.name.split("_", 1)[0]] = deb
    missing = [p for p in [QEMU_PACKAGE, *ARM64_PACKAGES] if p not in found]
    if missing:
        raise Arm64SetupError("apt download", f"apt-get download did not fetch {', '.join(missing)}")
    _rmtree(apt / "lists")  # ~90 MB of package lists, not needed any more
    return found


def _deb_field(deb: Path, name: str) -> str:
    return _run("apt download", ["dpkg-deb", "-f", str(deb), name], f"dpkg-deb -f {deb.name}").stdout.strip()


def _step_qemu(root: Path, deb: Path) -> str:
    step = "qemu"
    out = root / "qemu"
    _rmtree(out)
    out.mkdir(parents=True)
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
    if proc.returncode != 0:
        raise Arm64SetupError(step, f"dpkg-deb --fsys-tarfile {deb.name} failed: {_tail(proc.stderr)}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        member = next((m for m in tar.getmembers() if m.name.lstrip("./") == "usr/bin/qemu-aarch64-static"), None)
        if member is None:
            raise Arm64SetupError(step, f"{deb.name} has no usr/bin/qemu-aarch64-static")
        data = tar.extractfile(member).read()
    binary = out / "qemu-aarch64-static"
    binary.write_bytes(data)
    binary.chmod(0o755)
    return _deb_field(deb, "Version")


def _qemu_version(qemu: Path) -> str:
    res = _run("qemu", [str(qemu), "-version"], "qemu-aarch64-static -version", timeout=30)
    m = re.search(r"version (\S+)", res.stdout)
    return m.group(1) if m else res.stdout.strip().splitlines()[0]


def _check_glibc(libc6_version: str) -> str:
    """The glibc version (``2.36``) of a Debian libc6 version (``2.36-9+deb12u4``),
    checked against the wheels' manylinux_2_28 floor."""
    glibc = libc6_version.split(":")[-1].split("-", 1)[0]
    m = re.match(r"(\d+)\.(\d+)", glibc)
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_GLIBC:
        raise Arm64SetupError("glibc", f"the arm64 sysroot has glibc {glibc}, but the onnxruntime aarch64 wheel "
                              f"is manylinux_2_28 and needs glibc >= {MIN_GLIBC[0]}.{MIN_GLIBC[1]}")
    return glibc


def _step_sysroot(root: Path, debs: dict[str, Path], log: Callable[[str], None]) -> dict:
    step = "sysroot"
    final = root / "sysroot"
    tmp = root / "sysroot.tmp"
    _rmtree(tmp)
    tmp.mkdir(parents=True)
    packages = {}
    for name in ARM64_PACKAGES:
        _run(step, ["dpkg-deb", "-x", str(debs[name]), str(tmp)], f"dpkg-deb -x {debs[name].name}")
        packages[name] = _deb_field(debs[name], "Version")
    glibc = _check_glibc(packages["libc6"])
    if not (tmp / GUEST_PYTHON).exists():
        raise Arm64SetupError(step, f"python3.11-minimal did not provide {GUEST_PYTHON}")
    stdlib = tmp / "usr" / "lib" / f"python{GUEST_PY_VERSION}"
    if sys.version_info[:2] == (3, 11):
        log("  sysroot: precompiling the stdlib with the host's CPython 3.11")
        # Some files (lib2to3 test data) are not Python 3 on purpose: ignore the exit code.
        subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", "-d", f"/usr/lib/python{GUEST_PY_VERSION}",
                        str(stdlib)], capture_output=True)
    _rmtree(final)
    os.replace(tmp, final)
    return {"packages": packages, "glibc": glibc}


def _compile_in_guest(rt: Arm64Runtime, paths: Iterable[Path]) -> None:
    """Precompile with the guest itself (when the host Python is not 3.11)."""
    cmd = [str(rt.qemu), "-cpu", "cortex-a72", "-L", str(rt.sysroot), str(rt.sysroot / GUEST_PYTHON),
           "-m", "compileall", "-q", *map(str, paths)]
    subprocess.run(cmd, env={**guest_env(), "PYTHONDONTWRITEBYTECODE": ""}, capture_output=True, timeout=1800)


def _step_wheels(root: Path, site: Path, ort_version: str, np_version: str, log: Callable[[str], None]) -> None:
    tmp = site.with_name(site.name + ".tmp")
    _rmtree(tmp)
    reqs = [f"onnxruntime=={ort_version}", f"numpy=={np_version}"]
    log(f"  wheels: pip install --platform {WHEEL_PLATFORM} {' '.join(reqs)}")
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
            "--no-deps", "--target", str(tmp), "--only-binary=:all:", "--platform", WHEEL_PLATFORM,
            "--python-version", GUEST_PY_VERSION, "--implementation", "cp", *reqs]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise Arm64SetupError("pip download", "pip timed out") from exc
    if res.returncode != 0:
        raise Arm64SetupError("pip download", f"no {WHEEL_PLATFORM} CPython {GUEST_PY_VERSION} wheels of "
                              f"{' '.join(reqs)} could be downloaded (pinned to the host's versions): "
                              f"{_tail(res.stderr or res.stdout, 4)}")
    for old in root.glob("site-*"):
        if old.is_dir() and old != tmp:
            _rmtree(old)
    os.replace(tmp, site)


def _probe_cpu(qemu: Path, sysroot: Path, cpu: str) -> dict:
    cmd = [str(qemu), "-cpu", cpu, "-L", str(sysroot), str(sysroot / GUEST_PYTHON), "-S", "-c", _PROBE]
    try:
        res = subprocess.run(cmd, env=guest_env(), capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Arm64SetupError("qemu start", f"qemu-aarch64-static -cpu {cpu} could not run the guest python: {exc}")
    if res.returncode != 0:
        raise Arm64SetupError("qemu start", f"qemu-aarch64-static -cpu {cpu} failed to run the guest python "
                              f"(exit {res.returncode}): {_tail(res.stderr)}")
    try:
        return json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise Arm64SetupError("qemu start", f"unexpected probe output on {cpu}: {res.stdout[-300:]!r}") from exc


def _make_view(root: Path, sysroot: Path, cpu: str, probe: dict) -> dict:
    view = root / "views" / cpu
    tmp = view.with_name(view.name + ".tmp")
    _rmtree(tmp)
    tmp.mkdir(parents=True)
    for entry in sysroot.iterdir():
        (tmp / entry.name).symlink_to(os.path.relpath(entry, tmp))
    (tmp / "proc").mkdir()
    text = cpuinfo_text(probe["midr"], probe["hwcap"], probe["hwcap2"], _host_cpus())
    (tmp / "proc" / "cpuinfo").write_text(text)
    _rmtree(view)
    os.replace(tmp, view)
    features = text.split("Features\t: ", 1)[1].split("\n", 1)[0]
    return {"midr": f"0x{probe['midr']:08x}", "hwcap": probe["hwcap"], "hwcap2": probe["hwcap2"],
            "features": features, "processors": _host_cpus()}


def _verify_guest(rt: Arm64Runtime, cpus: Sequence[str]) -> dict:
    def one(cpu: str) -> dict:
        try:
            res = rt.run_python(cpu, _VERIFY, timeout=300)
        except subprocess.TimeoutExpired as exc:
            raise Arm64SetupError("qemu start", f"-cpu {cpu}: import onnxruntime timed out") from exc
        if res.returncode != 0:
            sig = f" (signal {-res.returncode})" if res.returncode < 0 else ""
            raise Arm64SetupError("qemu start", f"-cpu {cpu}: the guest failed to import onnxruntime and numpy, "
                                  f"exit {res.returncode}{sig}: {_tail(res.stderr)}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    with ThreadPoolExecutor(max_workers=max(1, min(len(cpus), os.cpu_count() or 1))) as pool:
        infos = list(pool.map(one, cpus))
    return dict(zip(cpus, infos))


# --------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------


def _check_cpus(cpu_models: Iterable[str]) -> tuple[str, ...]:
    cpus = tuple(dict.fromkeys(cpu_models))
    bad = [c for c in cpus if c not in SUPPORTED_CPU_MODELS]
    if bad:
        raise Arm64SetupError("cpu models", f"unknown CPU model(s) {', '.join(map(repr, bad))}; supported (QEMU 7.2): "
                              f"{', '.join(SUPPORTED_CPU_MODELS)}")
    if not cpus:
        raise Arm64SetupError("cpu models", "no CPU model given")
    return cpus


def _site_name(ort_version: str, np_version: str) -> str:
    return f"site-ort{ort_version}-np{np_version}"


def load_arm64(dir: str | os.PathLike | None = None, cpu_models: Iterable[str] = ()) -> Arm64Runtime | None:
    """The runtime set up in ``dir`` if it is complete for the host's onnxruntime
    and numpy versions and has every one of ``cpu_models``; else ``None``.
    Only checks files (fast); runs nothing."""
    root = Path(dir).expanduser() if dir else default_arm64_dir()
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        want = (version("onnxruntime"), version("numpy"))
    except PackageNotFoundError:
        return None
    if manifest.get("layout") != LAYOUT or (manifest.get("onnxruntime"), manifest.get("numpy")) != want:
        return None
    rt = _runtime_from(root, manifest)
    if not rt.qemu.exists() or not (rt.sysroot / GUEST_PYTHON).exists() or not (rt.site / "onnxruntime").is_dir():
        return None
    for cpu in cpu_models:
        if cpu not in rt.cpu_models or not (root / "views" / cpu / "proc" / "cpuinfo").exists():
            return None
    return rt


def _runtime_from(root: Path, manifest: dict) -> Arm64Runtime:
    return Arm64Runtime(
        root=root,
        qemu=root / "qemu" / "qemu-aarch64-static",
        sysroot=root / "sysroot",
        site=root / _site_name(manifest.get("onnxruntime", "?"), manifest.get("numpy", "?")),
        versions={k: manifest.get(k) for k in ("qemu", "qemu_deb", "python", "glibc", "onnxruntime", "numpy",
                                                 "packages", "providers")},
        cpu_models=dict(manifest.get("cpu_models", {})),
    )


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def setup_arm64(
    dir: str | os.PathLike | None = None,
    cpu_models: Iterable[str] = DEFAULT_CPU_MODELS,
    log: Callable[[str], None] | None = print,
) -> Arm64Runtime:
    """Build (or verify) the emulated aarch64 onnxruntime; see the module doc.

    Args:
        dir: the setup folder (default ``$ONNXPRESS_ARM64_DIR`` or
            ``~/.cache/onnxpress/arm64``).
        cpu_models: QEMU CPU models to prepare a view for (see
            :data:`SUPPORTED_CPU_MODELS`); views already there are kept.
        log: called with one line per step (``None``: silent).

    Returns:
        The :class:`Arm64Runtime`.

    Raises:
        Arm64SetupError: a step failed; the message names it (``apt`` when
            apt-get or dpkg-deb are missing, ``apt download``, ``pip download``,
            ``glibc``, ``qemu start``, ``cpu models``).
    """
    user_log = log or (lambda _msg: None)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        user_log(f"[{time.perf_counter() - t_start:5.1f} s] {msg}" if msg.startswith("  ") else msg)

    cpus = _check_cpus(cpu_models)
    root = Path(dir).expanduser() if dir else default_arm64_dir()
    root = root.resolve()
    start = time.perf_counter()
    with _locked(root):
        ort_version, np_version = _host_version("onnxruntime"), _host_version("numpy")
        try:
            manifest = json.loads((root / "manifest.json").read_text())
        except (OSError, ValueError):
            manifest = {}
        if manifest.get("layout") != LAYOUT:
            manifest = {"layout": LAYOUT}
        did: list[str] = []
        qemu = root / "qemu" / "qemu-aarch64-static"
        sysroot = root / "sysroot"

        base_ok = qemu.exists() and (sysroot / GUEST_PYTHON).exists() and "packages" in manifest
        site = root / _site_name(ort_version, np_version)
        wheels_ok = (manifest.get("onnxruntime"), manifest.get("numpy")) == (ort_version, np_version) and (
            site / "onnxruntime"
        ).is_dir()
        if not base_ok:
            _check_apt_tools()
        # The wheels (pip, PyPI) download while apt works (Debian): independent steps.
        with ThreadPoolExecutor(max_workers=1) as pool:
            wheels = None if wheels_ok else pool.submit(_step_wheels, root, site, ort_version, np_version, log)
            if not base_ok:
                log(f"arm64 setup in {root}: downloading Debian {DEBIAN_SUITE}'s QEMU and arm64 CPython "
                    f"(about 50 MB) and the aarch64 wheels (about 70 MB)")
                debs = _step_apt(root, log)
                manifest["qemu_deb"] = _step_qemu(root, debs[QEMU_PACKAGE])
                manifest.update(_step_sysroot(root, debs, log))
                _rmtree(root / "debs")
                _rmtree(root / "views")
                manifest["cpu_models"] = {}
                _write_json(root / "manifest.json", manifest)
                did += ["qemu", "sysroot"]
            if wheels is not None:
                wheels.result()
                manifest.update(onnxruntime=ort_version, numpy=np_version)
                did.append("wheels")
        if not wheels_ok and sys.version_info[:2] != (3, 11):
            log("  host python is not 3.11: precompiling in the guest (slow, once)")
            _compile_in_guest(_runtime_from(root, manifest), [sysroot / "usr/lib/python3.11", site])
        manifest["qemu"] = _qemu_version(qemu)
        _write_json(root / "manifest.json", manifest)
        views = dict(manifest.get("cpu_models", {}))
        new = [c for c in cpus if c not in views or not (root / "views" / c / "proc" / "cpuinfo").exists()
               or views[c].get("processors", 0) < _host_cpus()]
        for cpu in new:
            probe = _probe_cpu(qemu, sysroot, cpu)
            if probe.get("machine") != "aarch64":
                raise Arm64SetupError("qemu start", f"the guest reports machine {probe.get('machine')!r}, not aarch64")
            views[cpu] = _make_view(root, sysroot, cpu, probe)
            manifest["python"] = probe.get("python")
            log(f"  view {cpu}: MIDR {views[cpu]['midr']}, features: {views[cpu]['features']}")
        if new:
            did.append("views " + ",".join(new))
        manifest["cpu_models"] = views
        rt = _runtime_from(root, manifest)
        if did:
            log(f"  verifying: import onnxruntime on {', '.join(new or cpus)} under emulation")
            infos = _verify_guest(rt, new or list(cpus))
            info = next(iter(infos.values()))
            if (info["onnxruntime"], info["numpy"]) != (ort_version, np_version) or info["machine"] != "aarch64":
                raise Arm64SetupError("qemu start", f"the guest runs {info}, expected aarch64 onnxruntime "
                                      f"{ort_version} and numpy {np_version}")
            manifest["python"] = info["python"]
            manifest["providers"] = info["providers"]
            _write_json(root / "manifest.json", manifest)
            rt = _runtime_from(root, manifest)
            size = _du(root)
            log(f"arm64 setup done in {time.perf_counter() - start:.1f} s ({size / 2**20:.0f} MB; did: "
                f"{'; '.join(did)}): {rt.describe()}")
        else:
            _write_json(root / "manifest.json", manifest)
            log(f"arm64 setup: nothing to do, verified in {time.perf_counter() - start:.2f} s: {rt.describe()}")
        return rt


def ensure_arm64(cpu: str, dir: str | os.PathLike | None = None, log: Callable[[str], None] | None = None) -> Arm64Runtime:
    """The runtime with CPU model ``cpu``, set up first if missing (with a log line)."""
    _check_cpus([cpu])
    rt = load_arm64(dir, [cpu])
    if rt is not None:
        return rt
    if log is None:
        def log(msg: str) -> None:
            print(f"onnxpress: {msg}", file=sys.stderr)

    log(f"the emulated arm64 runtime for {cpu} is missing: running `onnxpress setup arm64 --cpu {cpu}` (once)")
    existing = load_arm64(dir)
    cpus = tuple(dict.fromkeys([*(existing.cpu_models if existing else ()), cpu]))
    return setup_arm64(dir, cpus, log=log)
