"""Linear layers (Conv, ConvTranspose, Gemm, MatMul) seen as per-group weight matrices.

The pruning, distillation and low-rank passes all look at a layer the same
way: ``y = x W^T + b`` per group, where each row of ``x`` is one input
*feature vector* (a MatMul/Gemm input row, or a Conv patch in im2col order) and
each row of ``W`` one output channel. :func:`find_layers` recognizes

* ``Conv`` with a constant weight ``[M, C/g, k...]`` (any group, stride,
  dilation, pads / ``auto_pad``), optional constant bias ``[M]``;
* ``ConvTranspose`` with a constant weight ``[C, M/g, k...]`` (any group,
  stride, dilation, ``pads``, ``output_padding``; not ``auto_pad=SAME_*`` nor
  ``output_shape``), optional constant bias ``[M]``: it is the Conv of the
  input with ``stride - 1`` zeros inserted between samples, padded by
  ``dilation * (k - 1) - pads`` (``+ output_padding`` at the end; a negative
  pad crops), with stride 1 and the kernel flipped and transposed, which is how
  :func:`im2col` unfolds it (only the ``distill`` pass asks for this op);
* ``Gemm`` with ``transA=0`` and a constant ``B`` (``transB`` 0 or 1, ``alpha``
  folded into the weight), optional row bias ``C`` (``[N]``, ``[1, N]`` or a
  scalar, times ``beta``);
* ``MatMul`` with a constant 2-D weight as input 1, and the constant row bias of
  an ``Add`` that is the only reader of its output (the layer output is then
  the ``Add`` output);

where "constant" also means ``DequantizeLinear`` of a constant int8 weight (an
int32 bias) as the ``quantize-int8`` pass writes them; such a layer is
*quantized* and carries its integer weight, scales, zero points and axis.

Feature order inside a group: input channel major, then kernel position
(the row-major flattening of ``W[m]``), so ``W_rows[g, m, :] ==
W[g * Mg + m].reshape(-1)`` for a Conv; for a ConvTranspose ``W_rows[g, m, :]
== flip(W[g * C/g : (g + 1) * C/g, m]).reshape(-1)`` (spatial axes flipped).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Model, constant_array

__all__ = ["ALL_LINEAR_OPS", "LINEAR_OPS", "Layer", "QuantInfo", "dq_value", "find_layers", "im2col", "limited", "output_rows"]

logger = logging.getLogger(__name__)

_ONNX = (None, "", "ai.onnx")
LINEAR_OPS = ("Conv", "Gemm", "MatMul")
"""The default op types of :func:`find_layers` (what prune-weights prunes)."""
ALL_LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Every op type :func:`find_layers` understands (what distill refits)."""
_CONV_OPS = ("Conv", "ConvTranspose")


@dataclass
class QuantInfo:
    """The ``DequantizeLinear`` that produces a quantized weight or bias.

    Attributes:
        node: the DequantizeLinear node.
        q: the integer values (int8 weight / int32 bias), node layout.
        scale, zero_point: as stored (scalar or per ``axis``).
        axis: the DQ ``axis`` attribute resolved for ``q`` (None: per tensor).
    """

    node: gs.Node
    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None


