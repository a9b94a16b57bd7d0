"""The working IR: an onnx-graphsurgeon graph plus what gs does not keep.

onnx-graphsurgeon (gs) imports an ``onnx.ModelProto`` into a mutable graph of
``Node``/``Variable``/``Constant`` objects, with subgraphs of ``If``/``Loop``/``Scan``
sharing outer-scope tensor objects. On its own, a gs round trip loses model
metadata (``metadata_props``, ``doc_string``, ``domain``, ``model_version``), drops
graph inputs that are also initializers (IR >= 4 overridable initializers), and
silently drops unused initializers. :class:`Model` restores all three, so that
``Model.from_proto(p).to_proto()`` means the same as ``p``.

Lazy external data. :func:`onnxpress.graph.load` of a model whose weights are in
external-data files does not read them: each such ``TensorProto`` stays an
external stub marked with the ONNX external-data key ``basepath`` (the model's
folder), and its gs Constant gets :class:`ExternalValues`, which reads the bytes
from ``basepath/location`` on every ``load()`` (never cached in the Constant when
read through :func:`constant_array`). ``basepath`` is recognized by onnx but
refused by onnxruntime, so it is stripped whenever a proto goes to onnxruntime
(:func:`onnxpress.runtime_check.make_session`) or to disk
(:func:`onnxpress.graph.save`). :meth:`Model.to_proto` loads the data into a
self-contained copy unless asked for ``external=True``.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import SparseValues

__all__ = [
    "BASEPATH",
    "ExternalValues",
    "Model",
    "external_file",
    "is_lazy_external",
    "iter_graphs",
    "iter_nodes",
    "iter_tensor_protos",
    "is_foldable_constant",
    "materialize_tensor",
    "read_external_array",
    "strip_basepath",
    "tensor_nbytes",
    "tensor_array",
]

logger = logging.getLogger(__name__)

#: External-data key (recognized by onnx) naming the folder of a lazily loaded
#: tensor's data file; onnxruntime refuses it, so it never reaches onnxruntime or disk.
BASEPATH = "basepath"


# ---------------------------------------------------------------- external data
def _external_info(t: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in t.external_data}


def is_lazy_external(t: onnx.TensorProto) -> bool:
    """True for an external-data stub whose folder is recorded (``basepath``), as
    :func:`onnxpress.graph.load` leaves the tensors of a model with external data."""
    return t.data_location == onnx.TensorProto.EXTERNAL and any(e.key == BASEPATH for e in t.external_data)


_SUB_BYTE_BITS = {
    onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4, onnx.TensorProto.FLOAT4E2M1: 4,
    onnx.TensorProto.INT2: 2, onnx.TensorProto.UINT2: 2,
}


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor's data: its external ``length`` when given, else from
    its dims and dtype (sub-byte types packed), else the serialized size."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        info = _external_info(t)
        if info.get("length"):
            return int(info["length"])
    if t.data_type == onnx.TensorProto.STRING:
        return t.ByteSize()
    n = 1
    for d in t.dims:
        n *= int(d)
    bits = _SUB_BYTE_BITS.get(t.data_type)
    if bits is None:
        try:
            bits = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize * 8
        except (KeyError, TypeError, ValueError):  # an unknown dtype: what the proto holds
            return t.ByteSize()
    return (n * bits + 7) // 8


def external_file(t: onnx.TensorProto) -> tuple[Path, int, int]:
    """``(data file, offset, length)`` of a lazily loaded external tensor.

    Raises:
        ExternalDataError: the tensor has no ``basepath``/``location``, or its
            file is missing or too short.
    """
    from ..errors import ExternalDataError

    info = _external_info(t)
    if BASEPATH not in info or not info.get("location"):
        raise ExternalDataError(f"tensor {t.name!r}: external data without a known folder (basepath/location)")
    file = Path(info[BASEPATH]) / info["location"]
    offset = int(info.get("offset") or 0)
    length = int(info["length"]) if info.get("length") else tensor_nbytes(t)
    try:
        size = file.stat().st_size
    except OSError:
        raise ExternalDataError(f"external data file {str(file)!r} of tensor {t.name!r} not found") from None
    if offset + length > size:
        raise ExternalDataError(
            f"external data file {str(file)!r} is truncated (tensor {t.name!r} needs {offset + length} bytes, "
            f"file has {size})"
        )
    return file, offset, length


def read_external_bytes(t: onnx.TensorProto) -> bytes:
    """The raw (little-endian) bytes of a lazily loaded external tensor."""
    file, offset, length = external_file(t)
    with open(file, "rb") as f:
        f.seek(offset)
        return f.read(length)


_PLAIN_DTYPES = {
    onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BOOL,
    onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
    onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64,
    onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128,
}


def read_external_array(t: onnx.TensorProto) -> np.ndarray:
    """The value of a lazily loaded external tensor as a new (writable) array,
    read straight from its file (one copy in memory)."""
    file, offset, length = external_file(t)
    dims = tuple(int(d) for d in t.dims)
    if t.data_type in _PLAIN_DTYPES:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).newbyteorder("<")
        count = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if count * dtype.itemsize != length:
            from ..errors import ExternalDataError

            raise ExternalDataError(
                f"tensor {t.name!r}: external data length {length} does not match its shape {list(dims)} "
                f"({count * dtype.itemsize} bytes)"
            )
        arr = np.fromfile(file, dtype=dtype, count=count, offset=offset).reshape(dims)
        return arr if sys.byteorder == "little" else arr.astype(dtype.newbyteorder("="))
    tmp = onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type)
    with open(file, "rb") as f:
        f.seek(offset)
        tmp.raw_data = f.read(length)
    return np.array(onnx.numpy_helper.to_array(tmp))


def tensor_array(t: onnx.TensorProto) -> np.ndarray:
    """The value of any ``TensorProto`` (inline, or lazily loaded external) as a
    new array; the tensor is not modified."""
    if is_lazy_external(t):
        return read_external_array(t)
    return np.array(onnx.numpy_helper.to_array(t))


def materialize_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of a lazily loaded external tensor with its data inline; other
    tensors are returned as they are."""
    if not is_lazy_external(t):
        return t
    out = onnx.TensorProto()
    out.CopyFrom(t)
    _load_inline(out)
    return out


