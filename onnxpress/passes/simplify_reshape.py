"""Give Reshape nodes constant target shapes and collapse chains of reshapes.

Two rewrites, each only when it provably keeps values *and* shapes for every
value of the dynamic dimensions:

1. **Constant shape for a run-time shape.** Exporters often compute a Reshape's
   target at run time (``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``).
   Such a target is replaced by a constant one, entry by entry:

   * a value known at compile time (a constant, or a static dim read by
     ``Shape``) is written as is (``0`` and ``-1`` keep their meaning);
   * a dim that is provably input dim ``i`` at position ``i`` (read from the
     input itself by ``Shape``, or carrying the same inferred symbol) becomes
     ``0`` ("copy");
   * any other entry becomes ``-1``, at most once: every other output dim is then
     exact, so ``-1`` resolves to the same dim as before.

   The target value is evaluated symbolically over ``Shape``, ``Gather``,
   ``Slice``, ``Concat``, ``Unsqueeze``, ``Squeeze``, integer ``Cast``,
   ``Identity`` and integer ``Add``/``Sub``/``Mul``/``Div`` of known values; an
   entry it cannot determine may still be fixed by the Reshape output shape from
   :func:`~onnxpress.graph.infer_shapes` (a static dim ``> 0``, or the input's
   symbol at the same position). Shapes are inferred from the graph inputs only:
   declared value_info and output shapes are never read (ddddocr declares its
   output as ``[1, seqlen]`` but returns ``[T, 1, 8210]``; onnxslim trusted the
   declaration). Refused: ``allowzero=1``, an input of unknown rank, a target of
   unknown length, a static inferred output dim ``0``, and targets needing more
   than one ``-1``. The old shape chain becomes dead; ``eliminate-dead-code``
   removes it.

   Caveat (also true of onnxslim and onnxsim): with a ``-1`` and a copied dim
   that is ``0`` at run time (an empty batch), the element count is ``0`` and
   ``-1`` is ambiguous, so onnxruntime rejects the rewritten node where the
   original produced an empty tensor.

2. **Reshape of a reshape.** ``Reshape(R(x), s2) -> Reshape(x, s2)`` where ``R``
   is a ``Reshape``, ``Flatten``, ``Squeeze`` or ``Unsqueeze`` (they only change
   the shape) and ``s2`` is constant. A ``0`` entry of ``s2`` (``allowzero=0``)
   copies a dim of the intermediate, so it is accepted only when that dim
   provably equals the same dim of ``x`` (equal static dims, the same inferred
   symbol, or a ``0`` of a constant first target). The first node stays when
   something else reads its output, and is removed otherwise.

The pass re-infers shapes and repeats (at most ``max_rounds`` times) while it
changes something, so a reshape whose input shape becomes known only after an
earlier rewrite (opset < 14 shape inference does not see through run-time
targets) is handled in the same run.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Model, NameGenerator, TensorType, iter_graphs
from ._rewrite import (
    ONNX_DOMAINS,
    all_graph_outputs,
    constant_value,
    optional_input,
    remove_nodes,
)
from .base import Context, Pass, PassResult, register

__all__ = ["SimplifyReshape"]

logger = logging.getLogger(__name__)

_RESHAPE_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")


@dataclass(frozen=True)
class _DimOf:
    """A shape entry equal to dim ``axis`` of tensor ``tensor_id`` (``symbol``: its
    inferred symbolic name, or None)."""

    tensor_id: int
    axis: int
    symbol: str | None


class _Unknown(Exception):
    """The value of a shape tensor cannot be evaluated."""


# An evaluated 0-D or 1-D integer tensor: its entries (int, _DimOf or None for an
# unknown entry) and whether it is a scalar.
_Value = tuple[tuple[Any, ...], bool]


@register
@dataclass
class SimplifyReshape(Pass):
    """Make run-time Reshape targets constant and collapse Reshape-of-reshape chains
    (see the module docstring for what is proven before each rewrite).

    Attributes:
        max_rounds: how many times shapes are re-inferred within one run.
    """

    name = "simplify-reshape"
    summary = "give Reshape a constant target when shapes prove it; collapse Reshape(Reshape(x))"

    max_rounds: int = 4

    def run(self, model: Model, ctx: Context) -> PassResult:
        counts = {"constant_shapes": 0, "chains_collapsed": 0, "nodes_removed": 0}
        self._model = model
        self._names = NameGenerator(model)
        try:
            for _ in range(max(1, self.max_rounds)):
                if not self._round(counts):
                    break
        finally:
            del self._model, self._names
        edits = counts["constant_shapes"] + counts["chains_collapsed"]
        if edits:
            logger.info("simplify-reshape: %s", counts)
        return PassResult(modified=edits > 0, stats=dict(counts))

    # ------------------------------------------------------------- one round
    def _round(self, counts: dict[str, int]) -> bool:
        self._shapes = self.shapes(self._model)
        self._outputs = all_graph_outputs(self._model)
        changed = False
        try:
            for g in iter_graphs(self._model.graph):
                self._cache: dict[int, _Value | None] = {}
                for node in list(g.nodes):
                    if node.op != "Reshape" or node.domain not in ONNX_DOMAINS or len(node.inputs) < 2:
                        continue
                    if not node.outputs:
                        continue  # removed earlier in this round
                    if self._collapse_chain(g, node, counts):
                        changed = True
                    elif self._constant_shape(node):
                        counts["constant_shapes"] += 1
                        changed = True
        finally:
            del self._shapes, self._outputs
        return changed

    # ------------------------------------------------------------- helpers
    def _shape_of(self, t: gs.Tensor) -> tuple | None:
        if self._model.is_constant(t):
            return tuple(int(d) for d in t.shape)
        tt: TensorType | None = self._shapes.get(t.name)
        return tt.shape if tt is not None else None

    def _const(self, t: gs.Tensor | None) -> np.ndarray | None:
        """The value of an initializer or of a ``Constant`` node's output, else None."""
        return constant_value(self._model, t)

    @staticmethod
    def _allowzero(node: gs.Node) -> int | None:
        value = node.attrs.get("allowzero", 0)
        if isinstance(value, gs.Node.AttributeRef):
            return None
        return int(value)

    # ------------------------------------------------- rewrite 1: constant shape
    def _constant_shape(self, node: gs.Node) -> bool:
        target_t = node.inputs[1]
        if not target_t.name or self._const(target_t) is not None:
            return False
        if self._allowzero(node) != 0:
            return False  # allowzero=1, or a reference to a function attribute
        x = node.inputs[0]
        in_shape = self._shape_of(x)
        if in_shape is None:
            return False
        out_tt = self._shapes.get(node.outputs[0].name)
        out_shape = out_tt.shape if out_tt is not None else None
        try:
            value = self._value(target_t)
        except _Unknown:
            value = None
        if value is not None and value[1]:
            return False  # a scalar target is invalid; leave it to onnxruntime to say so
        entries = list(value[0]) if value is not None else None
        if entries is None:
            if out_shape is None:
                return False
            entries = [None] * len(out_shape)
        if out_shape is not None and len(out_shape) != len(entries):
            return False  # inconsistent; trust neither
        if out_shape is not None and any(d == 0 for d in out_shape if isinstance(d, int)):
            return False
        result: list[int] = []
        for i, e in enumerate(entries):
            r = self._resolve(e, i, x, in_shape)
            if r is None and out_shape is not None:
                d = out_shape[i]
                if isinstance(d, int) and d > 0:
                    r = d
                elif isinstance(d, str) and i < len(in_shape) and in_shape[i] == d:
                    r = 0
            result.append(-1 if r is None else r)
        if result.count(-1) > 1:
            logger.debug("simplify-reshape: %s needs %d unknown dims", node.name, result.count(-1))
            return False
        const = gs.Constant(self._names.new(f"{node.name or 'reshape'}_shape"), np.array(result, dtype=np.int64))
        node.inputs[1] = const
        logger.debug("simplify-reshape: %s target -> %s", node.name, result)
        return True

    @staticmethod
    def _resolve(entry: Any, i: int, x: gs.Tensor, in_shape: tuple) -> int | None:
        """The constant to write at position ``i``, or None when not provable."""
        if isinstance(entry, int):
            return entry  # the run-time value itself; 0 and -1 mean what they meant
        if isinstance(entry, _DimOf):
            if entry.tensor_id == id(x) and entry.axis == i:
                return 0
            if entry.symbol is not None and i < len(in_shape) and in_shape[i] == entry.symbol:
                return 0
        return None

    # ------------------------------------------------ symbolic shape evaluation
    def _value(self, t: gs.Tensor) -> _Value | None:
        """Evaluate an integer tensor of rank <= 1 (raises _Unknown when impossible)."""
        key = id(t)
        if key in self._cache:
            cached = self._cache[key]
            if cached is None:
                raise _Unknown(t.name)
            return cached
        self._cache[key] = None  # guards against cycles
        value = self._evaluate(t)
        self._cache[key] = value
        return value

    def _evaluate(self, t: gs.Tensor) -> _Value:
        const = self._const(t)
        if const is not None:
            if const.ndim > 1 or const.dtype.kind not in "iu" or const.size > 64:
                raise _Unknown(t.name)
            return tuple(int(v) for v in const.reshape(-1)), const.ndim == 0
        if not t.inputs:
            raise _Unknown(t.name)
        node = t.inputs[0]
        if node.domain not in ONNX_DOMAINS or node.outputs[0] is not t:
            raise _Unknown(t.name)
        method = getattr(self, f"_eval_{node.op}", None)
        if method is None:
            raise _Unknown(t.name)
        try:
            return method(node)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise _Unknown(t.name) from exc

    def _attr(self, node: gs.Node, name: str, default: Any = None) -> Any:
        value = node.attrs.get(name, default)
        if isinstance(value, gs.Node.AttributeRef):
            raise _Unknown(node.name)
        return value

    def _const_ints(self, node: gs.Node, index: int, attr: str | None = None) -> list[int] | None:
        """Ints from input ``index`` (opset >= 13 style) or attribute ``attr``."""
        t = optional_input(node, index)
        if t is not None:
            value = self._const(t)
            if value is None:
                raise _Unknown(node.name)
            return [int(v) for v in value.reshape(-1)]
        if attr is not None and attr in node.attrs:
            return [int(v) for v in self._attr(node, attr)]
        return None

    def _eval_Shape(self, node: gs.Node) -> _Value:
        x = node.inputs[0]
        shape = self._shape_of(x)
        if shape is None:
            raise _Unknown(node.name)
        rank = len(shape)
        start = int(self._attr(node, "start", 0))
        end = self._attr(node, "end", None)
        end = rank if end is None else int(end)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = min(max(end + rank if end < 0 else end, 0), rank)
        entries = []
        for j in range(start, end):
            d = shape[j]
            entries.append(d if isinstance(d, int) else _DimOf(id(x), j, d))
        return tuple(entries), False

    def _eval_Identity(self, node: gs.Node) -> _Value:
        return self._value(node.inputs[0])

    def _eval_Cast(self, node: gs.Node) -> _Value:
        # Shape dims fit in int32; any other destination type is refused.
        to = int(self._attr(node, "to"))
        if to not in (6, 7):  # INT32, INT64
            raise _Unknown(node.name)
        return self._value(node.inputs[0])

    def _eval_Gather(self, node: gs.Node) -> _Value:
        if int(self._attr(node, "axis", 0)) != 0:
            raise _Unknown(node.name)
        data, scalar = self._value(node.inputs[0])
        idx = self._const(node.inputs[1])
        if scalar or idx is None or idx.ndim > 1:
            raise _Unknown(node.name)
        n = len(data)
        picked = []
        for k in idx.reshape(-1):
            k = int(k)
            if not -n <= k < n:
                raise _Unknown(node.name)
            picked.append(data[k + n if k < 0 else k])
        return tuple(picked), idx.ndim == 0

    def _eval_Slice(self, node: gs.Node) -> _Value:
        data, scalar = self._value(node.inputs[0])
        if scalar:
            raise _Unknown(node.name)
        if self._model.opset < 10:
            starts, ends = self._attr(node, "starts"), self._attr(node, "ends")
            axes, steps = self._attr(node, "axes", None), None
        else:
            starts, ends = self._const_ints(node, 1), self._const_ints(node, 2)
            axes, steps = self._const_ints(node, 3), self._const_ints(node, 4)
        if starts is None or ends is None or len(starts) != 1 or len(ends) != 1:
            raise _Unknown(node.name)
        if axes is not None and [int(a) for a in axes] not in ([0], [-1]):
            raise _Unknown(node.name)
        step = 1 if steps is None else int(steps[0])
        if step <= 0:
            raise _Unknown(node.name)
        n = len(data)
        start, end = int(starts[0]), int(ends[0])
        start = min(max(start + n if start < 0 else start, 0), n)
        end = min(max(end + n if end < 0 else end, 0), n)
        return tuple(data[start:end:step]), False

    def _eval_Concat(self, node: gs.Node) -> _Value:
        if int(self._attr(node, "axis")) not in (0, -1):
            raise _Unknown(node.name)
        entries: list[Any] = []
        for t in node.inputs:
            values, scalar = self._value(t)
            if scalar:
                raise _Unknown(node.name)
            entries.extend(values)
        return tuple(entries), False

    def _eval_Unsqueeze(self, node: gs.Node) -> _Value:
        values, scalar = self._value(node.inputs[0])
        axes = self._const_ints(node, 1, "axes")
        if not scalar or axes is None or [int(a) for a in axes] not in ([0], [-1]):
            raise _Unknown(node.name)
        return values, False

    def _eval_Squeeze(self, node: gs.Node) -> _Value:
        values, scalar = self._value(node.inputs[0])
        axes = self._const_ints(node, 1, "axes")
        if scalar or len(values) != 1 or (axes is not None and [int(a) for a in axes] not in ([0], [-1])):
            raise _Unknown(node.name)
        return values, True

    def _binary(self, node: gs.Node, fn) -> _Value:
        (a, sa), (b, sb) = self._value(node.inputs[0]), self._value(node.inputs[1])
        if len(a) != len(b):
            if len(a) == 1:
                a = a * len(b)
            elif len(b) == 1:
                b = b * len(a)
            else:
                raise _Unknown(node.name)
        out = tuple(fn(p, q) if isinstance(p, int) and isinstance(q, int) else None for p, q in zip(a, b))
        return out, sa and sb

    def _eval_Add(self, node):
        return self._binary(node, lambda p, q: p + q)

    def _eval_Sub(self, node):
        return self._binary(node, lambda p, q: p - q)

    def _eval_Mul(self, node):
        return self._binary(node, lambda p, q: p * q)

    def _eval_Div(self, node):
        def div(p: int, q: int) -> int | None:
            return p // q if p >= 0 and q > 0 else None  # truncation == floor here

        return self._binary(node, div)

    # -------------------------------------------- rewrite 2: reshape of a reshape
    def _collapse_chain(self, g: gs.Graph, node: gs.Node, counts: dict[str, int]) -> bool:
        mid = node.inputs[0]
        first = mid.inputs[0] if mid.inputs else None
        if first is None or first.op not in _RESHAPE_LIKE or first.domain not in ONNX_DOMAINS:
            return False
        if first.outputs[0] is not mid:
            return False
        target = self._const(node.inputs[1])
        allowzero = self._allowzero(node)
        if target is None or target.ndim != 1 or allowzero is None:
            return False
        x = first.inputs[0]
        if not allowzero:
            for i in np.flatnonzero(target == 0):
                if not self._same_dim(first, x, mid, int(i)):
                    return False
        node.inputs[0] = x
        counts["chains_collapsed"] += 1
        logger.debug("simplify-reshape: %s reads %s directly", node.name, x.name)
        if not mid.outputs and id(mid) not in self._outputs and any(n is first for n in g.nodes):
            remove_nodes(g, [first])
            counts["nodes_removed"] += 1
        return True

    def _same_dim(self, first: gs.Node, x: gs.Tensor, mid: gs.Tensor, i: int) -> bool:
        """Dim ``i`` of ``mid`` (= first(x)) provably equals dim ``i`` of ``x``."""
        if first.op == "Reshape":
            s1 = self._const(optional_input(first, 1))
            if (
                s1 is not None
                and s1.ndim == 1
                and i < s1.size
                and int(s1[i]) == 0
                and self._allowzero(first) == 0
            ):
                return True
        a, b = self._shape_of(x), self._shape_of(mid)
        if a is None or b is None or i >= len(a) or i >= len(b):
            return False
        return a[i] is not None and a[i] == b[i]
