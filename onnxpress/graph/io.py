"""Loading and atomic saving of ONNX models, with external data.

Loading resolves external data relative to the model file and names a missing or
short data file. Saving writes to temporary files in the destination folder and
renames them into place, so a failure never leaves a partial model; models over
2 GB (the protobuf limit) are saved with external data automatically.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError

from ..errors import ExternalDataError, ModelLoadError
from .model import Model

__all__ = ["load", "load_proto", "save", "save_proto", "ModelLike", "PROTOBUF_LIMIT"]

logger = logging.getLogger(__name__)

ModelLike = Union[str, os.PathLike, onnx.ModelProto, Model]
PROTOBUF_LIMIT = 2**31 - 1  # bytes: a serialized ModelProto must stay below this


def load_proto(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read a ``ModelProto`` from a path (with its external data) or pass one through.

    Args:
        source: path to a ``.onnx`` file, or a ``ModelProto`` (returned as is; its
            external data, if any, must already be loaded).

    Returns:
        The model with every tensor's data in memory.

    Raises:
        ModelLoadError: the file is missing, empty, not ONNX, or truncated.
        ExternalDataError: an external-data file is missing or too short.
    """
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    data = path.read_bytes()
    if not data:
        raise ModelLoadError(f"{path}: file is empty, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError as exc:
        raise ModelLoadError(f"{path}: not an ONNX model or truncated ({exc})") from None
    del data
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph or no opset_import)")
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model or truncated (empty graph)")
    _load_external_data(proto, path.parent, path)
    return proto


def _external_tensors(proto: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(proto) if uses_external_data(t)]


def _load_external_data(proto: onnx.ModelProto, base_dir: Path, model_path: Path) -> None:
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor
    from onnx.external_data_helper import set_external_data  # noqa: F401  (API presence)

    for tensor in _external_tensors(proto):
        info = ExternalDataInfo(tensor)
        location = Path(info.location)
        if location.is_absolute() or ".." in location.parts:
            raise ExternalDataError(
                f"{model_path}: tensor {tensor.name!r} points outside the model folder "
                f"({info.location})"
            )
        file = base_dir / location
        if not file.is_file():
            raise ExternalDataError(
                f"{model_path}: external data file {info.location!r} of tensor "
                f"{tensor.name!r} not found next to the model"
            )
        need = (info.offset or 0) + (info.length or 0)
        if info.length and file.stat().st_size < need:
            raise ExternalDataError(
                f"{model_path}: external data file {info.location!r} is truncated "
                f"(tensor {tensor.name!r} needs {need} bytes, file has {file.stat().st_size})"
            )
        load_external_data_for_tensor(tensor, str(base_dir))
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def load(source: ModelLike) -> Model:
    """Load a model into the working IR.

    Args:
        source: a path, a ``ModelProto`` or a :class:`Model` (returned as is).

    Raises:
        ModelLoadError, ExternalDataError: see :func:`load_proto`.
    """
    if isinstance(source, Model):
        return source
    return Model.from_proto(load_proto(source))


def _weight_bytes(proto: onnx.ModelProto) -> int:
    from onnx.external_data_helper import _get_all_tensors

    return sum(len(t.raw_data) for t in _get_all_tensors(proto) if t.HasField("raw_data"))


def save_proto(
    proto: onnx.ModelProto,
    path: str | os.PathLike,
    external_data: bool | None = None,
    size_threshold: int = 1024,
) -> Path:
    """Write ``proto`` to ``path`` atomically.

    Args:
        proto: the model. It is modified in place when saved with external data
            (its tensors then point at the data file).
        path: destination ``.onnx`` path; its folder must exist.
        external_data: True to store tensors of at least ``size_threshold`` bytes in
            ``<name>.data`` beside the model; None (default) decides by size: external
            data when the weights exceed the 2 GB protobuf limit.
        size_threshold: bytes; smaller tensors stay inline.

    Returns:
        The written path.

    Raises:
        OSError: the folder is not writable; nothing is left behind.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if external_data is None:
        external_data = _weight_bytes(proto) > PROTOBUF_LIMIT - (64 << 20)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
    try:
        tmp_model = tmpdir / path.name
        if external_data:
            location = path.name + ".data"
            onnx.save_model(
                proto,
                str(tmp_model),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=location,
                size_threshold=size_threshold,
                convert_attribute=True,
            )
            data_file = tmpdir / location
            if data_file.exists():
                os.replace(data_file, folder / location)
        else:
            with open(tmp_model, "wb") as f:
                f.write(proto.SerializeToString())
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp_model, path)
    finally:
        for leftover in tmpdir.iterdir():
            leftover.unlink()
        tmpdir.rmdir()
    logger.info("saved %s (%d bytes%s)", path, path.stat().st_size, ", external data" if external_data else "")
    return path


def save(model: Model | onnx.ModelProto, path: str | os.PathLike, external_data: bool | None = None) -> Path:
    """Export (if needed) and save a model atomically; see :func:`save_proto`."""
    proto = model.to_proto() if isinstance(model, Model) else model
    return save_proto(proto, path, external_data=external_data)
