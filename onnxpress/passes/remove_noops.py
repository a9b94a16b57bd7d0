"""Remove nodes that return their input unchanged.

Removed, each only when it provably changes neither values, shape nor dtype:

* ``Identity``; ``Dropout`` in inference mode (opset < 12: always, except an
  opset < 7 ``is_test=0``; opset >= 12: no ``training_mode`` input or a constant
  False one) whose ``mask`` output is unused;
* ``Cast``/``CastLike`` to the dtype of the input (dtype from :func:`infer_shapes`
  or from the Constant), and ``Cast`` round trips ``A -> B -> A`` where ``B``
  represents every value of ``A`` exactly (``f16 -> f32 -> f16``,
  ``int8 -> int32 -> int8``, ``bool -> * -> bool``; never ``f32 -> f16 -> f32``,
  ``f32 -> int32 -> f32`` or ``int64 -> f32 -> int64``). The first cast goes too
  when nothing else reads its output;
* ``Reshape``/``Flatten`` whose result shape equals the input shape, computed from
  shapes inferred from the inputs (declared shapes are not trusted). With a
  symbolic dim, only a provable identity is removed: every target entry a copy
  (``0``, ``allowzero=0``) or equal to a static dim, plus at most one ``-1`` when
  every other dim is a static positive int; ``Flatten(axis=1)`` of a rank-2 tensor;
* ``Transpose`` with the identity permutation; ``Pad`` with all-zero constant
  pads; ``Slice`` with constant ``starts=0``, ``steps=1`` and ``ends`` at least the
  static dim (or >= 2**31 - 1 for a dynamic dim);
* ``Mul``/``Div`` by a constant of ones (``Mul`` either side, ``Div`` on the right),
  ``Add`` of zeros (either side), ``Sub`` of zeros (right), when the constant has
  the other input's dtype and broadcasting cannot change the output shape (the
  constant's rank is at most the other's, each of its dims 1 or equal to the
  matching static dim). ``x + 0.0`` turns ``-0.0`` into ``+0.0``; values compare
  equal, so the rewrite is accepted as lossless.

A node is removed through :func:`~onnxpress.passes._rewrite.bypass_node`; when that
refuses (the output is a graph output that the input's producer cannot write,
e.g. an ``Identity`` of an outer-scope value inside an ``If`` branch), the node
stays.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import Model, TensorType, constant_array, iter_graphs
from ._rewrite import ONNX_DOMAINS, all_graph_outputs, bypass_node, optional_input, remove_nodes
from .base import Context, Pass, PassResult, register

__all__ = ["RemoveNoops", "cast_is_exact"]

logger = logging.getLogger(__name__)

_T = onnx.TensorProto
_FLOATS_ALL = {_T.FLOAT16, _T.BFLOAT16, _T.FLOAT, _T.DOUBLE}
_INTS_ALL = {_T.INT8, _T.INT16, _T.INT32, _T.INT64, _T.UINT8, _T.UINT16, _T.UINT32, _T.UINT64}

# A -> set of B such that every value of A is exactly representable in B.
_EXACT: dict[int, set[int]] = {
    _T.BOOL: _INTS_ALL | _FLOATS_ALL,
    _T.INT8: {_T.INT16, _T.INT32, _T.INT64} | _FLOATS_ALL,  # |v| <= 128 < 2**8 (bf16 mantissa)
    _T.UINT8: {_T.UINT16, _T.UINT32, _T.UINT64, _T.INT16, _T.INT32, _T.INT64} | _FLOATS_ALL,
    _T.INT16: {_T.INT32, _T.INT64, _T.FLOAT, _T.DOUBLE},
    _T.UINT16: {_T.UINT32, _T.UINT64, _T.INT32, _T.INT64, _T.FLOAT, _T.DOUBLE},
    _T.INT32: {_T.INT64, _T.DOUBLE},
    _T.UINT32: {_T.UINT64, _T.INT64, _T.DOUBLE},
    _T.FLOAT16: {_T.FLOAT, _T.DOUBLE},
    _T.BFLOAT16: {_T.FLOAT, _T.DOUBLE},
    _T.FLOAT: {_T.DOUBLE},
}

# Slice ends at or above this are taken as "to the end" for a dynamic dim.
_DYNAMIC_END = 2**31 - 1

# Cap on the rounds of one run (each re-infers shapes after removals).
_MAX_ROUNDS = 8


def cast_is_exact(src: int, dst: int) -> bool:
    """True when casting ``src`` to ``dst`` (TensorProto dtypes) and back is lossless."""
    return dst in _EXACT.get(src, set())


class _Ref(Exception):
    """An attribute is a reference to a function attribute (value unknown)."""


def _attr(node: gs.Node, name: str, default: Any = None) -> Any:
    value = node.attrs.get(name, default)
    if isinstance(value, gs.Node.AttributeRef):
        raise _Ref(name)
    return value


def _elem_type(dtype) -> int | None:
    if dtype is None:
        return None
    if isinstance(dtype, int):
        return dtype
    try:
        return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))
    except Exception:  # unusual dtype objects: treat as unknown
        return None



@register
@dataclass
class RemoveNoops(Pass):
    """Remove Identity, inference Dropout and provably no-op Cast, Reshape, Flatten,
    Transpose, Pad, Slice and arithmetic nodes (see the module docstring)."""

    name = "remove-noops"
    summary = "remove Identity, inference Dropout, and Cast/Reshape/Transpose/Pad/Slice/Mul-by-1 no-ops"

    def run(self, model: Model, ctx: Context) -> PassResult:
        self._model = model
        self._outputs = all_graph_outputs(model)
        counts: dict[str, int] = {}
        self._counts = counts
        self._local = set()
        try:
            # A removal can let shape inference see more (an ``Add`` of zeros on a
            # Split's sizes hides the output shapes that prove a later ``Mul`` by
            # ones a no-op): repeat with fresh shapes until a round removes nothing.
            for _ in range(_MAX_ROUNDS):
                before = sum(counts.values())
                self._shapes = self.shapes(model)
                for g in iter_graphs(model.graph):
                    self._local = {id(n) for n in g.nodes}
                    for node in list(g.nodes):
                        if not node.outputs or node.domain not in ONNX_DOMAINS:
                            continue  # removed earlier in this loop, or a custom op
                        check = getattr(self, f"_check_{node.op}", None)
                        if check is None:
                            continue
                        try:
                            kind = check(g, node)
                        except _Ref:
                            continue
                        if kind:
                            counts[kind] = counts.get(kind, 0) + 1
                            logger.debug("remove-noops: %s (%s) -> %s", node.name, node.op, kind)
                if sum(counts.values()) == before:
                    break
        finally:
            del self._model, self._shapes, self._local, self._counts, self._outputs
        removed = sum(counts.values())
        stats: dict[str, int | float] = {"nodes_removed": removed, **dict(sorted(counts.items()))}
        if removed:
            logger.info("remove-noops: removed %d nodes %s", removed, dict(sorted(counts.items())))
        return PassResult(modified=removed > 0, stats=stats)

    # ------------------------------------------------------------- helpers
    def _type(self, t: gs.Tensor) -> TensorType | None:
        if self._model.is_constant(t):
            return TensorType(np.dtype(t.dtype), tuple(int(d) for d in t.shape))
        return self._shapes.get(t.name)

    def _const(self, t: gs.Tensor | None) -> np.ndarray | None:
        if t is None or not self._model.is_constant(t):
            return None
        return constant_array(t)

    def _bypass(self, g: gs.Graph, node: gs.Node, kind: str, index: int = 0) -> str | None:
        return kind if bypass_node(self._model, g, node, index, self._outputs) else None

    # ------------------------------------------------------------ per op
    def _check_Identity(self, g, node):
        return self._bypass(g, node, "identity")

    def _check_Dropout(self, g, node):
        if len(node.outputs) > 1 and node.outputs[1].name:
            mask = node.outputs[1]
            if mask.outputs or id(mask) in self._outputs:
                return None
        if self._model.opset < 7 and not _attr(node, "is_test", 0):
            return None
        mode = optional_input(node, 2)
        if mode is not None:
            value = self._const(mode)
            if value is None or value.size != 1 or bool(value.reshape(-1)[0]):
                return None
        return self._bypass(g, node, "dropout")

    def _check_Cast(self, g, node):
        to = _attr(node, "to")
        src = self._type(node.inputs[0])
        if to is None or src is None:
            return None
        a = _elem_type(src.dtype)
        if a is not None and a == to:
            return self._bypass(g, node, "cast")
        return self._cast_round_trip(g, node, to)

    def _check_CastLike(self, g, node):
        src, like = self._type(node.inputs[0]), self._type(node.inputs[1])
        if src is None or like is None:
            return None
        a, b = _elem_type(src.dtype), _elem_type(like.dtype)
        if a is not None and a == b:
            return self._bypass(g, node, "cast")
        return None

    def _cast_round_trip(self, g, second: gs.Node, to: int) -> str | None:
        mid = second.inputs[0]
        first = mid.inputs[0] if mid.inputs else None
        if first is None or first.op != "Cast" or first.domain not in ONNX_DOMAINS:
            return None
        if id(first) not in self._local:
            return None  # produced in an outer graph
        x = first.inputs[0]
        xt = self._type(x)
        a = _elem_type(xt.dtype) if xt is not None else None
        b = _attr(first, "to")
        if a is None or a != to or b is None or not cast_is_exact(a, b):
            return None
        second.inputs[0] = x
        if not bypass_node(self._model, g, second, 0, self._outputs):
            second.inputs[0] = mid  # undo: nothing changed
            return None
        if not mid.outputs and id(mid) not in self._outputs:
            remove_nodes(g, [first])
            self._counts["cast_round_trip"] = self._counts.get("cast_round_trip", 0) + 1
        return "cast_round_trip"

    def _check_Reshape(self, g, node):
        target = self._const(optional_input(node, 1))
        src = self._type(node.inputs[0])
        if target is None or src is None or src.shape is None or target.ndim != 1:
            return None
        target = [int(v) for v in target]
        shape = src.shape
        if len(target) != len(shape):
            return None
        allowzero = bool(_attr(node, "allowzero", 0))
        minus = [i for i, v in enumerate(target) if v == -1]
        if len(minus) > 1:
            return None
        for i, v in enumerate(target):
            if v == -1:
                continue
            if v == 0 and not allowzero:
                continue  # copies the input dim, whatever it is
            if not (isinstance(shape[i], int) and shape[i] == v):
                return None
        if minus:
            others = [shape[i] for i in range(len(shape)) if i != minus[0]]
            # -1 resolves to the input dim only when the other dims are known and nonzero
            if not all(isinstance(d, int) and d > 0 for d in others):
                return None
        return self._bypass(g, node, "reshape")

    def _check_Flatten(self, g, node):
        src = self._type(node.inputs[0])
        if src is None or src.shape is None or len(src.shape) != 2:
            return None
        axis = int(_attr(node, "axis", 1))
        if axis < 0:
            axis += 2
        if axis == 1:
            return self._bypass(g, node, "flatten")
        if not src.static:
            return None
        rows = int(np.prod(src.shape[:axis], dtype=np.int64))
        cols = int(np.prod(src.shape[axis:], dtype=np.int64))
        if (rows, cols) == tuple(src.shape):
            return self._bypass(g, node, "flatten")
        return None

    def _check_Transpose(self, g, node):
        perm = _attr(node, "perm")
        if perm is None:
            src = self._type(node.inputs[0])
            if src is None or src.shape is None or len(src.shape) > 1:
                return None
        elif list(perm) != list(range(len(perm))):
            return None
        return self._bypass(g, node, "transpose")

    def _check_Pad(self, g, node):
        if self._model.opset < 11:
            pads = _attr(node, "pads", _attr(node, "paddings"))
            pads = None if pads is None else np.asarray(pads)
        else:
            pads = self._const(optional_input(node, 1))
        if pads is None or np.any(pads != 0):
            return None
        return self._bypass(g, node, "pad")

    def _check_Slice(self, g, node):
        if self._model.opset < 10:
            starts, ends = _attr(node, "starts"), _attr(node, "ends")
            axes, steps = _attr(node, "axes"), None
            if starts is None or ends is None:
                return None
        else:
            starts, ends = self._const(optional_input(node, 1)), self._const(optional_input(node, 2))
            axes_t, steps_t = optional_input(node, 3), optional_input(node, 4)
            axes, steps = self._const(axes_t), self._const(steps_t)
            if starts is None or ends is None or (axes_t is not None and axes is None):
                return None
            if steps_t is not None and steps is None:
                return None
        starts = [int(v) for v in np.asarray(starts).reshape(-1)]
        ends = [int(v) for v in np.asarray(ends).reshape(-1)]
        axes = list(range(len(starts))) if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
        steps = [1] * len(starts) if steps is None else [int(v) for v in np.asarray(steps).reshape(-1)]
        if not (len(starts) == len(ends) == len(axes) == len(steps)):
            return None
        src = self._type(node.inputs[0])
        shape = src.shape if src is not None else None
        for start, end, axis, step in zip(starts, ends, axes, steps):
            if step != 1 or start != 0:
                return None
            if axis < 0:
                if shape is None:
                    return None
                axis += len(shape)
            dim = shape[axis] if shape is not None and 0 <= axis < len(shape) else None
            if isinstance(dim, int):
                if end < dim:
                    return None
            elif end < _DYNAMIC_END:
                return None
        return self._bypass(g, node, "slice")

    def _arith(self, g, node, neutral: int, sides: tuple[int, ...], kind: str) -> str | None:
        if len(node.inputs) != 2:
            return None
        for side in sides:
            const_t, other_t = node.inputs[side], node.inputs[1 - side]
            value = self._const(const_t)
            if value is None:
                continue
            if not np.all(value == neutral):
                continue
            other = self._type(other_t)
            if other is None or _elem_type(other.dtype) is None:
                continue
            if _elem_type(other.dtype) != _elem_type(value.dtype):
                continue
            if value.ndim > 0:
                if other.shape is None or value.ndim > len(other.shape):
                    continue
                dims = other.shape[len(other.shape) - value.ndim:]
                if not all(c == 1 or (isinstance(d, int) and d == c) for c, d in zip(value.shape, dims)):
                    continue
            if bypass_node(self._model, g, node, 1 - side, self._outputs):
                return kind
            return None
        return None

    def _check_Mul(self, g, node):
        return self._arith(g, node, 1, (1, 0), "mul_one")

    def _check_Div(self, g, node):
        return self._arith(g, node, 1, (1,), "div_one")

    def _check_Add(self, g, node):
        return self._arith(g, node, 0, (1, 0), "add_zero")

    def _check_Sub(self, g, node):
        return self._arith(g, node, 0, (1,), "sub_zero")
