"""Model statistics: nodes by op type, parameters, weight bytes, MACs.

MACs (multiply-accumulates) are counted for Conv, ConvTranspose, Gemm and MatMul
whose ranks are known after shape inference (:mod:`.shapes`). A symbolic dimension
(a dynamic batch, height or width) counts as 1, so MACs of a dynamic model are per
unit of each dynamic dimension (per sample for a dynamic batch); nodes with an
unknown rank or an unnamed unknown dimension are counted in ``macs_unknown_nodes``.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from .model import Model, iter_graphs
from .shapes import TensorType, infer_shapes

__all__ = ["ModelStats", "model_stats"]


@dataclass
class ModelStats:
    """Size and cost of a model.

    Attributes:
        nodes: node count, subgraphs and functions included.
        op_types: node count per op type (``domain:op`` outside the default domain).
        params: number of elements of all constant tensors (initializers and
            ``Constant`` node values), subgraphs included.
        weight_bytes: bytes of those tensors (their dtypes' sizes).
        macs: multiply-accumulates of Conv/ConvTranspose/Gemm/MatMul for one run,
            symbolic dimensions counted as 1.
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
    """MACs of one Conv/ConvTranspose/Gemm/MatMul node, None if shapes are unknown,
    0 for other op types."""
    op = node.op
    if op == "MatMulNBits" and node.domain == "com.microsoft":  # A [..., K] x packed B (K x N, 2-8 bits)
        a = _shape_of(node.inputs[0], shapes)  # its output's shape is not inferred (contrib op)
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


def model_stats(model: Model, shapes: dict[str, TensorType] | None = None) -> ModelStats:
    """Count nodes, parameters, weight bytes and MACs of ``model``.

    Args:
        model: the model.
        shapes: result of :func:`infer_shapes`; computed when omitted.
    """
    if shapes is None:
        shapes = infer_shapes(model)
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
