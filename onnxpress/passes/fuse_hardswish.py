"""Fuse decomposed HardSwish (``x * Clip(x + 3, 0, 6) / 6``) into one operator.

Exporters that lack HardSwish (Paddle2ONNX for PP-OCRv4's PP-LCNetV3 backbone,
PyTorch's ``x * F.relu6(x + 3) / 6``) write it as four elementwise nodes. The
ONNX operator definitions are

* ``HardSigmoid(x; alpha, beta) = max(0, min(1, alpha * x + beta))`` (opset 6+);
* ``HardSwish(x) = x * max(0, min(1, x / 6 + 0.5))`` (opset 14+), i.e.
  ``x * HardSigmoid(x; alpha=1/6, beta=0.5)``;

and ``x * Clip(x + 3, 0, 6) / 6 = x * clip(x / 6 + 0.5, 0, 1)``: the same function,
up to float rounding. Matched forms (any operand order of the commutative ``Add``
and ``Mul``):

* ``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` and ``Mul(Mul(...), 1/6)``;
* ``Mul(x, Div(Clip(Add(x, 3), 0, 6), 6))`` and ``Mul(x, Mul(Clip(...), 1/6))``.

``Clip`` bounds are read from attributes (opset 6-10) or from inputs (opset 11+).
Constants may be initializers or ``Constant`` nodes (``value``,
``value_float(s)``), scalars or 1-element tensors; values must be 3, 0, 6 and 1/6
within a relative tolerance of 1e-6 (0 exactly). A 1-element constant of rank
``r >= 1`` is accepted only when ``x`` provably has rank ``>= r`` (shapes inferred
from the graph inputs), so broadcasting cannot change the output shape.

Replacement, writing the last node's output tensor (its name and any graph output
stay):

* default opset >= 14: a single ``HardSwish(x)`` node;
* opset 6-13 (or ``prefer_hardswish=False``): ``HardSigmoid(x; alpha=1/6,
  beta=0.5)`` then ``Mul(x, ·)``.

onnxruntime 1.32 fuses either form into the preceding ``Conv`` (NCHWc ``Conv``
with ``activation="HardSwish"``); the four-node form is not fused at all. On
PP-OCRv4 det/rec (opset 12, so the pair) the lossless recipe's fp32 CPU latency
dropped by ~10-12 % (1 thread). Converted to opset 14, both forms fused all 24/28
patterns and ran at the same speed (within +-1.5 %); ``HardSwish`` is preferred
there as one node instead of two (one kernel where no Conv precedes it, and the
native op of other runtimes). The int8 quantizer leaves both forms float.

Rounding: ``x / 6 + 0.5`` is not exact near ``x = -3`` where ``x + 3`` is, so the
fused form is off by up to ~``|x| * 2**-24`` absolute there (mean ~0.9 ulp vs
~0.3 ulp for the decomposed form, measured against float64). On PP-OCRv4 det the
pass alone moves the output probabilities by at most 2.6e-5 (onnxruntime's own
graph optimizations move them by 5.4e-5).

Refused (DEBUG line with the reason): an intermediate tensor (``x + 3``, the
``Clip`` output, the product or the scaled ``Clip``) with another reader (in any
graph, including subgraph captures) or that is a graph output; pattern nodes in
different graphs; element types other than float32 and float16 (onnxruntime's CPU
kernels of HardSigmoid/HardSwish have no double); attributes that reference
function attributes; opset < 6.

The constants may become unused; ``eliminate-dead-code`` and
``remove-unused-initializers`` drop them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Model, NameGenerator, iter_graphs
from ._rewrite import ONNX_DOMAINS, all_graph_outputs, constant_value, optional_input
from .base import Context, Pass, PassResult, register

__all__ = ["FuseHardSwish"]

logger = logging.getLogger(__name__)

_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))
_RTOL = 1e-6


class _Refuse(Exception):
    """A candidate is refused; the message says why."""


def _attr(node: gs.Node, name: str, default: Any = None) -> Any:
    value = node.attrs.get(name, default)
    if isinstance(value, gs.Node.AttributeRef):
        raise _Refuse(f"{node.name}: attribute {name!r} is a function attribute reference")
    return value


def _close(value: float, target: float) -> bool:
    if target == 0.0:
        return value == 0.0
    return abs(value - target) <= _RTOL * abs(target)


@dataclass
class _Match:
    x: gs.Tensor
    nodes: list[gs.Node]  # add, clip, middle, tail
    dtype: np.dtype


@register
@dataclass
class FuseHardSwish(Pass):
    """Rewrite ``x * Clip(x + 3, 0, 6) / 6`` (and its variants) as
    ``Mul(x, HardSigmoid(x, alpha=1/6, beta=0.5))`` or ``HardSwish(x)`` (see the
    module docstring).

    Tensors: ``x`` of any shape, float32 or float16; the output keeps the shape,
    dtype and name of the pattern's last node output.

    Attributes:
        prefer_hardswish: write a single ``HardSwish`` node when the graph's default
            opset is >= 14; False (or opset < 14): ``HardSigmoid`` + ``Mul``.

    Stats:
        patterns_fused: decomposed HardSwish patterns rewritten.
        nodes_removed: net change of the node count (removed minus added).
    """

    name = "fuse-hardswish"
    summary = "rewrite x*Clip(x+3,0,6)/6 as HardSwish (opset >= 14) or Mul(x, HardSigmoid(x)), which onnxruntime fuses into Conv"

    prefer_hardswish: bool = True

    def run(self, model: Model, ctx: Context) -> PassResult:
        self._model = model
        self._outputs = all_graph_outputs(model)
        self._shapes: dict | None = None
        names = NameGenerator(model)
        fused = removed = 0
        try:
            for g in iter_graphs(model.graph):
                opset = g.opset if isinstance(g, gs.Function) and g.opset else model.opset
                if opset < 6:
                    continue
                local = {id(n) for n in g.nodes}
                for clip in list(g.nodes):
                    if clip.op != "Clip" or clip.domain not in ONNX_DOMAINS or not clip.outputs:
                        continue
                    try:
                        match = self._match(clip, local)
                    except _Refuse as why:
                        logger.debug("fuse-hardswish: %s refused: %s", clip.name, why)
                        continue
                    added = self._rewrite(g, match, opset, names)
                    local = {id(n) for n in g.nodes}
                    fused += 1
                    removed += len(match.nodes) - added
        finally:
            del self._model, self._outputs, self._shapes
        if fused:
            logger.info("fuse-hardswish: fused %d HardSwish patterns (%d nodes fewer)", fused, removed)
        return PassResult(modified=fused > 0, stats={"patterns_fused": fused, "nodes_removed": removed})

    # ------------------------------------------------------------- constants
    def _const(self, t: gs.Tensor | None) -> np.ndarray | None:
        """The value of an initializer or ``Constant`` node output, else None."""
        return constant_value(self._model, t)

    def _rank(self, t: gs.Tensor) -> int | None:
        if self._model.is_constant(t):
            return len(t.shape)
        if self._shapes is None:
            self._shapes = self.shapes(self._model)
        tt = self._shapes.get(t.name)
        return len(tt.shape) if tt is not None and tt.shape is not None else None

    def _scalar(self, t: gs.Tensor, target: float, x: gs.Tensor | None, dtype: np.dtype | None, what: str) -> np.dtype:
        """Check that ``t`` is a 1-element constant equal to ``target``; return its dtype."""
        value = self._const(t)
        if value is None:
            raise _Refuse(f"{what} is not a constant")
        if value.size != 1 or value.dtype not in _DTYPES:
            raise _Refuse(f"{what} has shape {value.shape} / dtype {value.dtype}")
        if dtype is not None and value.dtype != dtype:
            raise _Refuse(f"{what} has dtype {value.dtype}, expected {dtype}")
        if not _close(float(value.reshape(-1)[0]), target):
            raise _Refuse(f"{what} is {float(value.reshape(-1)[0])!r}, not {target!r}")
        if value.ndim > 0 and x is not None:
            rank = self._rank(x)
            if rank is None or rank < value.ndim:
                raise _Refuse(f"{what} of rank {value.ndim} may broadcast {x.name} (rank {rank})")
        return value.dtype

    # --------------------------------------------------------------- matching
    def _only_reader(self, t: gs.Tensor, local: set[int]) -> gs.Node:
        """The single reader of ``t`` (a node of the same graph); ``t`` is no graph output."""
        if id(t) in self._outputs:
            raise _Refuse(f"{t.name} is a graph output")
        readers = list(t.outputs)
        if len(readers) != 1:
            raise _Refuse(f"{t.name} has {len(readers)} readers")
        node = readers[0]
        if id(node) not in local:
            raise _Refuse(f"{t.name} is read in another graph")
        if node.domain not in ONNX_DOMAINS or len(node.outputs) != 1:
            raise _Refuse(f"{t.name} is read by {node.op} ({node.domain})")
        return node

    def _scale(self, node: gs.Node, t: gs.Tensor, x: gs.Tensor, dtype: np.dtype) -> bool:
        """True when ``node`` computes ``t / 6`` or ``t * (1/6)``."""
        if len(node.inputs) != 2:
            return False
        if node.op == "Div" and node.inputs[0] is t:
            self._scalar(node.inputs[1], 6.0, x, dtype, f"{node.name} divisor")
            return True
        if node.op == "Mul" and t in node.inputs:
            other = node.inputs[1] if node.inputs[0] is t else node.inputs[0]
            if other is t:
                return False
            self._scalar(other, 1.0 / 6.0, x, dtype, f"{node.name} factor")
            return True
        return False

    @staticmethod
    def _times_x(node: gs.Node, t: gs.Tensor, x: gs.Tensor) -> bool:
        """True when ``node`` is ``Mul(x, t)`` or ``Mul(t, x)``."""
        if node.op != "Mul" or len(node.inputs) != 2:
            return False
        a, b = node.inputs
        return (a is x and b is t) or (a is t and b is x)

    def _bounds(self, clip: gs.Node, dtype: np.dtype) -> None:
        if "min" in clip.attrs or "max" in clip.attrs or len(clip.inputs) == 1:  # opset 6-10
            lo, hi = _attr(clip, "min", None), _attr(clip, "max", None)
            if lo is None or hi is None or not _close(float(lo), 0.0) or not _close(float(hi), 6.0):
                raise _Refuse(f"{clip.name}: bounds ({lo}, {hi}) are not (0, 6)")
            return
        lo_t, hi_t = optional_input(clip, 1), optional_input(clip, 2)
        if lo_t is None or hi_t is None:
            raise _Refuse(f"{clip.name}: a bound is missing")
        self._scalar(lo_t, 0.0, None, dtype, f"{clip.name} min")
        self._scalar(hi_t, 6.0, None, dtype, f"{clip.name} max")

    def _match(self, clip: gs.Node, local: set[int]) -> _Match:
        a = clip.inputs[0] if clip.inputs else None
        add = a.inputs[0] if a is not None and len(a.inputs) == 1 else None
        if add is None or add.op != "Add" or add.domain not in ONNX_DOMAINS or id(add) not in local:
            raise _Refuse("the Clip input is not an Add of this graph")
        if len(add.inputs) != 2:
            raise _Refuse(f"{add.name} has {len(add.inputs)} inputs")
        dtype = None
        for side in (1, 0):
            x = add.inputs[1 - side]
            try:
                dtype = self._scalar(add.inputs[side], 3.0, x, None, f"{add.name} addend")
                break
            except _Refuse:
                continue
        if dtype is None:
            raise _Refuse(f"{add.name} adds no constant 3")
        self._bounds(clip, dtype)
        if self._only_reader(a, local) is not clip:
            raise _Refuse(f"{a.name} is not read by the Clip only")
        k = clip.outputs[0]
        first = self._only_reader(k, local)
        if self._times_x(first, k, x):  # x * Clip(...) then / 6
            tail = self._only_reader(first.outputs[0], local)
            if not self._scale(tail, first.outputs[0], x, dtype):
                raise _Refuse(f"{first.name} is not followed by / 6")
        elif self._scale(first, k, x, dtype):  # Clip(...) / 6 then x *
            tail = self._only_reader(first.outputs[0], local)
            if not self._times_x(tail, first.outputs[0], x):
                raise _Refuse(f"{first.name} is not followed by Mul(x, .)")
        else:
            raise _Refuse(f"{k.name} is read by {first.op}, neither Mul(x, .) nor / 6")
        return _Match(x=x, nodes=[add, clip, first, tail], dtype=dtype)

    # ---------------------------------------------------------------- rewrite
    def _rewrite(self, g: gs.Graph, m: _Match, opset: int, names: NameGenerator) -> int:
        """Replace the matched nodes; return how many nodes were added."""
        tail = m.nodes[-1]
        y = tail.outputs[0]
        base = tail.name or y.name or "hardswish"
        drop = {id(n) for n in m.nodes}
        for n in m.nodes:
            n.inputs.clear()
            n.outputs.clear()
        if self.prefer_hardswish and opset >= 14:
            new = [gs.Node("HardSwish", name=names.new(f"{base}_hardswish"), inputs=[m.x], outputs=[y])]
        else:
            gate = gs.Variable(names.new(f"{m.x.name}_hardsigmoid"), dtype=m.dtype)
            new = [
                gs.Node(
                    "HardSigmoid",
                    name=names.new(f"{base}_hardsigmoid"),
                    attrs={"alpha": 1.0 / 6.0, "beta": 0.5},
                    inputs=[m.x],
                    outputs=[gate],
                ),
                gs.Node("Mul", name=names.new(f"{base}_hardswish"), inputs=[m.x, gate], outputs=[y]),
            ]
        nodes: list[gs.Node] = []
        for n in g.nodes:
            if n is tail:
                nodes.extend(new)
            elif id(n) not in drop:
                nodes.append(n)
        g.nodes = nodes
        logger.debug("fuse-hardswish: %s -> %s", [n.name for n in m.nodes], [n.op for n in new])
        return len(new)
