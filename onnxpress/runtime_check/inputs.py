"""Inputs for a check: read from ``.npz`` or generated from the declared inputs.

Generated inputs follow each graph input's declared dtype and shape; a symbolic
dimension takes the size given for its name in ``dim_sizes`` (default 1 for a
batch-like dim). Floats are standard normal, integers uniform in ``[0, 10)``
(safe as indices for most embeddings and one-hots), booleans uniform. Real
models with value-constrained inputs (Silero's ``sr``) need real feeds from npz.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import onnx

from ..errors import InputNameError, ModelLoadError

__all__ = ["InputSpec", "input_specs", "random_feeds", "load_feeds", "validate_feeds"]

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


class InputSpec:
    """A graph input that must be fed: name, numpy dtype, dims (int, str or None)."""

    def __init__(self, name: str, dtype: np.dtype, shape: tuple | None) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape

    def __repr__(self) -> str:
        return f"InputSpec({self.name!r}, {self.dtype}, {self.shape})"


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Inputs of ``model`` that must be fed (initializer-inputs are optional and
    left out)."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else np.dtype("float32")
        shape = None
        if tt.HasField("shape"):
            shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
            )
        specs.append(InputSpec(vi.name, dtype, shape))
    return specs


def random_feeds(
    model: onnx.ModelProto,
    n: int = 1,
    seed: int = 0,
    dim_sizes: Mapping[str, int] | None = None,
    default_dim: int = 1,
) -> list[Feeds]:
    """``n`` seeded random feeds matching the declared inputs.

    Args:
        model: the model whose graph inputs are read.
        n: number of feeds.
        seed: numpy Generator seed.
        dim_sizes: size per symbolic dimension name (e.g. ``{"N": 5, "W": 96}``).
        default_dim: size of symbolic or unknown dims not in ``dim_sizes``.

    Returns:
        A list of ``{input name: array}``.
    """
    rng = np.random.default_rng(seed)
    dim_sizes = dict(dim_sizes or {})
    feeds = []
    for _ in range(n):
        feed: Feeds = {}
        for spec in input_specs(model):
            shape = tuple(
                d if isinstance(d, int) and d > 0 else dim_sizes.get(d, default_dim) if isinstance(d, str) else default_dim
                for d in (spec.shape or ())
            )
            if spec.dtype.kind == "f":
                arr = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.dtype.kind in "iu":
                arr = rng.integers(0, 10, size=shape).astype(spec.dtype)
            elif spec.dtype.kind == "b":
                arr = rng.integers(0, 2, size=shape).astype(bool)
            else:
                raise InputNameError(f"input {spec.name!r}: cannot generate values of dtype {spec.dtype}")
            feed[spec.name] = arr
        feeds.append(feed)
    return feeds


def validate_feeds(model: onnx.ModelProto, feeds: Iterable[Feeds]) -> list[Feeds]:
    """Check feed names, ranks, static dims and dtype kinds against the model.

    Raises:
        InputNameError: naming the input at fault (unknown name, missing input,
            wrong rank, wrong static dim, wrong dtype).
    """
    specs = {s.name: s for s in input_specs(model)}
    optional = {t.name for t in model.graph.initializer}
    out = []
    for i, feed in enumerate(feeds):
        for name, arr in feed.items():
            if name not in specs and name not in optional:
                raise InputNameError(
                    f"feed {i}: the model has no input {name!r}; its inputs are {', '.join(specs) or 'none'}"
                )
            spec = specs.get(name)
            if spec is None:
                continue
            arr = np.asarray(arr)
            if spec.shape is not None:
                if arr.ndim != len(spec.shape):
                    raise InputNameError(
                        f"feed {i}: input {name!r} has rank {arr.ndim}, the model expects shape {list(spec.shape)}"
                    )
                for axis, (got, want) in enumerate(zip(arr.shape, spec.shape)):
                    if isinstance(want, int) and want > 0 and got != want:
                        raise InputNameError(
                            f"feed {i}: input {name!r} has shape {list(arr.shape)}, the model expects "
                            f"{list(spec.shape)} (axis {axis})"
                        )
            if arr.dtype != spec.dtype:
                if arr.dtype.kind != spec.dtype.kind:
                    raise InputNameError(
                        f"feed {i}: input {name!r} has dtype {arr.dtype}, the model expects {spec.dtype}"
                    )
                arr = arr.astype(spec.dtype)
            feed[name] = arr
        missing = [n for n in specs if n not in feed]
        if missing:
            raise InputNameError(f"feed {i}: no value for input {missing[0]!r}")
        out.append(feed)
    return out


def load_feeds(path: str | os.PathLike) -> list[Feeds]:
    """Read feeds from an ``.npz`` file or a folder of them.

    One ``.npz`` holds one feed keyed by input name; with a leading sample axis
    (every array's first dim equal, key ``__samples__`` absent), use a folder of
    files instead. A folder yields one feed per ``*.npz`` file, sorted by name.

    Raises:
        ModelLoadError: the path is missing or holds no ``.npz``.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.npz"))
        if not files:
            raise ModelLoadError(f"{p}: no .npz files in the data folder")
    elif p.is_file():
        files = [p]
    else:
        raise ModelLoadError(f"{p}: no such data file or folder")
    feeds = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                feeds.append({k: z[k] for k in z.files})
        except Exception as exc:
            reason = "not a NumPy .npz archive" if "pickle" in str(exc) or "zip" in str(exc).lower() else str(exc)
            raise ModelLoadError(f"{f}: not a readable .npz file ({reason})") from None
    return feeds