@dataclass
class Layer:
    """A Conv/ConvTranspose/Gemm/MatMul with a constant (or dequantized constant) weight.

    Attributes:
        graph, node, op: where it is.
        x: the activation input tensor.
        out: the layer output (the bias ``Add`` output for MatMul + Add).
        w: float64 weight in node layout (Gemm ``alpha`` folded in); for a
            quantized layer the dequantized weight.
        b: float64 bias ``[M]`` (``beta`` folded in), or None when the layer
            has no bias input.
        groups: number of groups (1 but for grouped Conv/ConvTranspose).
        add: the bias ``Add`` node of a MatMul layer, and which input is the bias.
        wq, bq: the DequantizeLinear producing the weight / bias, if quantized.
    """

    graph: gs.Graph
    node: gs.Node
    op: str
    x: gs.Tensor
    out: gs.Tensor
    w: np.ndarray
    b: np.ndarray | None
    groups: int = 1
    add: tuple[gs.Node, int] | None = None
    wq: QuantInfo | None = None
    bq: QuantInfo | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def quantized(self) -> bool:
        return self.wq is not None

    @property
    def out_channels(self) -> int:
        if self.op == "Conv":
            return int(self.w.shape[0])
        if self.op == "ConvTranspose":
            return int(self.w.shape[1]) * self.groups
        if self.op == "Gemm":
            return int(self.w.shape[0] if self.attrs.get("transB", 0) else self.w.shape[1])
        return int(self.w.shape[1])

    @property
    def in_features(self) -> int:
        """Features per group (``D``): ``C/g * prod(k)`` for Conv and
        ConvTranspose, ``K`` else."""
        if self.op == "Conv":
            return int(math.prod(self.w.shape[1:]))
        if self.op == "ConvTranspose":
            return int(self.w.shape[0] // self.groups * math.prod(self.w.shape[2:]))
        if self.op == "Gemm":
            return int(self.w.shape[1] if self.attrs.get("transB", 0) else self.w.shape[0])
        return int(self.w.shape[0])

    @property
    def channel_axis(self) -> int:
        """Channel axis of ``x`` and ``out``: 1 for Conv/ConvTranspose (NC...), -1 otherwise."""
        return 1 if self.op in _CONV_OPS else -1

    # ------------------------------------------------------------ layouts
    def rows(self, w: np.ndarray | None = None) -> np.ndarray:
        """The weight as ``[groups, M/groups, D]``."""
        w = self.w if w is None else w
        if self.op == "Conv":
            m = w.shape[0]
            return w.reshape(self.groups, m // self.groups, -1)
        if self.op == "ConvTranspose":
            nd = w.ndim - 2
            c, mg = w.shape[:2]
            wg = w.reshape((self.groups, c // self.groups) + w.shape[1:])  # [g, C/g, Mg, k...]
            wg = np.flip(np.swapaxes(wg, 1, 2), axis=tuple(range(3, 3 + nd)))  # [g, Mg, C/g, k...] flipped
            return np.ascontiguousarray(wg).reshape(self.groups, mg, -1)
        if self.op == "Gemm" and self.attrs.get("transB", 0):
            return w[None]
        return w.T[None]

    def from_rows(self, rows: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`rows`: node layout of ``rows`` ``[groups, Mg, D]``."""
        if self.op == "Conv":
            return rows.reshape(self.w.shape)
        if self.op == "ConvTranspose":
            shape = self.w.shape
            nd = len(shape) - 2
            g = self.groups
            wg = rows.reshape((g, shape[1], shape[0] // g) + tuple(shape[2:]))  # [g, Mg, C/g, k...] flipped
            wg = np.swapaxes(np.flip(wg, axis=tuple(range(3, 3 + nd))), 1, 2)  # [g, C/g, Mg, k...]
            return np.ascontiguousarray(wg).reshape(shape)
        if self.op == "Gemm" and self.attrs.get("transB", 0):
            return rows[0]
        return rows[0].T

    def feature_channels(self) -> np.ndarray:
        """int ``[groups, D]``: the input channel of ``x`` that each feature reads."""
        if self.op not in _CONV_OPS:
            return np.arange(self.in_features)[None]
        cg = self.w.shape[1] if self.op == "Conv" else self.w.shape[0] // self.groups
        k = int(math.prod(self.w.shape[2:]))
        per = np.repeat(np.arange(cg), k)
        return np.stack([g * cg + per for g in range(self.groups)])


def dq_value(info: QuantInfo) -> np.ndarray:
    """Dequantized float64 value of ``info``."""
    q = info.q.astype(np.float64)
    s = np.asarray(info.scale, np.float64)
    z = np.asarray(info.zero_point, np.float64)
    if info.axis is not None and s.ndim == 1:
        shape = [1] * q.ndim
        shape[info.axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return (q - z) * s


def _dq_info(model: Model, t: gs.Tensor, int_kind: str) -> QuantInfo | None:
    """The QuantInfo of ``t`` when it is DequantizeLinear(constant int, constant scale[, zp])."""
    if isinstance(t, gs.Constant) or len(t.inputs) != 1:
        return None
    dq = t.inputs[0]
    if dq.op != "DequantizeLinear" or len(dq.inputs) < 2:
        return None
    if dq.attrs.get("block_size", 0):
        return None
    q_t, s_t = dq.inputs[0], dq.inputs[1]
    z_t = dq.inputs[2] if len(dq.inputs) > 2 and dq.inputs[2].name else None
    if not (model.is_constant(q_t) and model.is_constant(s_t)) or (z_t is not None and not model.is_constant(z_t)):
        return None
    q = constant_array(q_t)
    if q.dtype.kind not in "iu" or (int_kind == "w" and q.dtype.itemsize != 1) or (int_kind == "b" and q.dtype != np.int32):
        return None
    s = constant_array(s_t)
    z = constant_array(z_t) if z_t is not None else np.zeros(s.shape, q.dtype)
    axis = None
    if s.ndim == 1 and s.size > 1:
        axis = int(dq.attrs.get("axis", 1))
        if axis < 0:
            axis += q.ndim
    return QuantInfo(dq, q, s, z, axis)


def constant_node_value(model: Model, t: gs.Tensor) -> np.ndarray | None:
    """The value of ``t`` when it is a Constant tensor or the output of a ``Constant`` node."""
    if model.is_constant(t):
        return constant_array(t)
    if len(t.inputs) == 1 and t.inputs[0].op == "Constant" and t.inputs[0].domain in _ONNX:
        v = t.inputs[0].attrs.get("value")
        if isinstance(v, gs.Constant):
            return constant_array(v)
    return None


def _weight(model: Model, t: gs.Tensor, kind: str) -> tuple[np.ndarray, QuantInfo | None] | None:
    a = constant_node_value(model, t)
    if a is not None:
        return (a.astype(np.float64), None) if a.dtype.kind == "f" else None
    info = _dq_info(model, t, kind)
    return None if info is None else (dq_value(info), info)


def _row_bias(c: np.ndarray, n: int) -> np.ndarray | None:
    if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.size not in (1, n):
        return None
    return np.broadcast_to(c.reshape(-1), (n,)).astype(np.float64)


def find_layers(
    model: Model,
    op_types: tuple[str, ...] | list[str] = LINEAR_OPS,
    *,
    quantized: bool = True,
) -> tuple[list[Layer], dict[str, str]]:
    """Every recognized linear layer of the main graph, in graph order.

    Args:
        model: the model.
        op_types: which of Conv/ConvTranspose/Gemm/MatMul to consider
            (default: not ConvTranspose).
        quantized: also return layers whose weight is a DequantizeLinear.

    Returns:
        ``(layers, refused)``: the layers, and for each other node of those op
        types the reason it is not a layer (by node name).
    """
    g = model.graph
    outputs = {id(t) for t in g.outputs}
    layers: list[Layer] = []
    refused: dict[str, str] = {}
    for node in g.nodes:
        if node.op not in op_types or node.domain not in _ONNX or len(node.inputs) < 2 or not node.outputs:
            continue
        why = None
        try:
            layer = _layer(model, g, node, outputs, quantized)
        except _Skip as exc:
            layer, why = None, str(exc)
        if layer is None:
            refused[node.name] = why or "not recognized"
        else:
            layers.append(layer)
    return layers, refused


class _Skip(Exception):
    pass


def _layer(model: Model, g: gs.Graph, node: gs.Node, outputs: set[int], quantized: bool) -> Layer:
    op = node.op
    x = node.inputs[0]
    if constant_node_value(model, x) is not None:
        raise _Skip("the activation input is a constant")
    got = _weight(model, node.inputs[1], "w")
    if got is None:
        raise _Skip("the weight is not a float constant or a dequantized int8 constant")
    w, wq = got
    if wq is not None and not quantized:
        raise _Skip("quantized weight")
    attrs: dict[str, Any] = {}
    b = bq = None
    add = None
    out = node.outputs[0]
    groups = 1
    bias_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if op in _CONV_OPS:
        if w.ndim < 3:
            raise _Skip(f"{op} weight rank < 3")
        groups = int(node.attrs.get("group", 1))
        if groups < 1 or w.shape[0] % groups:  # Conv: output channels, ConvTranspose: input channels
            raise _Skip(f"{'output' if op == 'Conv' else 'input'} channels not divisible by group")
        auto = node.attrs.get("auto_pad", "NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else (auto or "NOTSET")
        if op == "ConvTranspose":
            if auto not in ("NOTSET", "VALID"):
                raise _Skip(f"auto_pad={auto}")
            if "output_shape" in node.attrs:
                raise _Skip("output_shape given")
        keys = ("strides", "dilations", "pads", "kernel_shape") + (("output_padding",) if op == "ConvTranspose" else ())
        attrs.update({k: node.attrs[k] for k in keys if k in node.attrs})
        attrs["auto_pad"] = auto
        m = w.shape[0] if op == "Conv" else w.shape[1] * groups
        if bias_t is not None:
            got_b = _weight(model, bias_t, "b")
            if got_b is None or got_b[0].shape != (m,):
                raise _Skip("the bias is not a constant [M]")
            b, bq = got_b
    elif op == "Gemm":
        if int(node.attrs.get("transA", 0)):
            raise _Skip("transA=1")
        if w.ndim != 2:
            raise _Skip("B is not 2-D")
        attrs["transB"] = int(node.attrs.get("transB", 0))
        alpha = float(node.attrs.get("alpha", 1.0))
        beta = float(node.attrs.get("beta", 1.0))
        w = w * alpha
        attrs["alpha"], attrs["beta"] = alpha, beta
        if wq is not None and alpha != 1.0:
            raise _Skip("quantized weight with alpha != 1")
        n = w.shape[0] if attrs["transB"] else w.shape[1]
        if bias_t is not None:
            got_b = _weight(model, bias_t, "b")
            if got_b is None:
                raise _Skip("C is not a constant")
            c, bq = got_b
            b = _row_bias(c, n)
            if b is None:
                raise _Skip(f"C of shape {c.shape} is not a row bias")
            if bq is not None and (beta != 1.0 or c.shape != (n,)):
                raise _Skip("quantized C with beta != 1 or shape != [N]")
            b = b * beta
    else:  # MatMul
        if w.ndim != 2:
            raise _Skip("the weight is not 2-D")
        n = w.shape[1]
        readers = out.outputs
        if len(readers) == 1 and id(out) not in outputs:
            a = readers[0]
            if a.op == "Add" and a.domain in _ONNX and len(a.inputs) == 2 and a.outputs:
                side = 1 if a.inputs[0] is out else 0
                other = a.inputs[side]
                c = constant_node_value(model, other) if other is not out else None
                if c is not None:
                    rb = _row_bias(c, n) if c.dtype.kind == "f" else None
                    if rb is not None:
                        b, add, out = rb, (a, side), a.outputs[0]
    return Layer(g, node, op, x, out, w, b, groups, add, wq, bq, attrs)


# ------------------------------------------------------------------ features
def _conv_pads(layer: Layer, spatial: tuple[int, ...], kernel: tuple[int, ...], strides, dilations) -> list[tuple[int, int]]:
    nd = len(spatial)
    auto = layer.attrs.get("auto_pad", "NOTSET") or "NOTSET"
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = []
        for i in range(nd):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - spatial[i])
            small = total // 2
            pads.append((small, total - small) if auto == "SAME_UPPER" else (total - small, small))
        return pads
    if auto == "VALID":
        return [(0, 0)] * nd
    p = list(layer.attrs.get("pads", [0] * (2 * nd)))
    return [(int(p[i]), int(p[i + nd])) for i in range(nd)]


def _windows(xp: np.ndarray, kernel: tuple[int, ...], strides, dil, groups: int) -> np.ndarray:
    """Patches ``[rows, groups, C/g * prod(k)]`` of an already padded ``xp [N, C, ...]``."""
    nd = len(kernel)
    if all(k == 1 for k in kernel):
        sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)
        win = xp[sl].reshape(xp[sl].shape + (1,) * nd)
    else:
        span = tuple((k - 1) * d + 1 for k, d in zip(kernel, dil))
        win = np.lib.stride_tricks.sliding_window_view(xp, span, axis=tuple(range(2, 2 + nd)))
        sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(
            slice(None, None, d) for d in dil
        )
        win = win[sl]
    # win: [N, C, out..., k...] -> [N, out..., C, k...]
    c = win.shape[1]
    perm = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
    cols = np.transpose(win, perm).astype(np.float64)
    return cols.reshape(-1, groups, (c // groups) * math.prod(kernel))


def _transposed_input(layer: Layer, x: np.ndarray, kernel: tuple[int, ...], strides, dil) -> np.ndarray:
    """The input of the stride-1 Conv equal to ``layer`` (a ConvTranspose): ``x``
    with ``stride - 1`` zeros between samples, padded by ``d (k - 1) - pad_begin``
    and ``d (k - 1) - pad_end + output_padding`` (cropped where negative)."""
    nd = len(kernel)
    p = [int(v) for v in layer.attrs.get("pads", [0] * (2 * nd))]
    if layer.attrs.get("auto_pad", "NOTSET") == "VALID":
        p = [0] * (2 * nd)
    op = [int(v) for v in layer.attrs.get("output_padding", [0] * nd)]
    size = tuple((n - 1) * s + 1 for n, s in zip(x.shape[2:], strides))
    xu = np.zeros(x.shape[:2] + size, dtype=np.float64)
    xu[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides)] = x
    before = [d * (k - 1) - p[i] for i, (k, d) in enumerate(zip(kernel, dil))]
    after = [d * (k - 1) - p[i + nd] + op[i] for i, (k, d) in enumerate(zip(kernel, dil))]
    xu = np.pad(xu, [(0, 0), (0, 0)] + [(max(a, 0), max(b, 0)) for a, b in zip(before, after)])
    crop = tuple(slice(max(-a, 0), xu.shape[2 + i] - max(-b, 0)) for i, (a, b) in enumerate(zip(before, after)))
    return xu[(slice(None), slice(None)) + crop]


def im2col(layer: Layer, x: np.ndarray) -> np.ndarray:
    """Input feature rows of one sample: ``[rows, groups, D]`` (float64).

    Rows are in the order of :func:`output_rows` of the layer's output: batch,
    then output positions (Conv, ConvTranspose) or leading dims (MatMul/Gemm).
    A ConvTranspose is unfolded as its equivalent stride-1 Conv (see the module
    docstring); its features match :meth:`Layer.rows`.
    """
    x = np.asarray(x)
    if layer.op not in _CONV_OPS:
        return x.reshape(-1, 1, x.shape[-1]).astype(np.float64, copy=False)
    w = layer.w
    nd = w.ndim - 2
    kernel = tuple(int(k) for k in w.shape[2:])
    strides = tuple(int(s) for s in layer.attrs.get("strides", [1] * nd))
    dil = tuple(int(d) for d in layer.attrs.get("dilations", [1] * nd))
    if layer.op == "ConvTranspose":
        return _windows(_transposed_input(layer, x, kernel, strides, dil), kernel, (1,) * nd, dil, layer.groups)
    pads = _conv_pads(layer, tuple(x.shape[2:]), kernel, strides, dil)
    xp = np.pad(x, [(0, 0), (0, 0)] + pads)
    return _windows(xp, kernel, strides, dil, layer.groups)


def output_rows(layer: Layer, y: np.ndarray) -> np.ndarray:
    """A layer output (student or teacher) as ``[rows, M]`` float64."""
    y = np.asarray(y, dtype=np.float64)
    if layer.op in _CONV_OPS:
        return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


class limited:  # noqa: N801 - used like a function
    """Re-iterable view of the first ``n`` items of ``data`` (all when ``n`` is 0/None)."""

    def __init__(self, data: Any, n: int | None) -> None:
        self.data, self.n = data, n

    def __iter__(self):
        import itertools

        it = iter(self.data)
        return itertools.islice(it, self.n) if self.n else it
