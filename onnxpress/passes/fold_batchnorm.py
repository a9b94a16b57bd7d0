"""Fold inference BatchNormalization, and constant per-channel Mul/Add, into the
weights of the layer before.

A ``BatchNormalization`` in inference mode is a per-channel affine map on axis 1,
``y = x * s + h`` with ``s = gamma / sqrt(var + epsilon)`` and
``h = beta - mean * s``. When ``x`` comes from a linear layer, the map folds into
its weights (``W' = W * s`` over the output channels) and bias
(``b' = b * s + h``):

* ``Conv`` (any ``group``; output channel ``m`` is weight row ``m``);
* ``ConvTranspose`` (weight ``[Cin, Cout/group, k...]``: output channel
  ``g * Cout/group + j`` is ``W[g*Cin/group:(g+1)*Cin/group, j]``);
* ``Gemm`` (``transB`` 0 or 1, ``alpha`` kept, ``beta`` folded into the new ``C``,
  ``C`` absent or broadcastable as ``[N]``/``[1, N]``);
* ``MatMul`` with a constant 2-D weight, followed by an ``Add`` of a constant bias
  (``[N]``, ``[1, N]`` or scalar) or by nothing (a bias ``Add`` is created), when the
  ``MatMul`` output has rank 2 (BatchNormalization normalizes axis 1, which is the
  feature axis only for rank-2 outputs).

A constant ``Mul`` (scale) or ``Add`` (shift) right after a ``Conv`` or
``ConvTranspose`` folds the same way when the constant is a scalar or per output
channel (``[C, 1, ...]``, ``[1, C, 1, ...]``) and its dtype equals the weight's.

Refused, with a DEBUG line naming the reason: BN in training mode or with a used
running-mean/var output, ``spatial=0``; non-constant (or overridable) weights,
bias or BN parameters; a layer output read by another node or being a graph
output; a layer in another graph than the BN; non-finite or non-positive
``var + epsilon``; non-float weights. Arithmetic is done in float64 and cast back
to the weight dtype; every new weight is a new Constant with a fresh name, so a
weight shared with other nodes is never changed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Model, constant_array, iter_graphs
from ._rewrite import ONNX_DOMAINS, all_graph_outputs, optional_input
from .base import Context, Pass, PassResult, register

__all__ = ["FoldBatchNorm"]

logger = logging.getLogger(__name__)


class _Refuse(Exception):
    """A match is refused; the message says why."""


def _attr(node: gs.Node, name: str, default: Any = None) -> Any:
    value = node.attrs.get(name, default)
    if isinstance(value, gs.Node.AttributeRef):
        raise _Refuse(f"attribute {name!r} is a function attribute reference")
    return value



@register
@dataclass
class FoldBatchNorm(Pass):
    """Fold BatchNormalization and per-channel constant Mul/Add into Conv,
    ConvTranspose, Gemm and MatMul weights (see the module docstring).

    Options:
        fold_mul_add: also fold a constant per-channel Mul/Add following a Conv or
            ConvTranspose.
    """

    name = "fold-batchnorm"
    summary = "fold BatchNormalization (and per-channel Mul/Add) into Conv, ConvTranspose, Gemm, MatMul"

    fold_mul_add: bool = True

    def run(self, model: Model, ctx: Context) -> PassResult:
        self._model = model
        self._names = None
        self._shapes = None
        self._outputs = all_graph_outputs(model)
        counts: dict[str, int] = {}
        try:
            for g in iter_graphs(model.graph):
                self._graph = g
                self._local = {id(n) for n in g.nodes}
                self._dead: set[int] = set()
                for node in list(g.nodes):
                    if not node.outputs or node.domain not in ONNX_DOMAINS:
                        continue
                    if node.op == "BatchNormalization":
                        matcher = self._match_bn
                    elif node.op in ("Mul", "Add") and self.fold_mul_add:
                        matcher = self._match_mul_add
                    else:
                        continue
                    try:
                        kind = matcher(g, node)
                    except _Refuse as why:
                        logger.debug("fold-batchnorm: not folding %s (%s): %s", node.name, node.op, why)
                        continue
                    counts[kind] = counts.get(kind, 0) + 1
                    logger.debug("fold-batchnorm: folded %s (%s) as %s", node.name, node.op, kind)
                self._purge()
        finally:
            del self._model, self._names, self._shapes, self._outputs
        folded = sum(counts.values())
        stats: dict[str, int | float] = {"nodes_folded": folded, **dict(sorted(counts.items()))}
        if folded:
            logger.info("fold-batchnorm: folded %d nodes %s", folded, dict(sorted(counts.items())))
        return PassResult(modified=folded > 0, stats=stats)

    # ------------------------------------------------------------- helpers
    def _const(self, t: gs.Tensor | None, what: str) -> np.ndarray:
        if t is None or not self._model.is_constant(t):
            raise _Refuse(f"{what} is not a constant")
        return constant_array(t)

    def _new_const(self, base: str, value: np.ndarray) -> gs.Constant:
        if self._names is None:
            self._names = self.names(self._model)
        return gs.Constant(self._names.new(base), np.ascontiguousarray(value))

    def _sole_producer(self, g: gs.Graph, t: gs.Tensor, reader: gs.Node) -> gs.Node:
        """The node of ``g`` writing ``t``, when ``reader`` is the only reader of ``t``."""
        if not t.inputs:
            raise _Refuse(f"{t.name!r} has no producer")
        prod = t.inputs[0]
        if id(prod) not in self._local:
            raise _Refuse(f"producer of {t.name!r} is in another graph")
        if len(t.outputs) != 1 or t.outputs[0] is not reader:
            raise _Refuse(f"{t.name!r} has other readers")
        if id(t) in self._outputs:
            raise _Refuse(f"{t.name!r} is a graph output")
        if prod.domain not in ONNX_DOMAINS:
            raise _Refuse(f"producer of {t.name!r} is a custom op")
        return prod

    def _purge(self) -> None:
        """Drop the nodes unlinked so far from the current graph."""
        if self._dead:
            self._graph.nodes = [n for n in self._graph.nodes if id(n) not in self._dead]
            self._dead = set()

    def _rank(self, t: gs.Tensor) -> int | None:
        if self._shapes is None:
            self._purge()  # shape inference needs a valid graph, without unlinked nodes
            self._shapes = self.shapes(self._model)
        tt = self._shapes.get(t.name)
        return None if tt is None or tt.shape is None else len(tt.shape)

    def _unlink(self, g: gs.Graph, follower: gs.Node, prod: gs.Node) -> None:
        """Make ``prod`` write ``follower``'s output 0 and drop ``follower`` (from
        ``g.nodes`` at the end of the graph's loop)."""
        out = follower.outputs[0]
        follower.inputs.clear()
        follower.outputs.clear()
        self._dead.add(id(follower))
        prod.outputs[0] = out

    # ------------------------------------------------------------ matchers
    def _match_bn(self, g: gs.Graph, bn: gs.Node) -> str:
        for extra in bn.outputs[1:]:
            if extra.name and (extra.outputs or id(extra) in self._outputs):
                raise _Refuse("running mean/var outputs are used")
        if _attr(bn, "training_mode", 0):
            raise _Refuse("training_mode=1")
        if not _attr(bn, "spatial", 1):
            raise _Refuse("spatial=0")
        if self._model.opset < 7 and not _attr(bn, "is_test", 0):
            raise _Refuse("is_test=0")
        if len(bn.inputs) < 5:
            raise _Refuse("missing parameters")
        gamma, beta, mean, var = (
            self._const(bn.inputs[i], name).astype(np.float64)
            for i, name in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))
        )
        eps = float(_attr(bn, "epsilon", 1e-5))
        if not (gamma.ndim == beta.ndim == mean.ndim == var.ndim == 1):
            raise _Refuse("parameters are not 1-D")
        if not (gamma.shape == beta.shape == mean.shape == var.shape):
            raise _Refuse("parameter shapes differ")
        denom = var + eps
        if not np.all(np.isfinite(denom)) or np.any(denom <= 0):
            raise _Refuse("var + epsilon is not positive and finite")
        scale = gamma / np.sqrt(denom)
        shift = beta - mean * scale
        if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
            raise _Refuse("non-finite scale or shift")
        prod = self._sole_producer(g, bn.inputs[0], bn)
        if prod.op in ("Conv", "ConvTranspose"):
            self._fold_conv(prod, scale, shift)
            kind = "bn_conv" if prod.op == "Conv" else "bn_conv_transpose"
        elif prod.op == "Gemm":
            self._fold_gemm(prod, scale, shift)
            kind = "bn_gemm"
        elif prod.op == "Add":
            kind = self._fold_matmul_add(g, prod, scale, shift)
        elif prod.op == "MatMul":
            self._fold_matmul(g, prod, bn, scale, shift)
            return "bn_matmul"  # the new Add node already writes the BN output
        else:
            raise _Refuse(f"producer is {prod.op}")
        self._unlink(g, bn, prod)
        return kind

    def _match_mul_add(self, g: gs.Graph, node: gs.Node) -> str:
        if len(node.inputs) != 2:
            raise _Refuse("not binary")
        side = next((i for i in (1, 0) if self._model.is_constant(node.inputs[i])), None)
        if side is None:
            raise _Refuse("no constant operand")
        value = constant_array(node.inputs[side])
        x = node.inputs[1 - side]
        if self._model.is_constant(x):
            raise _Refuse("both operands constant")
        if not x.inputs or x.inputs[0].op not in ("Conv", "ConvTranspose"):
            raise _Refuse("not after a Conv")
        prod = self._sole_producer(g, x, node)
        w = self._const(prod.inputs[1], "weight")
        if value.dtype != w.dtype:
            raise _Refuse("constant dtype differs from the weight dtype")
        channels = self._out_channels(prod, w)
        per_channel = self._per_channel(value, w.ndim, channels)
        if not np.all(np.isfinite(per_channel)):
            raise _Refuse("non-finite constant")
        if node.op == "Mul":
            self._fold_conv(prod, per_channel, None)
            kind = "mul_conv" if prod.op == "Conv" else "mul_conv_transpose"
        else:
            self._fold_conv(prod, np.ones(channels), per_channel)
            kind = "add_conv" if prod.op == "Conv" else "add_conv_transpose"
        self._unlink(g, node, prod)
        return kind

    @staticmethod
    def _per_channel(value: np.ndarray, rank: int, channels: int) -> np.ndarray:
        """``value`` as a float64 vector of ``channels``, when it broadcasts on axis 1 only."""
        if value.ndim > rank:
            raise _Refuse("constant rank exceeds the output rank")
        shape = (1,) * (rank - value.ndim) + tuple(value.shape)
        if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
            raise _Refuse(f"constant of shape {tuple(value.shape)} is not per output channel")
        return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,)).copy()

    # ------------------------------------------------------------ folders
    @staticmethod
    def _out_channels(node: gs.Node, w: np.ndarray) -> int:
        if w.ndim < 2:
            raise _Refuse("weight rank < 2")
        if node.op == "Conv":
            return int(w.shape[0])
        return int(w.shape[1]) * int(_attr(node, "group", 1))

    def _fold_conv(self, node: gs.Node, scale: np.ndarray, shift: np.ndarray | None) -> None:
        w_t = node.inputs[1] if len(node.inputs) > 1 else None
        w = self._const(w_t, "weight")
        if w.dtype.kind != "f":
            raise _Refuse("weight is not floating point")
        b_t = optional_input(node, 2)
        b = self._const(b_t, "bias") if b_t is not None else None
        group = int(_attr(node, "group", 1))
        channels = self._out_channels(node, w)
        if scale.shape != (channels,):
            raise _Refuse(f"{scale.shape[0]} channels, layer has {channels}")
        if b is not None and b.shape != (channels,):
            raise _Refuse("bias is not [C]")
        w64 = w.astype(np.float64)
        k = (1,) * (w.ndim - 2)
        if node.op == "Conv":
            new_w = w64 * scale.reshape((channels, 1) + k)
        else:
            cin = w.shape[0]
            if group < 1 or cin % group:
                raise _Refuse("input channels not divisible by group")
            per = channels // group
            grouped = w64.reshape((group, cin // group, per) + w.shape[2:])
            new_w = (grouped * scale.reshape((group, 1, per) + k)).reshape(w.shape)
        node.inputs[1] = self._new_const(f"{w_t.name}_folded", new_w.astype(w.dtype))
        if shift is None and b is None:
            return
        bias = np.zeros(channels) if b is None else b.astype(np.float64)
        bias = bias * scale + (0.0 if shift is None else shift)
        base = b_t.name if b_t is not None else f"{w_t.name}_bias"
        new_b = self._new_const(f"{base}_folded", bias.astype(w.dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = new_b
        else:
            node.inputs.append(new_b)

    def _fold_gemm(self, node: gs.Node, scale: np.ndarray, shift: np.ndarray) -> None:
        b_t = node.inputs[1]
        w = self._const(b_t, "B")
        if w.dtype.kind != "f" or w.ndim != 2:
            raise _Refuse("B is not a floating 2-D weight")
        trans_b = int(_attr(node, "transB", 0))
        n = w.shape[0] if trans_b else w.shape[1]
        if scale.shape != (n,):
            raise _Refuse(f"{scale.shape[0]} channels, Gemm has {n}")
        c_t = optional_input(node, 2)
        beta = float(_attr(node, "beta", 1.0))
        if c_t is not None:
            c = self._const(c_t, "C").astype(np.float64)
            if c.ndim > 2 or np.broadcast_shapes(c.shape, (1, n)) != (1, n):
                raise _Refuse(f"C of shape {c.shape} is not a row bias")
            c = np.broadcast_to(c.reshape(c.shape[-1:] if c.ndim else ()), (n,)) * beta
        else:
            c = np.zeros(n)
        w64 = w.astype(np.float64)
        new_w = w64 * (scale[:, None] if trans_b else scale[None, :])
        node.inputs[1] = self._new_const(f"{b_t.name}_folded", new_w.astype(w.dtype))
        base = c_t.name if c_t is not None else f"{b_t.name}_bias"
        new_c = self._new_const(f"{base}_folded", (c * scale + shift).astype(w.dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = new_c
        else:
            node.inputs.append(new_c)
        node.attrs["beta"] = 1.0

    def _matmul_weight(self, mm: gs.Node, n: int) -> np.ndarray:
        if mm.op != "MatMul" or mm.domain not in ONNX_DOMAINS:
            raise _Refuse("not a MatMul")
        w = self._const(mm.inputs[1], "MatMul weight")
        if w.dtype.kind != "f" or w.ndim != 2:
            raise _Refuse("MatMul weight is not a floating 2-D constant")
        if w.shape[1] != n:
            raise _Refuse(f"{n} channels, MatMul has {w.shape[1]}")
        if self._rank(mm.outputs[0]) != 2:
            raise _Refuse("MatMul output rank is not known to be 2")
        return w

    def _fold_matmul_add(self, g: gs.Graph, add: gs.Node, scale: np.ndarray, shift: np.ndarray) -> str:
        if len(add.inputs) != 2:
            raise _Refuse("Add is not binary")
        side = next((i for i in (1, 0) if self._model.is_constant(add.inputs[i])), None)
        if side is None:
            raise _Refuse("Add has no constant bias")
        x = add.inputs[1 - side]
        if not x.inputs:
            raise _Refuse("Add does not follow a MatMul")
        mm = x.inputs[0]
        n = scale.shape[0]
        w = self._matmul_weight(mm, n)
        self._sole_producer(g, x, add)
        bias = constant_array(add.inputs[side])
        if bias.dtype != w.dtype:
            raise _Refuse("bias dtype differs from the weight dtype")
        if bias.ndim > 2 or np.broadcast_shapes(bias.shape, (1, n)) != (1, n):
            raise _Refuse(f"bias of shape {bias.shape} is not a row bias")
        bias64 = np.broadcast_to(bias.astype(np.float64).reshape(bias.shape[-1:] if bias.ndim else ()), (n,))
        new_w = (w.astype(np.float64) * scale[None, :]).astype(w.dtype)
        new_b = (bias64 * scale + shift).astype(w.dtype)
        w_t, b_t = mm.inputs[1], add.inputs[side]
        mm.inputs[1] = self._new_const(f"{w_t.name}_folded", new_w)
        add.inputs[side] = self._new_const(f"{b_t.name}_folded", new_b)
        return "bn_matmul_add"

    def _fold_matmul(self, g: gs.Graph, mm: gs.Node, bn: gs.Node, scale: np.ndarray, shift: np.ndarray) -> None:
        w = self._matmul_weight(mm, scale.shape[0])
        w_t = mm.inputs[1]
        new_w = (w.astype(np.float64) * scale[None, :]).astype(w.dtype)
        mm.inputs[1] = self._new_const(f"{w_t.name}_folded", new_w)
        bias = self._new_const(f"{w_t.name}_bias_folded", shift.astype(w.dtype))
        # The BN node becomes the bias Add: same output tensor, same position in the graph.
        x = bn.inputs[0]
        bn.inputs.clear()
        bn.op = "Add"
        bn.attrs.clear()
        bn.domain = None
        bn.inputs.extend([x, bias])
        while len(bn.outputs) > 1:  # unused running mean/var
            bn.outputs.pop()
