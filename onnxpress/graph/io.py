"""Loading and atomic saving of ONNX models, with external data.

Loading resolves external data relative to the model file and names a missing or
short data file. :func:`load` leaves external data on disk (each tensor an
external stub marked with ``basepath``, the model's folder; read when needed, see
:mod:`onnxpress.graph.model`); :func:`load_proto` reads it in unless asked for
``external=True``. Saving writes to temporary files in the destination folder and
renames them into place, so a failure never leaves a partial model; models over
2 GB (the protobuf limit) are saved with external data automatically.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError

from ..errors import ExternalDataError, ModelLoadError
from .model import (
    BASEPATH,
    Model,
    _load_inline,
    external_file,
    is_lazy_external,
    iter_graphs,
    iter_tensor_protos,
    materialize_tensor,
    strip_basepath,
    tensor_nbytes,
)

__all__ = [
    "check_structure", "external_folders", "load", "load_proto", "save", "save_proto", "session_file", "ModelLike",
    "PROTOBUF_LIMIT", "SESSION_FILE_ABOVE", "SESSION_LIMIT",
]

logger = logging.getLogger(__name__)

ModelLike = Union[str, os.PathLike, onnx.ModelProto, Model]
PROTOBUF_LIMIT = 2**31 - 1  # bytes: a serialized ModelProto must stay below this


STREAM_THRESHOLD = 32 << 20  # bytes: larger files are parsed field by field

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(f, path: Path) -> tuple[int, bytes]:
    raw = bytearray()
    value = shift = 0
    while True:
        b = f.read(1)
        if not b:
            raise ModelLoadError(f"{path}: not an ONNX model or truncated (ends inside a field header)")
        raw += b
        value |= (b[0] & 0x7F) << shift
        shift += 7
        if not b[0] & 0x80:
            return value, bytes(raw)
        if shift > 63:
            raise ModelLoadError(f"{path}: not an ONNX model (malformed varint)")


def _read_exact(f, n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise ModelLoadError(f"{path}: truncated (a field needs {n} bytes, {len(data)} remain)")
    return data


def _stream_parse(path: Path) -> onnx.ModelProto:
    """Parse a ``.onnx`` file field by field, so the file's bytes and the parsed
    model are never both in memory: peak memory is the model plus its largest
    initializer, not twice the model (protobuf wire format: every field is a
    key varint then, for length-delimited fields, a length varint and payload)."""
    proto = onnx.ModelProto()
    size = path.stat().st_size
    with open(path, "rb") as f:
        while f.tell() < size:
            key, key_raw = _read_varint(f, path)
            field, wire = key >> 3, key & 7
            if wire == 0:
                _, raw = _read_varint(f, path)
                proto.MergeFromString(key_raw + raw)
            elif wire == 1 or wire == 5:
                proto.MergeFromString(key_raw + _read_exact(f, 8 if wire == 1 else 4, path))
            elif wire == 2:
                length, len_raw = _read_varint(f, path)
                if f.tell() + length > size:
                    raise ModelLoadError(f"{path}: truncated (field {field} runs past the end of the file)")
                if field != _MODEL_GRAPH:
                    proto.MergeFromString(key_raw + len_raw + _read_exact(f, length, path))
                    continue
                end = f.tell() + length
                graph = proto.graph
                while f.tell() < end:
                    gkey, gkey_raw = _read_varint(f, path)
                    if gkey & 7 != 2:
                        raise ModelLoadError(f"{path}: not an ONNX model (unexpected field in graph)")
                    glen, glen_raw = _read_varint(f, path)
                    if f.tell() + glen > end:
                        raise ModelLoadError(f"{path}: truncated (graph field runs past its end)")
                    payload = _read_exact(f, glen, path)
                    if gkey >> 3 == _GRAPH_INITIALIZER:
                        graph.initializer.add().ParseFromString(payload)
                    else:
                        graph.MergeFromString(gkey_raw + glen_raw + payload)
                    del payload
            else:
                raise ModelLoadError(f"{path}: not an ONNX model (wire type {wire} at top level)")
    return proto


def load_proto(source: str | os.PathLike | onnx.ModelProto, external: bool = False) -> onnx.ModelProto:
    """Read a ``ModelProto`` from a path (with its external data) or pass one through.

    Args:
        source: path to a ``.onnx`` file, or a ``ModelProto`` (returned as is; its
            external data, if any, must already be loaded or carry ``basepath``).
        external: False (default): external data is read into the tensors. True:
            it is checked (file present, long enough, inside the model's folder)
            but left on disk; each such tensor gets the ``basepath`` key (the
            model's folder), for :func:`load`. Such a proto is for onnxpress
            (:func:`load`, :func:`save`, ``make_session``), not for ``onnx.save``
            or onnxruntime directly.

    Returns:
        The model with every tensor's data in memory (``external=False``).

    Raises:
        ModelLoadError: the file is missing, empty, not ONNX, or truncated.
        ExternalDataError: an external-data file is missing or too short.
    """
    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty, not an ONNX model")
    try:
        if path.stat().st_size > STREAM_THRESHOLD:
            proto = _stream_parse(path)
        else:
            proto = onnx.ModelProto.FromString(path.read_bytes())
    except DecodeError as exc:
        raise ModelLoadError(f"{path}: not an ONNX model or truncated ({exc})") from None
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(f"{path}: not an ONNX model (no graph or no opset_import)")
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model or truncated (empty graph)")
    _load_external_data(proto, path.parent, path, lazy=external)
    return proto


def _external_tensors(proto: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    return [t for t in _get_all_tensors(proto) if uses_external_data(t)]


def _load_external_data(proto: onnx.ModelProto, base_dir: Path, model_path: Path, lazy: bool = False) -> None:
    from onnx.external_data_helper import (
        ExternalDataInfo,
        load_external_data_for_tensor,
    )

    folder = os.path.abspath(base_dir)
    real_folder = Path(folder).resolve()
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
        need = (info.offset or 0) + (info.length or (tensor_nbytes(tensor) if lazy else 0))
        if need and file.stat().st_size < need:
            raise ExternalDataError(
                f"{model_path}: external data file {info.location!r} is truncated "
                f"(tensor {tensor.name!r} needs {need} bytes, file has {file.stat().st_size})"
            )
        if lazy:
            # onnx and onnxruntime read through symlinks only inside the folder: so do we
            if not file.resolve().is_relative_to(real_folder):
                raise ExternalDataError(
                    f"{model_path}: tensor {tensor.name!r} points outside the model folder "
                    f"({info.location} is a link to {file.resolve()})"
                )
            strip_basepath(tensor)
            tensor.external_data.add(key=BASEPATH, value=folder)
            continue
        load_external_data_for_tensor(tensor, str(base_dir))
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def _graph_order(graph: onnx.GraphProto, outer: frozenset[str], where: str) -> bool:
    """Check one graph (and its subgraphs) for names written twice and for cycles.

    Returns:
        True when the nodes are already in topological order.

    Raises:
        ModelLoadError: a tensor is written twice, or the nodes form a cycle.
    """
    available = set(outer) | {i.name for i in graph.input} | {t.name for t in graph.initializer}
    writer: dict[str, int] = {}
    for k, node in enumerate(graph.node):
        for out in node.output:
            if not out:
                continue
            if out in writer or out in {i.name for i in graph.input}:
                raise ModelLoadError(f"{where}: invalid graph: tensor {out!r} is written twice (node {node.name or node.op_type!r})")
            writer[out] = k
    sorted_ = True
    deps: list[set[int]] = []
    for k, node in enumerate(graph.node):
        reads = set(node.input)
        for attr in node.attribute:  # values a subgraph reads from this scope
            for sg in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                reads |= {i for n in sg.node for i in n.input}
        d = {writer[r] for r in reads if r in writer and writer[r] != k}
        if any(j > k for j in d):
            sorted_ = False
        deps.append(d)
    if not sorted_:
        indegree = [len(d) for d in deps]
        users: dict[int, list[int]] = {}
        for k, d in enumerate(deps):
            for j in d:
                users.setdefault(j, []).append(k)
        ready = [k for k, n in enumerate(indegree) if n == 0]
        seen = 0
        while ready:
            k = ready.pop()
            seen += 1
            for u in users.get(k, []):
                indegree[u] -= 1
                if indegree[u] == 0:
                    ready.append(u)
        if seen != len(graph.node):
            stuck = next(k for k, n in enumerate(indegree) if n > 0)
            node = graph.node[stuck]
            raise ModelLoadError(f"{where}: invalid graph: the nodes form a cycle through node {node.name or node.op_type!r}")
    visible = frozenset(available | set(writer))
    for node in graph.node:
        for attr in node.attribute:
            for sg in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                sorted_ &= _graph_order(sg, visible, where)
    return sorted_


def check_structure(proto: onnx.ModelProto, where: str = "model") -> bool:
    """Refuse models onnxpress cannot rewrite safely, with a one-line reason.

    Returns:
        True when every graph's nodes are in topological order (False: the IR
        sorts them on import).

    Raises:
        ModelLoadError: an opset newer than the installed onnx knows, a tensor
            written twice, or a cycle.
    """
    newest = onnx.defs.onnx_opset_version()
    for op in proto.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > newest:
            raise ModelLoadError(
                f"{where}: the model uses opset {op.version}; the installed onnx {onnx.__version__} "
                f"supports opsets up to {newest} (upgrade onnx)"
            )
    return _graph_order(proto.graph, frozenset(), where)


def load(source: ModelLike) -> Model:
    """Load a model into the working IR.

    External data of a path is checked but not read: the weights stay on disk
    (:class:`~onnxpress.graph.model.ExternalValues`) until a pass, an export
    (:meth:`Model.to_proto`) or :func:`save` reads them, one tensor at a time.

    Args:
        source: a path, a ``ModelProto`` (its external data loaded, or left on
            disk with ``basepath``) or a :class:`Model` (returned as is).

    Raises:
        ModelLoadError, ExternalDataError: see :func:`load_proto`.
    """
    if isinstance(source, Model):
        return source
    proto = load_proto(source, external=True)
    where = str(source) if not isinstance(source, onnx.ModelProto) else "model"
    in_order = check_structure(proto, where)
    model = Model.from_proto(proto)
    if not in_order:
        model.graph.toposort(recurse_subgraphs=True)
    return model


@contextlib.contextmanager
def _staging(path: Path):
    """A temporary folder beside ``path`` for files renamed into place on
    success; whatever is left in it (a failed write) is removed."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, "the output folder does not exist", str(path))
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
    try:
        yield folder, tmpdir
    finally:
        for leftover in tmpdir.iterdir():
            leftover.unlink()
        tmpdir.rmdir()


def _copy_fields(src, dst, skip: str) -> None:
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if fd.is_repeated:
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _split(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
    """A copy of ``proto`` without its main-graph initializers, and those
    initializers (the original objects, not copies)."""
    shell = onnx.ModelProto()
    _copy_fields(proto, shell, skip="graph")
    _copy_fields(proto.graph, shell.graph, skip="initializer")
    return shell, list(proto.graph.initializer)


def save_proto(
    proto: onnx.ModelProto,
    path: str | os.PathLike,
    external_data: bool | None = None,
    size_threshold: int = 1024,
) -> Path:
    """Write a ``ModelProto`` atomically; see :func:`save`. ``proto`` is not modified."""
    return _save_parts(*_split(proto), Path(path), external_data, size_threshold)


def _tensor_bytes(t: onnx.TensorProto) -> bytes:
    if t.HasField("raw_data"):
        return t.raw_data
    arr = onnx.numpy_helper.to_array(t)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


_CHUNK = 16 << 20  # bytes per read when copying external data
_RAW_DATA_KEY = bytes([(9 << 3) | 2])  # TensorProto.raw_data, length-delimited


def _copy_range(src: Path, offset: int, length: int, dst) -> None:
    """Copy ``length`` bytes of ``src`` from ``offset`` to the open file ``dst``,
    a chunk at a time (never the whole tensor in memory)."""
    with open(src, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                raise ExternalDataError(f"external data file {str(src)!r} ended while copying ({left} bytes short)")
            dst.write(chunk)
            left -= len(chunk)


class _Streamed:
    """A main-graph initializer whose data is copied from its external-data file
    into the model file as the ``raw_data`` field (never loaded whole)."""

    def __init__(self, t: onnx.TensorProto) -> None:
        self.file, self.offset, self.length = external_file(t)
        self.shell = _inline_shell(t)

    def ByteSize(self) -> int:
        return self.shell.ByteSize() + len(_RAW_DATA_KEY) + len(_varint(self.length)) + self.length

    def write(self, f) -> None:
        f.write(self.shell.SerializeToString())
        f.write(_RAW_DATA_KEY + _varint(self.length))
        _copy_range(self.file, self.offset, self.length, f)


def _inline_shell(t: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of an external stub without its external-data fields (and no data)."""
    shell = onnx.TensorProto()
    shell.CopyFrom(t)
    del shell.external_data[:]
    shell.ClearField("data_location")
    shell.ClearField("raw_data")
    return shell


def _external_shell(t: onnx.TensorProto, location: str, offset: int, length: int) -> onnx.TensorProto:
    shell = onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type, doc_string=t.doc_string)
    shell.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        shell.external_data.add(key=key, value=value)
    return shell


def _write_streamed(f, proto: onnx.ModelProto, initializers: list) -> None:
    """Write ``proto`` with ``initializers`` (``TensorProto`` or :class:`_Streamed`)
    appended to its main graph, serializing one initializer at a time (protobuf
    fields may come in any order, and a repeated field is the concatenation of
    its elements). Consumes ``proto``: its graph is cleared."""
    graph_bytes = proto.graph.SerializeToString()
    proto.ClearField("graph")
    f.write(proto.SerializeToString())
    sizes = [t.ByteSize() for t in initializers]
    total = len(graph_bytes) + sum(1 + len(_varint(n)) + n for n in sizes)
    f.write(_varint((_MODEL_GRAPH << 3) | 2) + _varint(total))
    f.write(graph_bytes)
    del graph_bytes
    key = _varint((_GRAPH_INITIALIZER << 3) | 2)
    for t, n in zip(initializers, sizes):
        f.write(key + _varint(n))
        if isinstance(t, _Streamed):
            t.write(f)
        else:
            f.write(t.SerializeToString())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def save(
    model: Model | onnx.ModelProto,
    path: str | os.PathLike,
    external_data: bool | None = None,
    size_threshold: int = 1024,
) -> Path:
    """Save a model atomically, streaming the weights.

    The main graph's initializers are serialized one at a time into the file (or
    into ``<name>.data`` with external data), so peak memory stays near one copy
    of the weights; a :class:`Model` is exported without copying its weights,
    and weights it left in external data (see :func:`load`) are copied from
    their file a chunk at a time, never loaded whole. The files are written in a
    temporary folder beside ``path`` and renamed into place, so a failure leaves
    any previous file intact and nothing partial; ``path`` may be the file the
    model was loaded from (its weights are read before the rename, and the
    model's tensors are pointed at the new data file afterwards).

    Args:
        model: the model.
        path: destination ``.onnx`` path; its folder must exist.
        external_data: True stores tensors of at least ``size_threshold`` bytes in
            ``<name>.data`` beside the model; None (default) decides by size:
            external data when the model exceeds the 2 GB protobuf limit.
        size_threshold: bytes; smaller tensors stay inline.

    Returns:
        The written path.

    Raises:
        OSError: the folder is not writable; nothing is left behind.
    """
    if isinstance(model, onnx.ModelProto):
        parts = _split(model)
    else:
        _load_overwritten(model, Path(path))
        parts = model.export()
    return _save_parts(*parts, Path(path), external_data, size_threshold)


def _load_overwritten(model: Model, path: Path) -> None:
    """Read into memory the external weights of ``model`` outside the main
    graph's initializers (subgraph and attribute tensors: small, saved inline)
    whose data file the save of ``path`` may replace; the main graph's are
    re-pointed to the new file after the save instead."""
    import onnx_graphsurgeon as gs

    from .model import ExternalValues

    target = path.with_name(path.name + ".data")
    if not target.exists():
        return
    main = {id(t) for t in model.graph.tensors().values()} | {id(t) for t in model.orphan_initializers}
    for g in iter_graphs(model.graph):
        candidates = [t for t in g.tensors().values() if id(t) not in main]
        candidates += [v for node in g.nodes for v in node.attrs.values() if isinstance(v, gs.Constant)]
        for t in candidates:
            if (
                isinstance(t, gs.Constant)
                and isinstance(t._values, ExternalValues)
                and _same_file(external_file(t._values.tensor)[0], target)
            ):
                t.values = t._values.load()


def _save_parts(
    proto: onnx.ModelProto,
    inits: list[onnx.TensorProto],
    path: Path,
    external_data: bool | None,
    size_threshold: int,
) -> Path:
    # Weights left in external data elsewhere in the graph (subgraph initializers,
    # Constant attributes) are small: inline them into the (own) exported proto.
    for t in iter_tensor_protos(proto, main_initializers=False):
        if is_lazy_external(t):
            t.CopyFrom(materialize_tensor(t))
    if external_data is None:
        external_data = sum(
            tensor_nbytes(t) + 64 if is_lazy_external(t) else t.ByteSize() for t in inits
        ) + proto.ByteSize() > PROTOBUF_LIMIT - (64 << 20)
    repoint: list[tuple[onnx.TensorProto, int, int]] = []  # model tensors whose source file is replaced
    with _staging(path) as (folder, tmpdir):
        tmp_model = tmpdir / path.name
        location = path.name + ".data"
        final_data = folder / location
        if external_data:
            shells = []
            with open(tmpdir / location, "wb") as data:
                for t in inits:
                    lazy = is_lazy_external(t)
                    nbytes = tensor_nbytes(t) if lazy else t.ByteSize()
                    if nbytes < size_threshold or t.data_type == onnx.TensorProto.STRING:
                        if lazy and _same_file(external_file(t)[0], final_data):
                            _load_inline(t)  # small, and its file is about to be replaced
                            lazy = False
                        shells.append(_Streamed(t) if lazy else t)
                        continue
                    offset = data.tell()
                    pad = (-offset) % 4096  # page-aligned, as onnx does, so runtimes can mmap
                    data.write(b"\0" * pad)
                    if lazy:
                        src, src_offset, length = external_file(t)
                        _copy_range(src, src_offset, length, data)
                        if _same_file(src, final_data):
                            repoint.append((t, offset + pad, length))
                    else:
                        blob = _tensor_bytes(t)
                        length = len(blob)
                        data.write(blob)
                        del blob
                    shells.append(_external_shell(t, location, offset + pad, length))
                data.flush()
                os.fsync(data.fileno())
            inits = shells
        else:
            inits = [_Streamed(t) if is_lazy_external(t) else t for t in inits]
        with open(tmp_model, "wb") as f:
            _write_streamed(f, proto, inits)
            f.flush()
            os.fsync(f.fileno())
        if external_data:
            os.replace(tmpdir / location, final_data)
            # The model's weights read from the file just replaced now live in the
            # new one (same bytes, new offsets): point their stubs there.
            for t, offset, length in repoint:
                _set_external(t, location, offset, length, os.path.abspath(folder))
        os.replace(tmp_model, path)
    logger.info("saved %s (%d bytes%s)", path, path.stat().st_size, ", external data" if external_data else "")
    return path


def _set_external(t: onnx.TensorProto, location: str, offset: int, length: int, basepath: str) -> None:
    del t.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length)), (BASEPATH, basepath)):
        t.external_data.add(key=key, value=value)


# ------------------------------------------------------------------ onnxruntime
SESSION_LIMIT = 1_800_000_000  # bytes: above, a session file gets its weights in external data
SESSION_FILE_ABOVE = 64 << 20  # bytes: a bigger proto goes to onnxruntime as a file, not as bytes (kept by it)


def external_folders(proto: onnx.ModelProto) -> set[str]:
    """The folders (``basepath``) of the tensors of ``proto`` left in external data."""
    out = set()
    for t in iter_tensor_protos(proto):
        if is_lazy_external(t):
            out.add(next(e.value for e in t.external_data if e.key == BASEPATH))
    return out


@contextlib.contextmanager
def session_file(proto: onnx.ModelProto):
    """A model file onnxruntime can open for ``proto``, removed on exit.

    A proto whose weights are left in external data (``basepath``, one folder)
    is written small, with ``basepath`` stripped, as ``.onnxpress-session-*.onnx``
    in that folder, so its relative ``location`` s resolve (onnxruntime refuses
    absolute locations and links that leave the model's folder). Other weights
    of more than ``SESSION_LIMIT`` bytes in all go to a data file beside it. A
    proto without external data is saved with :func:`save_proto` into a
    temporary folder (external data above the limit). ``proto`` is not modified.

    Raises:
        ExternalDataError: the external tensors live in several folders.
        OSError: the folder is not writable.
    """
    folders = external_folders(proto)
    if len(folders) > 1:
        raise ExternalDataError(f"the model's external data is in several folders ({', '.join(sorted(folders))})")
    if not folders:
        tmp = Path(tempfile.mkdtemp(prefix="onnxpress-session-"))
        try:
            yield save_proto(proto, tmp / "model.onnx", external_data=proto.ByteSize() > SESSION_LIMIT)
        finally:
            for leftover in tmp.iterdir():
                leftover.unlink()
            tmp.rmdir()
        return
    folder = Path(next(iter(folders)))
    fd, name = tempfile.mkstemp(prefix=".onnxpress-session-", suffix=".onnx", dir=folder)
    model_file = Path(name)
    data_file = model_file.with_name(model_file.name + ".data")
    try:
        with os.fdopen(fd, "wb") as f:
            shell, inits = _split(proto)
            for t in iter_tensor_protos(shell, main_initializers=False):
                strip_basepath(t)
            stubs = []
            inline = []
            for t in inits:
                if is_lazy_external(t):
                    stub = onnx.TensorProto()
                    stub.CopyFrom(t)
                    strip_basepath(stub)
                    stubs.append(stub)
                else:
                    inline.append(t)
            if sum(t.ByteSize() for t in inline) + shell.ByteSize() > SESSION_LIMIT:
                moved = []
                with open(data_file, "wb") as data:
                    for t in inline:
                        if t.ByteSize() < 1024 or t.data_type == onnx.TensorProto.STRING:
                            moved.append(t)
                            continue
                        offset = data.tell()
                        pad = (-offset) % 4096
                        data.write(b"\0" * pad)
                        blob = _tensor_bytes(t)
                        data.write(blob)
                        moved.append(_external_shell(t, data_file.name, offset + pad, len(blob)))
                        del blob
                inline = moved
            _write_streamed(f, shell, stubs + inline)
        yield model_file
    finally:
        for p in (model_file, data_file):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