def _load_inline(t: onnx.TensorProto) -> None:
    """Read a lazily loaded external tensor's data into ``t`` itself."""
    data = read_external_bytes(t)
    del t.external_data[:]
    t.ClearField("data_location")
    t.raw_data = data


def strip_basepath(t: onnx.TensorProto) -> None:
    """Remove the ``basepath`` key of an external tensor (in place)."""
    keep = [(e.key, e.value) for e in t.external_data if e.key != BASEPATH]
    if len(keep) != len(t.external_data):
        del t.external_data[:]
        for key, value in keep:
            t.external_data.add(key=key, value=value)


def _graph_tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    yield from _node_tensor_protos(graph.node)


def _node_tensor_protos(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensor_protos(attr.g)
            for g in attr.graphs:
                yield from _graph_tensor_protos(g)


def iter_tensor_protos(proto: onnx.ModelProto, main_initializers: bool = True) -> Iterator[onnx.TensorProto]:
    """Every ``TensorProto`` of a model: initializers (the main graph's unless
    ``main_initializers`` is False) and tensor attributes, in every graph,
    subgraph and local function."""
    if main_initializers:
        yield from proto.graph.initializer
    yield from _node_tensor_protos(proto.graph.node)
    for f in proto.functions:
        yield from _node_tensor_protos(f.node)


class ExternalValues(gs.ir.tensor.LazyValues):
    """Lazy values of a tensor kept in an external-data file (a ``TensorProto``
    stub with ``basepath``): ``load()`` reads the file each time."""

    def load(self) -> np.ndarray:
        return tensor_array(self.tensor)  # inline once a save over its file read it in

    def __str__(self) -> str:
        return f"ExternalValues (shape={self.shape}, dtype={self.dtype})"


def _lazy(init: onnx.TensorProto) -> gs.ir.tensor.LazyValues:
    return ExternalValues(init) if is_lazy_external(init) else gs.ir.tensor.LazyValues(init)


def _use_external_values(graph: gs.Graph) -> int:
    """Give every gs Constant backed by a lazily loaded external tensor
    :class:`ExternalValues`; returns how many."""
    count = 0

    def swap(t) -> None:
        nonlocal count
        if isinstance(t, gs.Constant) and type(t._values) is gs.ir.tensor.LazyValues and is_lazy_external(t._values.tensor):
            t._values = ExternalValues(t._values.tensor)
            # gs would stamp EXTERNAL on a re-exported value (after a pass sets new values)
            t.data_location = None
            count += 1

    for g in iter_graphs(graph):
        for t in g.tensors().values():
            swap(t)
        for node in g.nodes:
            for value in node.attrs.values():
                swap(value)
    return count


@dataclass
class Model:
    """A model under rewrite.

    Attributes:
        graph: the main onnx-graphsurgeon graph; its ``functions`` hold local functions.
        opset_imports: opset version per domain ("" is the default ONNX domain),
            kept for every domain the original declared.
        ir_version: ONNX IR version of the original model.
        metadata_props: ``ModelProto.metadata_props`` as an ordered dict (PP-OCR keeps
            its character list there).
        producer_name, producer_version, domain, model_version, doc_string:
            the ``ModelProto`` fields of the same names.
        orphan_initializers: top-level initializers that no node uses; gs would drop
            them, the ``remove-unused-initializers`` pass does it explicitly.
        overridable: names of graph inputs that also have an initializer (a default
            value the user may override). They are never treated as constants.
    """

    graph: gs.Graph
    opset_imports: dict[str, int]
    ir_version: int
    metadata_props: dict[str, str] = field(default_factory=dict)
    producer_name: str = ""
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    orphan_initializers: list[gs.Constant] = field(default_factory=list)
    overridable: set[str] = field(default_factory=set)

    # ------------------------------------------------------------------ import
    @classmethod
    def from_proto(cls, proto: onnx.ModelProto) -> "Model":
        """Import a ``ModelProto`` whose external data is loaded, or left on disk
        with ``basepath`` (as :func:`onnxpress.graph.load` does): those weights
        become :class:`ExternalValues`, read from their file when needed.

        The tensors of ``proto`` are shared, not copied: the proto must not be
        mutated while the model is in use.
        """
        graph = gs.import_onnx(proto)
        if any(is_lazy_external(t) for t in iter_tensor_protos(proto)):
            _use_external_values(graph)
        tensors = graph.tensors()
        initializer_names = {t.name for t in proto.graph.initializer}
        # gs turns a graph input that has an initializer into a plain Constant and
        # drops it from the inputs; put it back, in its original position.
        overridable: set[str] = set()
        if any(i.name in initializer_names for i in proto.graph.input):
            inputs = []
            for vi in proto.graph.input:
                t = tensors.get(vi.name)
                if t is None:  # unused initializer-input: re-create it
                    init = next(x for x in proto.graph.initializer if x.name == vi.name)
                    t = gs.Constant(vi.name, _lazy(init))
                inputs.append(t)
                if vi.name in initializer_names:
                    overridable.add(vi.name)
            graph.inputs = inputs
        used = _names_read(proto.graph) | {o.name for o in proto.graph.output}
        orphans = [
            gs.Constant(init.name, _lazy(init))
            for init in proto.graph.initializer
            if init.name not in used and init.name not in overridable
        ]
        return cls(
            graph=graph,
            opset_imports={op.domain: op.version for op in proto.opset_import},
            ir_version=proto.ir_version,
            metadata_props={p.key: p.value for p in proto.metadata_props},
            producer_name=proto.producer_name,
            producer_version=proto.producer_version,
            domain=proto.domain,
            model_version=proto.model_version,
            doc_string=proto.doc_string,
            orphan_initializers=orphans,
            overridable=overridable,
        )

    # ------------------------------------------------------------------ export
    def export(self) -> tuple[onnx.ModelProto, list[onnx.TensorProto]]:
        """Export to a ``ModelProto`` whose main graph has no initializers, and the
        main graph's initializers as a separate list.

        Unchanged weights are the original ``TensorProto`` objects, not copies, so
        :func:`onnxpress.graph.save` can stream them to disk one at a time; weights
        left in external data are their stubs (with ``basepath``), not loaded.
        """
        opsets = dict(self.opset_imports)
        for g in iter_graphs(self.graph):
            for node in g.nodes:
                if node.domain and node.domain not in opsets and node.domain != "ai.onnx":
                    opsets[node.domain] = 1
                    logger.debug("adding opset import for domain %r", node.domain)
        graph = self.graph
        tensor_map = graph.tensors()
        inits = [
            OnnxExporter.export_tensor_proto(t)
            for t in tensor_map.values()
            if isinstance(t, gs.Constant) and not isinstance(t._values, SparseValues)
        ]
        sparse = [
            OnnxExporter.export_sparse_tensor_proto(t)
            for t in tensor_map.values()
            if isinstance(t, gs.Constant) and isinstance(t._values, SparseValues)
        ]
        inits.extend(OnnxExporter.export_tensor_proto(t) for t in self.orphan_initializers)
        for t in list(graph.inputs) + list(graph.outputs):
            tensor_map.pop(t.name, None)
        value_info = [
            OnnxExporter.export_value_info_proto(t, do_type_check=False)
            for t in tensor_map.values()
            if isinstance(t, gs.Variable) and (t.dtype is not None or t.shape is not None)
        ]
        gproto = onnx.helper.make_graph(
            nodes=[OnnxExporter.export_node(n) for n in graph.nodes],
            name=graph.name,
            inputs=[OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.inputs],
            outputs=[OnnxExporter.export_value_info_proto(t, do_type_check=False) for t in graph.outputs],
            initializer=[],
            sparse_initializer=sparse,
            doc_string=graph.doc_string,
            value_info=value_info,
        )
        main_names = {t.name for t in inits}
        inits.extend(_hoist_shared_initializers(gproto, self._shared_constant_names(), main_names))
        for sg in _subgraph_protos(gproto):
            _drop_shadow_initializers(sg, frozenset(main_names))
        proto = onnx.helper.make_model(
            gproto,
            opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opsets.items()],
            functions=[OnnxExporter.export_function(f) for f in graph.functions],
        )
        proto.ir_version = self.ir_version
        proto.producer_name = self.producer_name
        proto.producer_version = self.producer_version
        proto.domain = self.domain
        proto.model_version = self.model_version
        proto.doc_string = self.doc_string
        for key, value in self.metadata_props.items():
            proto.metadata_props.add(key=key, value=value)
        return proto, inits

    def to_proto(self, external: bool = False) -> onnx.ModelProto:
        """Export to a new ``ModelProto``.

        Args:
            external: False (default): self-contained, every weight copied in
                (external data read from disk). True: weights left in external
                data stay external stubs with ``basepath`` (cheap), for
                :func:`onnxpress.runtime_check.make_session` and
                :func:`onnxpress.calibration.capture`; not for ``onnx.save`` or
                an onnxruntime session made by other means.
        """
        proto, inits = self.export()
        proto.graph.initializer.extend(inits)  # copies: the proto's tensors are its own
        if not external:
            for t in iter_tensor_protos(proto):
                if is_lazy_external(t):
                    _load_inline(t)
        return proto

    def _shared_constant_names(self) -> set[str]:
        """Names of constants read by nodes of two or more graphs."""
        readers: dict[int, set[int]] = {}
        names: dict[int, str] = {}
        for g in iter_graphs(self.graph, functions=False):
            for node in g.nodes:
                for t in node.inputs:
                    if isinstance(t, gs.Constant):
                        readers.setdefault(id(t), set()).add(id(g))
                        names[id(t)] = t.name
        return {names[k] for k, v in readers.items() if len(v) > 1}

    # ----------------------------------------------------------------- helpers
    def is_constant(self, tensor: gs.Tensor) -> bool:
        """True when ``tensor`` is a gs Constant whose value cannot be overridden."""
        return is_foldable_constant(tensor, self.overridable)

    @property
    def opset(self) -> int:
        """Opset version of the default ONNX domain."""
        return self.opset_imports.get("", self.opset_imports.get("ai.onnx", 1))


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Names read by any node of ``graph`` or of its subgraphs (at any depth)."""
    names: set[str] = set()
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            names.update(node.input)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)
        names.update(o.name for o in g.output)
    return names


def _subgraph_protos(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Direct subgraphs of the nodes of ``graph``."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield attr.g
            elif attr.type == onnx.AttributeProto.GRAPHS:
                yield from attr.graphs


def _hoist_shared_initializers(
    main: onnx.GraphProto, names: set[str], have: set[str]
) -> list[onnx.TensorProto]:
    """gs writes a constant read by several subgraphs into each of them; remove
    those copies and return one of each, to become a main-graph initializer
    (visible to every subgraph). ``have``: names the main graph already holds."""
    hoisted: list[onnx.TensorProto] = []
    if not names:
        return hoisted
    stack = list(_subgraph_protos(main))
    while stack:
        g = stack.pop()
        keep = []
        for t in g.initializer:
            if t.name in names:
                if t.name not in have:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(t)
                    hoisted.append(copy)
                    have.add(t.name)
            else:
                keep.append(t)
        if len(keep) != len(g.initializer):
            kept = [onnx.TensorProto.FromString(t.SerializeToString()) for t in keep]
            del g.initializer[:]
            g.initializer.extend(kept)
        stack.extend(_subgraph_protos(g))
    return hoisted


def _drop_shadow_initializers(graph: onnx.GraphProto, outer: frozenset[str]) -> None:
    """gs writes an outer-scope constant read by a subgraph into the subgraph as
    well; drop such copies, so the subgraph reads the outer initializer again."""
    keep = [t for t in graph.initializer if t.name not in outer]
    if len(keep) != len(graph.initializer):
        kept = [onnx.TensorProto.FromString(t.SerializeToString()) for t in keep]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    visible = outer | {t.name for t in graph.initializer}
    for sg in _subgraph_protos(graph):
        _drop_shadow_initializers(sg, visible)


def is_foldable_constant(tensor: gs.Tensor, overridable: set[str] | frozenset[str] = frozenset()) -> bool:
    """True for a Constant that is not an overridable graph input."""
    return isinstance(tensor, gs.Constant) and tensor.name not in overridable


def _subgraphs(node: gs.Node) -> Iterator[gs.Graph]:
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            yield value
        elif isinstance(value, (list, tuple)):
            for v in value:
                if isinstance(v, gs.Graph):
                    yield v


def iter_graphs(graph: gs.Graph, functions: bool = True) -> Iterator[gs.Graph]:
    """Yield ``graph``, then every subgraph of If/Loop/Scan (any depth), then local
    functions and their subgraphs. Parents come before their subgraphs."""
    stack = [graph]
    if functions:
        stack.extend(reversed(list(getattr(graph, "functions", []) or [])))
    while stack:
        g = stack.pop()
        yield g
        children = [sg for node in g.nodes for sg in _subgraphs(node)]
        stack.extend(reversed(children))


def iter_proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """Yield ``graph`` and every subgraph (``If``/``Loop``/``Scan`` attributes, any
    depth) of a ``GraphProto``, parents first; :func:`iter_graphs` for a loaded model."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_proto_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_proto_graphs(sub)


def iter_nodes(graph: gs.Graph, functions: bool = True) -> Iterator[tuple[gs.Graph, gs.Node]]:
    """Yield ``(owning_graph, node)`` for every node of ``graph`` and its subgraphs."""
    for g in iter_graphs(graph, functions=functions):
        for node in list(g.nodes):
            yield g, node


def constant_array(tensor: gs.Constant) -> np.ndarray:
    """The value of a gs Constant as a numpy array.

    Unlike ``tensor.values``, reading a lazily loaded weight this way does not
    cache the array in the Constant, so the export keeps streaming the original
    ``TensorProto`` instead of a second copy of the weight.
    """
    values = tensor._values
    if isinstance(values, gs.ir.tensor.LazyValues):  # ExternalValues too: read from the file
        return values.load()
    return np.asarray(tensor.values)
