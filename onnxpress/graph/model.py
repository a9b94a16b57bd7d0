"""The working IR: an onnx-graphsurgeon graph plus what gs does not keep.

onnx-graphsurgeon (gs) imports an ``onnx.ModelProto`` into a mutable graph of
``Node``/``Variable``/``Constant`` objects, with subgraphs of ``If``/``Loop``/``Scan``
sharing outer-scope tensor objects. On its own, a gs round trip loses model
metadata (``metadata_props``, ``doc_string``, ``domain``, ``model_version``), drops
graph inputs that are also initializers (IR >= 4 overridable initializers), and
silently drops unused initializers. :class:`Model` restores all three, so that
``Model.from_proto(p).to_proto()`` means the same as ``p``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import SparseValues

__all__ = ["Model", "iter_graphs", "iter_nodes", "is_foldable_constant"]

logger = logging.getLogger(__name__)


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
        """Import a ``ModelProto`` whose external data is already loaded.

        The tensors of ``proto`` are shared, not copied: the proto must not be
        mutated while the model is in use.
        """
        graph = gs.import_onnx(proto)
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
                    t = gs.Constant(vi.name, gs.ir.tensor.LazyValues(init))
                inputs.append(t)
                if vi.name in initializer_names:
                    overridable.add(vi.name)
            graph.inputs = inputs
        used = _names_read(proto.graph) | {o.name for o in proto.graph.output}
        orphans = [
            gs.Constant(init.name, gs.ir.tensor.LazyValues(init))
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
        :func:`onnxpress.graph.save` can stream them to disk one at a time.
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

    def to_proto(self) -> onnx.ModelProto:
        """Export to a new, self-contained ``ModelProto`` (weights copied in)."""
        proto, inits = self.export()
        proto.graph.initializer.extend(inits)
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
    if isinstance(values, gs.ir.tensor.LazyValues):
        return values.load()
    return np.asarray(tensor.values)
