"""Model statistics: nodes by op type, parameters, weight bytes, MACs.

MACs (multiply-accumulates) are counted for Conv, ConvTranspose, Gemm, MatMul and
onnxruntime's ``com.microsoft.MatMulNBits`` (weight-only 2-8 bit MatMul, ``A [...,
K] x B [K, N]`` with ``K`` and ``N`` as attributes: ``prod(A.shape[:-1]) * K * N``,
the same count as the float MatMul or Gemm it replaces) whose ranks are known after
shape inference (:mod:`.shapes`). A symbolic dimension (a dynamic batch, height or
width) counts as 1, so MACs of a dynamic model are per unit of each dynamic
dimension (per sample for a dynamic batch); nodes with an unknown rank or an
unnamed unknown dimension are counted in ``macs_unknown_nodes``.

ONNX shape inference does not know contrib ops: it leaves a MatMulNBits output
untyped, and with it every tensor computed from it (in a transformer, every node
after the first quantized MatMul). :func:`stats_shapes` therefore infers on a copy
where each MatMulNBits stands in as a standard ``MatMul`` of ``A`` with a typed,
weightless ``[K, N]`` graph input (dtype of its ``scales``, which is the op's
``T1``), so its output gets ``[..., N]`` and the shapes after it follow.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .model import Model, iter_graphs, iter_proto_graphs
from .shapes import TensorType, _collect, _run_inference, _standalone_subgraph, infer_shapes, skeleton_proto

__all__ = ["ModelStats", "model_stats", "node_macs", "stats_shapes"]


@dataclass
class ModelStats:
    """Size and cost of a model.

    Attributes:
        nodes: node count, subgraphs and functions included.
        op_types: node count per op type (``domain:op`` outside the default domain).
        params: number of elements of all constant tensors (initializers and
            ``Constant`` node values), subgraphs included.
        weight_bytes: bytes of those tensors (their dtypes' sizes).
        macs: multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul (and
            com.microsoft.MatMulNBits) for one run, symbolic dimensions counted as 1.
        macs_unknown_nodes: such nodes whose shapes are not static.
        opsets: opset import per domain.
    """

    nodes: int = 0
    op_types: dict[str, int] = field(default_factory=dict)
    params: int = 0
    weight_bytes: int = 0
    macs: int = 0
    macs_unknown_nodes: int = 0
    opsets: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


_SUBBYTE = {"int4": 4, "uint4": 4, "float4_e2m1fn": 4}


def _nbytes(count: int, dtype) -> int:
    """Bytes of ``count`` elements as ONNX stores them (4-bit types packed in pairs)."""
    if dtype is None:
        return 0
    dt = np.dtype(dtype)
    bits = _SUBBYTE.get(dt.name)
    return (count * bits + 7) // 8 if bits else count * dt.itemsize


def _static(tt: TensorType | None) -> tuple[int, ...] | None:
    if tt is None or tt.shape is None or any(d is None for d in tt.shape):
        return None
    return tuple(d if isinstance(d, int) else 1 for d in tt.shape)


def _shape_of(t: gs.Tensor, shapes: dict[str, TensorType]) -> tuple[int, ...] | None:
    if isinstance(t, gs.Constant):
        return tuple(int(d) for d in t.shape)
    return _static(shapes.get(t.name))


def node_macs(node: gs.Node, shapes: dict[str, TensorType]) -> int | None:
    """MACs of one Conv/ConvTranspose/Gemm/MatMul/MatMulNBits node, None if shapes
    are unknown, 0 for other op types.

    Args:
        node: the node.
        shapes: tensor types (:func:`stats_shapes`); constants' shapes are read from
            the node's inputs. MatMulNBits needs only its input ``A``'s shape.
    """
    op = node.op
    if _is_matmulnbits(node):  # A [..., K] x packed B (K x N, 2-8 bits)
        a = _shape_of(node.inputs[0], shapes)
        return None if a is None else math.prod(a[:-1]) * int(node.attrs.get("K", 0)) * int(node.attrs.get("N", 0))
    if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or node.domain not in (None, "", "ai.onnx"):
        return 0
    ins = [_shape_of(t, shapes) if t.name else None for t in node.inputs]
    out = _shape_of(node.outputs[0], shapes)
    if op == "Conv":
        w = ins[1]
        if out is None or w is None:
            return None
        return math.prod(out) * math.prod(w[1:])  # out elems * Cin/group * k...
    if op == "ConvTranspose":
        x, w = ins[0], ins[1]
        if x is None or w is None:
            return None
        return math.prod(x) * math.prod(w[1:])  # in elems * Cout/group * k...
    if op == "Gemm":
        a = ins[0]
        if out is None or a is None:
            return None
        k = a[0] if node.attrs.get("transA", 0) else a[1]
        return math.prod(out) * k
    a = ins[0]  # MatMul
    if out is None or a is None:
        return None
    return math.prod(out) * a[-1]


_CONTRIB_DOMAIN = "com.microsoft"
_STANDIN_SUFFIX = "__onnxpress_matmulnbits_weight"


def _is_matmulnbits(node) -> bool:
    """A ``com.microsoft.MatMulNBits`` node (``gs.Node`` or ``onnx.NodeProto``)."""
    op = node.op if isinstance(node, gs.Node) else node.op_type
    return op == "MatMulNBits" and node.domain == _CONTRIB_DOMAIN


def _with_matmulnbits_standins(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace, in place, every ``com.microsoft.MatMulNBits`` node of ``proto`` (its
    subgraphs included) by ``MatMul(A, W)``, ``W`` a new graph input of the top
    graph (subgraphs read it from the outer scope) typed ``[K, N]`` with the element
    type of the node's ``scales``. A node whose ``K``/``N`` attributes or scales
    type are unknown is left as it is. Returns ``proto``."""
    graphs = list(iter_proto_graphs(proto.graph))
    elem: dict[str, int] = {}
    names: set[str] = set()
    for g in graphs:
        for t in g.initializer:
            elem[t.name] = t.data_type
        for vi in list(g.input) + list(g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                elem[vi.name] = vi.type.tensor_type.elem_type
        names.update(elem)
        for n in g.node:
            names.update(n.input)
            names.update(n.output)
    for g in graphs:
        for n in g.node:
            if not _is_matmulnbits(n) or len(n.input) < 3:
                continue
            attrs = {a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT}
            k, cols, dtype = attrs.get("K", 0), attrs.get("N", 0), elem.get(n.input[2], 0)
            if k <= 0 or cols <= 0 or not dtype:
                continue
            w = (n.output[0] or n.name or "matmulnbits") + _STANDIN_SUFFIX
            i = 0
            while w in names:
                i += 1
                w = f"{n.output[0]}{_STANDIN_SUFFIX}_{i}"
            names.add(w)
            proto.graph.input.append(onnx.helper.make_tensor_value_info(w, dtype, [k, cols]))
            standin = onnx.helper.make_node("MatMul", [n.input[0], w], [n.output[0]], name=n.name)
            n.CopyFrom(standin)
    return proto


def stats_shapes(model: Model) -> dict[str, TensorType]:
    """:func:`~onnxpress.graph.shapes.infer_shapes`, continued through
    ``com.microsoft.MatMulNBits`` nodes.

    Each MatMulNBits output gets ``A.shape[:-1] + (N,)`` (dtype of ``A``) and every
    tensor computed from it is inferred as usual (see the module docstring); the
    model itself is not modified. Without MatMulNBits nodes this is
    :func:`~onnxpress.graph.shapes.infer_shapes`.

    Returns:
        Map from tensor name to :class:`~onnxpress.graph.shapes.TensorType`, main
        graph and subgraphs; tensors whose type could not be inferred are absent.
        Inference errors are logged and yield a partial map, never an exception.
    """
    if not any(_is_matmulnbits(n) for g in iter_graphs(model.graph, functions=False) for n in g.nodes):
        return infer_shapes(model)
    result: dict[str, TensorType] = {}
    _collect(_run_inference(_with_matmulnbits_standins(skeleton_proto(model))).graph, result, recurse=True)
    for g in list(iter_graphs(model.graph, functions=False))[1:]:
        standalone = _with_matmulnbits_standins(_standalone_subgraph(model, g, result))
        _collect(_run_inference(standalone).graph, result, recurse=False)
    return {k: v for k, v in result.items() if _STANDIN_SUFFIX not in k}


def model_stats(model: Model, shapes: dict[str, TensorType] | None = None) -> ModelStats:
    """Count nodes, parameters, weight bytes and MACs of ``model``.

    Args:
        model: the model.
        shapes: tensor types as :func:`stats_shapes` returns them; computed with it
            when omitted (a map from plain :func:`infer_shapes` leaves the nodes
            after a MatMulNBits uncounted, in ``macs_unknown_nodes``).
    """
    if shapes is None:
        shapes = stats_shapes(model)
    stats = ModelStats(opsets=dict(model.opset_imports))
    ops: Counter[str] = Counter()
    seen: set[int] = set()

    def count_constant(t: gs.Constant, elements: int | None = None) -> None:
        if id(t) in seen:
            return
        seen.add(id(t))
        n = math.prod(t.shape) if t.shape is not None else 0
        stats.params += int(n if elements is None else elements)
        stats.weight_bytes += _nbytes(int(n), t.dtype)

    for g in iter_graphs(model.graph):
        for node in g.nodes:
            ops[node.op if node.domain in (None, "", "ai.onnx") else f"{node.domain}:{node.op}"] += 1
            if node.op == "MatMulNBits" and node.domain == "com.microsoft" and len(node.inputs) > 1:
                if isinstance(node.inputs[1], gs.Constant):  # packed bytes hold K x N weights
                    count_constant(node.inputs[1], int(node.attrs.get("K", 0)) * int(node.attrs.get("N", 0)))
            for t in node.inputs:
                if isinstance(t, gs.Constant):
                    count_constant(t)
            if node.op == "Constant" and "value" in node.attrs and isinstance(node.attrs["value"], gs.Constant):
                count_constant(node.attrs["value"])
            macs = node_macs(node, shapes)
            if macs is None:
                stats.macs_unknown_nodes += 1
            else:
                stats.macs += int(macs)
    for t in model.orphan_initializers:
        count_constant(t)
    stats.nodes = sum(ops.values())
    stats.op_types = dict(sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
    return stats
