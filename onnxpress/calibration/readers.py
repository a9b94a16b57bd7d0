"""Calibration data readers: one re-iterable stream of validated feeds.

:func:`open_calibration` turns whatever the user has (a folder of ``.npz``
files, one stacked ``.npz``, a Python function, a list, seeded random data for
smoke tests) into a :class:`CalibrationData`: an iterable that restarts from the
first sample on every ``iter()`` and checks every feed against the model's
inputs before handing it out (names, ranks, static dims, dtype kinds, and no
NaN/Inf in float inputs). Samples are read lazily where the source allows it (a
folder reads one file per sample; a function's generator is consumed one item
at a time), so memory does not grow with the number of samples.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import InputNameError, ModelLoadError
from ..runtime_check.inputs import input_specs, load_feeds, random_feeds, validate_feeds

__all__ = ["Feeds", "CalibrationData", "open_calibration"]

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]

# A sample as produced by a source: the feed (or anything to turn into one) and
# where it came from (a file name), for error messages.
_Item = tuple[Any, str]


class CalibrationData:
    """A re-iterable stream of validated feeds.

    Every ``iter()`` restarts from the first sample (a one-shot iterator given
    as source raises :class:`~onnxpress.errors.InputNameError` when iterated a
    second time). Every feed is checked with
    :func:`onnxpress.runtime_check.validate_feeds` (dtype of the same kind is
    cast to the declared dtype) and float inputs must be finite.

    Attributes:
        count: number of samples when known (after ``limit``), else ``None``.
        description: one line for logs and reports, e.g.
            ``"32 samples from calib/ (npz folder)"``.
    """

    def __init__(
        self,
        model: onnx.ModelProto,
        produce: Callable[[], Iterable[_Item]],
        *,
        count: int | None,
        description: str,
        limit: int | None = None,
    ) -> None:
        self._model = model
        self._produce = produce
        self._limit = limit
        self.count = count if limit is None or count is None else min(count, limit)
        if count is None and limit is not None:
            description = f"{description}, at most {limit}"
        self.description = description

    def __iter__(self) -> Iterator[Feeds]:
        items = iter(self._produce())
        if self._limit is not None:
            items = itertools.islice(items, self._limit)
        single = _single_input(self._model)
        for i, (raw, where) in enumerate(items):
            yield _check_sample(self._model, raw, i, where, single)

    def __repr__(self) -> str:
        return f"CalibrationData({self.description!r})"


def _single_input(model: onnx.ModelProto) -> str | None:
    specs = input_specs(model)
    return specs[0].name if len(specs) == 1 else None


def _check_sample(model: onnx.ModelProto, raw: Any, i: int, where: str, single: str | None) -> Feeds:
    label = f"calibration sample {i}" + (f" ({where})" if where else "")
    if isinstance(raw, np.ndarray) and single is not None:
        raw = {single: raw}  # a bare array for a one-input model
    if not isinstance(raw, Mapping):
        raise InputNameError(f"{label}: expected a dict of input name to array, got {type(raw).__name__}")
    feed = {str(k): np.asarray(v) for k, v in raw.items()}
    try:
        feed = validate_feeds(model, [feed])[0]
    except InputNameError as exc:
        msg = str(exc)
        if msg.startswith("feed 0: "):
            msg = msg[len("feed 0: ") :]
        raise InputNameError(f"{label}: {msg}") from None
    for name, arr in feed.items():
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            raise InputNameError(f"{label}: input {name!r} has NaN/Inf values")
    return feed


def open_calibration(
    source: Any,
    model: onnx.ModelProto | str | os.PathLike,
    *,
    limit: int | None = None,
    seed: int = 0,
) -> CalibrationData:
    """Open calibration data for ``model``.

    Sources:

    * a folder of ``.npz`` files, one sample per file keyed by input name,
      read one file at a time in sorted name order;
    * one ``.npz`` whose arrays have a leading sample axis: sample ``i`` is
      ``arr[i]`` for every key (every leading axis must have the same size).
      An ``.npz`` whose arrays have exactly the rank of the model's inputs is
      one sample;
    * ``"module:function"`` or ``"path/to/file.py:function"``: the function is
      imported and called (with no argument, or with ``model`` as given here,
      a path or a ``ModelProto``, if it takes one) at every ``iter()``; it
      returns an iterable of feed dicts (a generator is read lazily);
    * ``"random"`` or ``"random:N"``: ``N`` (default 8) seeded random feeds from
      the declared inputs (:func:`onnxpress.runtime_check.random_feeds`); for
      smoke tests only, a WARNING says so;
    * a callable, called like the imported function above;
    * a list (or any re-iterable) of feed dicts, or one feed dict; a one-shot
      iterator (generator) is accepted but can be iterated once only.

    A feed may be a bare array when the model has a single input.

    Args:
        source: see above.
        model: the model whose inputs the feeds must match (a path is loaded
            without external data).
        limit: at most this many samples.
        seed: seed of the ``random`` source.

    Returns:
        A :class:`CalibrationData`.

    Raises:
        ModelLoadError: a missing path, an unreadable ``.npz``, a module or
            file that cannot be imported, a missing function.
        InputNameError: (at open for the ``.npz`` sources, while iterating for
            the others) a sample with an unknown input name, a missing input, a
            wrong shape or dtype, NaN/Inf in a float input; stacked arrays with
            different numbers of samples; an empty source.
        ValueError: a negative ``limit``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    model_arg = model
    if not isinstance(model, onnx.ModelProto):
        try:
            model = onnx.load(os.fspath(model), load_external_data=False)
        except Exception as exc:
            raise ModelLoadError(f"{model}: cannot load the model ({str(exc).splitlines()[0]})") from None
    kw = {"limit": limit}

    if isinstance(source, CalibrationData):
        src = source
        return CalibrationData(model, lambda: ((f, "") for f in src), count=src.count, description=src.description, **kw)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if isinstance(source, str) and (text == "random" or text.startswith("random:")):
            return _random_source(text, model, seed, limit)
        path = Path(text)
        if path.is_dir():
            return _folder_source(path, model, limit)
        if path.is_file():
            return _stacked_source(path, model, limit)
        if isinstance(source, str) and ":" in text:
            func = _import_function(text)
            return _callable_source(func, text, model, model_arg, limit)
        raise ModelLoadError(f"{text}: no such calibration file or folder")
    if isinstance(source, Mapping):
        feed = dict(source)
        return CalibrationData(model, lambda: [(feed, "")], count=1, description="1 sample (in-memory dict)", **kw)
    if isinstance(source, np.ndarray):
        arr = source
        return CalibrationData(model, lambda: [(arr, "")], count=1, description="1 sample (in-memory array)", **kw)
    if callable(source) and not isinstance(source, Iterable):
        name = getattr(source, "__qualname__", None) or type(source).__name__
        return _callable_source(source, f"{name}()", model, model_arg, limit)
    if isinstance(source, Iterable):
        if iter(source) is source:  # a generator or other one-shot iterator
            return _one_shot_source(source, model, limit)
        items = source
        count = len(items) if hasattr(items, "__len__") else None
        if count == 0:
            raise InputNameError("calibration data is empty (an empty list)")
        desc = f"{count} samples (in-memory {type(items).__name__})" if count is not None else "in-memory samples"
        return CalibrationData(model, lambda: ((x, "") for x in items), count=count, description=desc, **kw)
    raise InputNameError(
        f"cannot read calibration data from a {type(source).__name__}: pass a folder, an .npz, "
        "'module:function', 'random[:N]', a list of feed dicts or a callable"
    )


# ---------------------------------------------------------------------- sources
def _random_source(text: str, model: onnx.ModelProto, seed: int, limit: int | None) -> CalibrationData:
    n = 8
    if text != "random":
        try:
            n = int(text.split(":", 1)[1])
        except ValueError:
            raise InputNameError(f"calibration source {text!r}: expected 'random' or 'random:N'") from None
        if n < 1:
            raise InputNameError(f"calibration source {text!r}: N must be >= 1")
    logger.warning("random calibration data is for smoke tests only (%d seeded random feeds)", n)
    random_feeds(model, 1, seed)  # fail now, not at the first iteration, on an input it cannot fake

    def produce() -> Iterator[_Item]:
        for feed in random_feeds(model, n, seed):
            yield feed, ""

    desc = f"{n} random samples (seed {seed}; smoke tests only)"
    return CalibrationData(model, produce, count=n, description=desc, limit=limit)


def _folder_source(path: Path, model: onnx.ModelProto, limit: int | None) -> CalibrationData:
    files = sorted(path.glob("*.npz"))
    if not files:
        raise ModelLoadError(f"{path}: no .npz files in the calibration folder")

    def produce() -> Iterator[_Item]:
        for f in files:
            yield load_feeds(f)[0], f.name  # one file at a time, raises ModelLoadError naming it

    desc = f"{len(files)} samples from {path}/ (npz folder)"
    return CalibrationData(model, produce, count=len(files), description=desc, limit=limit)


def _stacked_source(path: Path, model: onnx.ModelProto, limit: int | None) -> CalibrationData:
    if path.suffix != ".npz":
        raise ModelLoadError(f"{path}: calibration data must be .npz files (or a folder of them)")
    arrays = load_feeds(path)[0]
    if not arrays:
        raise ModelLoadError(f"{path}: the .npz holds no arrays")
    ranks = {s.name: len(s.shape) for s in input_specs(model) if s.shape is not None}
    known = [k for k in arrays if k in ranks]
    if known and all(arrays[k].ndim == ranks[k] for k in known):  # one sample, no sample axis
        del arrays
        return CalibrationData(
            model, lambda: [(load_feeds(path)[0], path.name)], count=1, description=f"1 sample from {path} (npz)", limit=limit
        )
    sizes = {}
    for k, a in arrays.items():
        if a.ndim == 0:
            raise InputNameError(
                f"{path}: array {k!r} is a scalar; a stacked .npz needs a leading sample axis on every array"
            )
        sizes[k] = a.shape[0]
    first = next(iter(sizes))
    for k, n in sizes.items():
        if n != sizes[first]:
            raise InputNameError(
                f"{path}: array {k!r} has {n} samples on its leading axis, {first!r} has {sizes[first]}"
            )
    n = sizes[first]
    if n == 0:
        raise InputNameError(f"{path}: the stacked arrays hold 0 samples")
    del arrays

    def produce() -> Iterator[_Item]:
        data = load_feeds(path)[0]  # the whole file, once per pass
        for i in range(n):
            yield {k: v[i] for k, v in data.items()}, f"{path.name}[{i}]"

    return CalibrationData(model, produce, count=n, description=f"{n} samples from {path} (stacked npz)", limit=limit)


def _import_function(spec: str) -> Callable:
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise ModelLoadError(f"calibration source {spec!r}: expected 'module:function' or 'file.py:function'")
    if where.endswith(".py") or os.sep in where or "/" in where:
        file = Path(where)
        if not file.is_file():
            raise ModelLoadError(f"calibration source {spec!r}: no such file {where}")
        mod_name = f"_onnxpress_calib_{abs(hash(str(file.resolve())))}"
        try:
            mod_spec = importlib.util.spec_from_file_location(mod_name, file)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_name] = module
            mod_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise ModelLoadError(
                f"calibration source {spec!r}: cannot import {where} ({type(exc).__name__}: {exc})"
            ) from exc
    else:
        try:
            module = importlib.import_module(where)
        except Exception as exc:
            raise ModelLoadError(
                f"calibration source {spec!r}: cannot import module {where!r} ({type(exc).__name__}: {exc})"
            ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelLoadError(f"calibration source {spec!r}: {where} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelLoadError(f"calibration source {spec!r}: {attr!r} is not callable")
    return obj


def _takes_an_argument(func: Callable) -> bool:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return False
    for p in sig.parameters.values():
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            return True
    return False


def _callable_source(func: Callable, name: str, model: onnx.ModelProto, model_arg: Any, limit: int | None) -> CalibrationData:
    with_model = _takes_an_argument(func)

    def produce() -> Iterator[_Item]:
        result = func(model_arg) if with_model else func()
        if isinstance(result, Mapping) or not isinstance(result, Iterable):
            raise InputNameError(
                f"calibration function {name} returned a {type(result).__name__}; expected an iterable of feed dicts"
            )
        for x in result:
            yield x, ""

    return CalibrationData(model, produce, count=None, description=f"samples from {name} (function)", limit=limit)


def _one_shot_source(it: Iterator, model: onnx.ModelProto, limit: int | None) -> CalibrationData:
    used = False

    def produce() -> Iterator[_Item]:
        nonlocal used
        if used:
            raise InputNameError(
                "calibration data from a one-shot iterator can be read once only; pass a list or a function"
            )
        used = True
        for x in it:
            yield x, ""

    return CalibrationData(model, produce, count=None, description="samples from a one-shot iterator", limit=limit)
