"""Channel dependency groups of an ONNX graph, and the rewrite that removes channels.

This is DepGraph (Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR
2023) on ONNX graphs instead of PyTorch modules. Every *channel* (an output
channel of a Conv, ConvTranspose, Gemm or MatMul with a constant weight, or a
neuron of an MLP) gets an id. The ids are propagated forward through the main
graph, in node order: each tensor reached gets an annotation (:class:`Ann`),
the axis that carries channels and, for every position along that axis, the id
of the channel stored there. Ops that tie channels together join their ids in
a union-find:

* elementwise ops with several channel-carrying inputs (residual ``Add``, ``Sub``,
  ``Mul``, ``Div``, ``Max``, ``Where``...): position ``i`` of every input is one
  channel, so the same channels are removed in every branch;
* ``Concat`` on the channel axis lays the ids of its inputs end to end, ``Split``
  and full-range ``Slice`` cut them by offset;
* a depthwise ``Conv`` (``group == Cin``, any channel multiplier ``m``) ties its
  output channel ``o`` to its input channel ``o // m``; a grouped ``Conv``
  (``1 < group < Cin``) ties input channel ``s`` of every group together and
  output channel ``r`` of every group together, so every group stays the same
  size;
* ``Reshape``/``Flatten`` that merge the channel axis with others (``[N, C, H, W]
  -> [N, C*H*W]`` before a ``Gemm``: one channel becomes a block of ``H*W``
  features; magika's ``[N, 2048, 64] -> [N, 512, 256]``: one channel becomes
  every 64th feature) map each output position to its channel; a ``Reshape``
  that splits the channel axis over several axes (attention heads) is refused;
* ``Transpose``, ``Squeeze``, ``Unsqueeze``, ``Expand``, ``Pad``, pooling,
  ``Resize``, reductions over other axes, unary activations (``Relu``,
  ``Sigmoid``, ``HardSigmoid``, ``HardSwish``, ``Clip``, ``LeakyRelu``...),
  ``BatchNormalization``, ``InstanceNormalization`` and ``LayerNormalization``
  carry the channels along, the axis tracked through permutations. (So what
  ``fuse-hardswish`` writes, ``HardSwish(x)`` or ``Mul(x, HardSigmoid(x))``, groups
  exactly like the decomposed ``x * Clip(x + 3, 0, 6) / 6``: same groups, same
  channels removed on PP-OCRv4 det/rec, tests/real/test_prune_hardswish_real.py.)

A constant that broadcasts along a channel axis (a bias ``[C]``, ``[1, C, 1, 1]``,
a ``PRelu`` slope, BatchNorm parameters, a LayerNorm ``gamma``) is sliced with the
channels. A constant that meets only untracked tensors but has one axis of size
``C`` (magika's decomposed LayerNorm multiplies ``rsqrt(var)`` ``[N, 1]`` by
``gamma`` ``[1, 512]``) starts *flexible* ids, which join the group of whatever
channels they later meet.

Layers consume channels: the input channels of ``Conv``/``ConvTranspose``/
``Gemm``/``MatMul``/``LSTM``/``GRU``/``RNN`` are sliced out of their weights. A
reduction over the channel axis (``ReduceMean`` of a decomposed LayerNorm)
consumes them as well; a ``ReduceSum`` whose result is multiplied by the
constant ``1/C`` (a mean written by hand) gets ``1/C'`` instead.

Whatever is not understood *pins* the channels that reach it, with the reason:
a graph output, a node of a subgraph, an op without a rule (``Shape``,
``Gather``, a custom op...), a mix with an untracked tensor of the same size, a
softmax over channels, a ``Reshape`` that splits the channel axis, a shape
computed at run time that cannot be traced to a constant. A pinned channel is
never removed; graph inputs carry no ids, so they are never pruned.

After the walk, a *group* is a connected set of producing layers (sources) whose
channels are tied; its classes (union-find roots) are the units of pruning.
:meth:`DepGraph.apply` removes a set of classes: it slices every constant,
rewrites every shape constant, ``Split`` size and ``group`` attribute, and
clears the stale shapes of the tensors that shrank.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Model, NameGenerator, TensorType, constant_array, infer_shapes

__all__ = ["Ann", "DepGraph", "Group", "Sink", "Source", "build_depgraph"]

logger = logging.getLogger(__name__)

_DEFAULT_DOMAINS = (None, "", "ai.onnx")

UNARY_OPS = frozenset(
    {
        "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
        "Softplus", "Softsign", "Gelu", "Mish", "ThresholdedRelu", "Erf", "Exp", "Log", "Abs", "Neg",
        "Sqrt", "Reciprocal", "Sin", "Cos", "Tan", "Identity", "Cast", "Floor", "Ceil", "Round",
        "Sign", "Not", "IsNaN", "IsInf", "Dropout", "Clip", "Shrink", "Asin", "Acos", "Atan",
        "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "BitwiseNot",
    }
)  # fmt: skip
"""Ops applied channel by channel to input 0 (other inputs, if any, are scalars)."""

BROADCAST_OPS = frozenset(
    {
        "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "PRelu", "Where", "Equal",
        "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod",
        "BitwiseAnd", "BitwiseOr", "BitwiseXor",
    }
)  # fmt: skip
"""Elementwise ops with numpy broadcasting over all inputs."""

POOL_OPS = frozenset(
    {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
)
REDUCE_OPS = frozenset(
    {
        "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
    }
)  # fmt: skip
RNN_OPS = frozenset({"LSTM", "GRU", "RNN"})


# --------------------------------------------------------------------------- records
@dataclass
class Ann:
    """Channel annotation of a tensor.

    Attributes:
        axis: the axis holding channels (non-negative).
        ids: int64 ``(size of axis,)``, the channel id at each position.
    """

    axis: int
    ids: np.ndarray


@dataclass
class Source:
    """A layer whose output channels can be removed (its weight rows are sliced).

    Attributes:
        node: the Conv/ConvTranspose/Gemm/MatMul node.
        weight: the weight tensor at analysis time (its original name is
            ``weight.name``).
        weight_index: index of the weight among the node's inputs.
        out_axis: weight axis of the output channels.
        ids: the fresh channel ids, one per prunable output unit.
        tiles: how many times ``ids`` repeat along the output (the group count
            of a grouped Conv, else 1): output channel ``k * len(ids) + r`` has
            id ``ids[r]``.
        output: name of the output tensor.
    """

    node: gs.Node
    weight: gs.Tensor
    weight_index: int
    out_axis: int
    ids: np.ndarray
    tiles: int
    output: str

    def weight_value(self) -> np.ndarray:
        return _const_value(self.weight)

    def filter_norms(self, p: int) -> np.ndarray:
        """Norm ``p`` (1 or 2) of the weights of each unit of :attr:`ids`, float64."""
        w = np.moveaxis(self.weight_value().astype(np.float64), self.out_axis, 0)
        n = len(self.ids)
        w = w.reshape(self.tiles, n, -1).transpose(1, 0, 2).reshape(n, -1)
        return np.abs(w).sum(axis=1) if p == 1 else np.sqrt((w * w).sum(axis=1))


@dataclass
class Sink:
    """A layer that consumes channels through its weight (input channels sliced).

    Attributes:
        node: the consuming node.
        input: name of the channel-carrying input tensor.
        weight: the weight tensor at analysis time.
        weight_index: index of the weight among the node's inputs.
        in_axis: weight axis of the input channels.
        block: for a grouped Conv, the input channels per group (the weight
            holds one block; every block keeps the same positions); else None.
    """

    node: gs.Node
    input: str
    weight: gs.Tensor
    weight_index: int
    in_axis: int
    block: int | None = None

    def column_norms(self) -> np.ndarray:
        """L2 norm of the weights reading each input position, float64 ``(C,)``."""
        w = _const_value(self.weight).astype(np.float64)
        if self.block is None:
            w = np.moveaxis(w, self.in_axis, 0)
            return np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(axis=1))
        # Grouped Conv, weight [Cout, a, k...]: position k*a + s reads W[k*b:(k+1)*b, s].
        groups = int(self.node.attrs.get("group", 1))
        b, a = w.shape[0] // groups, self.block
        out = np.empty(groups * a)
        for k in range(groups):
            part = np.moveaxis(w[k * b : (k + 1) * b], 1, 0).reshape(a, -1)
            out[k * a : (k + 1) * a] = np.sqrt((part**2).sum(axis=1))
        return out


@dataclass
class Group:
    """Channels that must be removed together, and the layers producing them.

    Attributes:
        name: the first source node's name (``+N`` when several layers).
        sources: the producing layers.
        classes: int64 roots of the channel classes (units of pruning), in order
            of first appearance.
        pinned: ``{root: reason}`` for classes that must be kept.
    """

    name: str
    sources: list[Source]
    classes: np.ndarray
    pinned: dict[int, str] = field(default_factory=dict)

    @property
    def prunable(self) -> np.ndarray:
        return np.array([c for c in self.classes if int(c) not in self.pinned], dtype=np.int64)

    @property
    def reasons(self) -> list[str]:
        return sorted(set(self.pinned.values()))


# --------------------------------------------------------------------------- edits
@dataclass
class _Slice:
    node: gs.Node
    index: int
    axis: int
    tensor: str
    block: int | None = None


@dataclass
class _Entry:
    node: gs.Node
    index: int
    element: int
    tensor: str


@dataclass
class _GroupAttr:
    node: gs.Node
    tensor: str


@dataclass
class _SplitSizes:
    node: gs.Node
    outputs: list[str]


@dataclass
class _MeanScale:
    node: gs.Node
    index: int
    tensor: str
    divide: bool


class _Pinned(Exception):
    """Raised by a rule: the node is not understood; the message says why."""


# --------------------------------------------------------------------------- helpers
def _is_const(t: gs.Tensor, model: Model) -> bool:
    if model.is_constant(t):
        return True
    return (
        isinstance(t, gs.Variable)
        and len(t.inputs) == 1
        and t.inputs[0].op == "Constant"
        and isinstance(t.inputs[0].attrs.get("value"), gs.Constant)
    )


def _const_value(t: gs.Tensor) -> np.ndarray:
    if isinstance(t, gs.Constant):
        return constant_array(t)
    return constant_array(t.inputs[0].attrs["value"])


def _same_dim(a, b) -> bool:
    return a is not None and b is not None and type(a) is type(b) and a == b


def reshape_axis(ins: tuple, outs: tuple, t: int, c: int) -> tuple[int, np.ndarray] | None:
    """Where channel axis ``t`` (size ``c``) of a tensor of shape ``ins`` lands after
    a row-major reshape to ``outs``.

    Returns:
        ``(k, idx)``: the output axis ``k`` holding the channels and, for each
        position ``j`` along it, the channel ``idx[j]`` stored there; None when the
        channels do not land in one output axis (or the dims around them are not
        static).
    """
    ni, no = len(ins), len(outs)
    n = 0
    while n < min(ni, no) and _same_dim(ins[n], outs[n]):
        n += 1
    if t < n:
        return t, np.arange(c)
    m = 0
    while m < min(ni, no) - n and _same_dim(ins[ni - 1 - m], outs[no - 1 - m]):
        m += 1
    if t >= ni - m:
        return no - (ni - t), np.arange(c)
    mid_in = list(range(n, ni - m))
    mid_out = list(range(n, no - m))
    for block_in, block_out in _blocks(ins, outs, mid_in, mid_out):
        if t not in block_in:
            continue
        dims_in = [ins[a] for a in block_in]
        s_in = math.prod(dims_in[block_in.index(t) + 1 :])
        for pos, k in enumerate(block_out):
            s_out = math.prod(outs[a] for a in block_out[pos + 1 :])
            size = outs[k]
            if s_in % s_out == 0 and (s_out * size) % (s_in * c) == 0:
                j = np.arange(size)
                return k, (j * s_out // s_in) % c
        return None
    return None


def _blocks(ins, outs, mid_in: list[int], mid_out: list[int]) -> Iterable[tuple[list[int], list[int]]]:
    """Matching runs of static dims with equal products, walked from the right
    and then from the left of the middle region."""
    for reverse in (True, False):
        a = list(reversed(mid_in)) if reverse else list(mid_in)
        b = list(reversed(mid_out)) if reverse else list(mid_out)
        i = j = 0
        while i < len(a) and j < len(b):
            bi, bj, pi, pj = [], [], 1, 1
            ok = True
            while True:
                if bi and bj and pi == pj:
                    break
                if (pi <= pj or j >= len(b)) and i < len(a):
                    d = ins[a[i]]
                    if not isinstance(d, int):
                        ok = False
                        break
                    bi.append(a[i])
                    pi *= d
                    i += 1
                elif j < len(b):
                    d = outs[b[j]]
                    if not isinstance(d, int):
                        ok = False
                        break
                    bj.append(b[j])
                    pj *= d
                    j += 1
                else:
                    ok = False
                    break
            if not ok:
                break
            yield (sorted(bi), sorted(bj))


# --------------------------------------------------------------------------- the graph
class DepGraph:
    """Channel dependencies of a model's main graph (see the module docstring).

    Build it with :func:`build_depgraph`; read :attr:`groups`; remove classes with
    :meth:`apply`.

    Attributes:
        groups: the dependency groups, in graph order of their first layer.
        sources: every prunable layer.
        sinks: every layer whose input channels are tracked.
        ann: channel annotation per tensor name.
        unattached: reasons that pinned channels of no group (kept for the
            report; e.g. a layer whose weights are not constant).
    """

    def __init__(self, model: Model, shapes: dict[str, TensorType] | None = None) -> None:
        self.model = model
        self.graph = model.graph
        self.shapes = shapes if shapes is not None else infer_shapes(model)
        self.ann: dict[str, Ann] = {}
        self.tensors: dict[str, gs.Tensor] = {}
        self.sources: list[Source] = []
        self.sinks: list[Sink] = []
        self.reductions: list[tuple[gs.Node, str]] = []
        self.groups: list[Group] = []
        self._parent: list[int] = []
        self._pins: list[tuple[np.ndarray, str]] = []
        self._edits: list = []
        self._shape_requests: dict[tuple[int, int, int], list] = {}
        self._concat_parts: dict[str, list[int]] = {}
        self._main_nodes = {id(n) for n in self.graph.nodes}
        self._opset = model.opset
        self.unattached: list[str] = []
        self._build()

    # ------------------------------------------------------------ union-find
    def _fresh(self, n: int) -> np.ndarray:
        base = len(self._parent)
        self._parent.extend(range(base, base + n))
        return np.arange(base, base + n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self._parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            if ra < rb:
                ra, rb = rb, ra
            self._parent[ra] = rb

    def _unify(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            self._union(x, y)

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(int(i)) for i in ids), dtype=np.int64, count=len(ids))

    def _pin(self, ann: Ann | None, reason: str) -> None:
        if ann is not None and len(ann.ids):
            self._pins.append((ann.ids, reason))

    # ------------------------------------------------------------ shapes
    def _shape(self, t: gs.Tensor) -> tuple | None:
        if isinstance(t, gs.Constant):
            return tuple(int(d) for d in t.shape)
        if _is_const(t, self.model):
            return tuple(int(d) for d in _const_value(t).shape)
        tt = self.shapes.get(t.name)
        return None if tt is None or tt.shape is None else tuple(tt.shape)

    def _rank(self, t: gs.Tensor) -> int | None:
        s = self._shape(t)
        return None if s is None else len(s)

    def _const(self, t: gs.Tensor | None) -> np.ndarray | None:
        if t is None or not t.name or not _is_const(t, self.model):
            return None
        return _const_value(t)

    def _ints(self, node: gs.Node, attr: str, index: int) -> list[int] | None:
        """An int list given as attribute ``attr`` (old opsets) or as constant input ``index``."""
        if attr in node.attrs:
            v = node.attrs[attr]
            return [int(x) for x in (v if isinstance(v, (list, tuple)) else [v])]
        if index < len(node.inputs) and node.inputs[index].name:
            v = self._const(node.inputs[index])
            if v is None:
                raise _Pinned(f"{node.op} input {index} is computed at run time")
            return [int(x) for x in np.atleast_1d(v)]
        return None

    # ------------------------------------------------------------ walk
    def _build(self) -> None:
        for t in self.graph.tensors().values():
            self.tensors[t.name] = t
        for node in self.graph.nodes:
            for t in node.outputs:
                self.tensors.setdefault(t.name, t)
            tracked = [self.ann.get(t.name) for t in node.inputs]
            marks = (len(self._edits), len(self.sinks), len(self.sources), len(self.reductions))
            try:
                if node.domain not in _DEFAULT_DOMAINS:
                    raise _Pinned(f"custom op {node.domain}:{node.op}")
                self._rule(node)
            except _Pinned as why:
                reason = f"{node.op} {node.name!r}: {why}"
                logger.debug("prune: pinned at %s", reason)
                # A rule is all or nothing: drop what it recorded before refusing.
                del self._edits[marks[0] :], self.sinks[marks[1] :], self.sources[marks[2] :]
                del self.reductions[marks[3] :]
                for a in tracked:
                    self._pin(a, reason)
                for t in node.outputs:
                    self.ann.pop(t.name, None)
        outputs = {t.name for t in self.graph.outputs}
        for name, a in self.ann.items():
            t = self.tensors.get(name)
            if name in outputs:
                self._pin(a, f"reaches graph output {name!r}")
            elif t is not None and any(id(c) not in self._main_nodes for c in t.outputs):
                self._pin(a, f"{name!r} is read inside a subgraph")
        self._resolve_shape_requests()
        self._make_groups()

    def _rule(self, node: gs.Node) -> None:
        op = node.op
        if op in ("Conv", "ConvTranspose"):
            self._conv(node)
        elif op == "Gemm":
            self._gemm(node)
        elif op == "MatMul":
            self._matmul(node)
        elif op in RNN_OPS:
            self._rnn(node)
        elif op in UNARY_OPS:
            self._elementwise(node, inputs=[0])
        elif op in BROADCAST_OPS:
            self._elementwise(node, inputs=list(range(len(node.inputs))))
        elif op in ("BatchNormalization", "InstanceNormalization"):
            self._batchnorm(node)
        elif op == "LayerNormalization":
            self._layernorm(node)
        elif op == "Transpose":
            self._transpose(node)
        elif op in ("Squeeze", "Unsqueeze"):
            self._squeeze(node)
        elif op in ("Reshape", "Flatten"):
            self._reshape(node)
        elif op == "Concat":
            self._concat(node)
        elif op == "Split":
            self._split(node)
        elif op == "Slice":
            self._slice(node)
        elif op == "Pad":
            self._pad(node)
        elif op in POOL_OPS:
            self._pool(node)
        elif op in ("Resize", "Upsample"):
            self._resize(node)
        elif op in REDUCE_OPS:
            self._reduce(node)
        elif op in ("ArgMax", "ArgMin"):
            self._argmax(node)
        elif op in ("Softmax", "LogSoftmax", "Hardmax"):
            self._softmax(node)
        elif op == "Expand":
            self._expand(node)
        elif op == "Constant":
            return
        else:
            if any(t.name in self.ann for t in node.inputs):
                raise _Pinned("no channel rule for this op")

    def _in(self, node: gs.Node, i: int = 0) -> Ann | None:
        if i < len(node.inputs) and node.inputs[i].name:
            return self.ann.get(node.inputs[i].name)
        return None

    def _set(self, node: gs.Node, ann: Ann | None, outputs: Iterable[int] = (0,)) -> None:
        if ann is None:
            return
        for i in outputs:
            if i < len(node.outputs) and node.outputs[i].name:
                self.ann[node.outputs[i].name] = Ann(ann.axis, ann.ids)

    def _used(self, t: gs.Tensor) -> bool:
        return bool(t.name) and (bool(t.outputs) or t in self.graph.outputs)

    # ------------------------------------------------------------ layers
    def _conv(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        w_t = node.inputs[1] if len(node.inputs) > 1 else None
        w = self._const(w_t)
        b_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if w is None or w.dtype.kind != "f" or w.ndim < 3:
            raise _Pinned("weight is not a constant float tensor")
        if b_t is not None and self._const(b_t) is None:
            raise _Pinned("bias is not constant")
        group = int(node.attrs.get("group", 1))
        transpose = node.op == "ConvTranspose"
        cin = w.shape[0] if transpose else w.shape[1] * group
        cout = w.shape[1] * group if transpose else w.shape[0]
        if transpose and group != 1:
            raise _Pinned(f"grouped ConvTranspose (group={group})")
        if a is not None and (a.axis != 1 or len(a.ids) != cin):
            raise _Pinned("channels are not on axis 1")
        depthwise = not transpose and group > 1 and group == cin and w.shape[1] == 1
        out_name = node.outputs[0].name
        if depthwise:
            if a is None:
                return  # a depthwise layer on untracked input keeps its channels
            m = cout // group
            ids = np.repeat(a.ids, m)
            self.ann[out_name] = Ann(1, ids)
            self._edits.append(_Slice(node, 1, 0, out_name))
            if b_t is not None:
                self._edits.append(_Slice(node, 2, 0, out_name))
            self._edits.append(_GroupAttr(node, node.inputs[0].name))
            return
        if a is not None:
            if group == 1:
                self.sinks.append(Sink(node, node.inputs[0].name, w_t, 1, 0 if transpose else 1))
                self._edits.append(_Slice(node, 1, 0 if transpose else 1, node.inputs[0].name))
            else:
                per = cin // group
                grid = a.ids.reshape(group, per)
                for s in range(per):
                    for k in range(1, group):
                        self._union(grid[0, s], grid[k, s])
                self.sinks.append(Sink(node, node.inputs[0].name, w_t, 1, 1, block=per))
                self._edits.append(_Slice(node, 1, 1, node.inputs[0].name, block=per))
        per_out = cout // group
        fresh = self._fresh(per_out)
        out_axis = 1 if transpose else 0
        self.sources.append(Source(node, w_t, 1, out_axis, fresh, group, out_name))
        self.ann[out_name] = Ann(1, np.tile(fresh, group))
        self._edits.append(_Slice(node, 1, out_axis, out_name))
        if b_t is not None:
            self._edits.append(_Slice(node, 2, 0, out_name))

    def _gemm(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        w_t = node.inputs[1]
        w = self._const(w_t)
        if w is None or w.dtype.kind != "f" or w.ndim != 2 or self._in(node, 1) is not None:
            raise _Pinned("B is not a constant float matrix")
        trans_a, trans_b = int(node.attrs.get("transA", 0)), int(node.attrs.get("transB", 0))
        c_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        c = self._const(c_t) if c_t is not None else None
        if c_t is not None and c is None:
            raise _Pinned("C is not constant")
        if a is not None:
            if a.axis != (0 if trans_a else 1):
                raise _Pinned("channels are not on the reduced axis of A")
            self.sinks.append(Sink(node, node.inputs[0].name, w_t, 1, 1 if trans_b else 0))
            self._edits.append(_Slice(node, 1, 1 if trans_b else 0, node.inputs[0].name))
        n = w.shape[0] if trans_b else w.shape[1]
        out_name = node.outputs[0].name
        fresh = self._fresh(n)
        self.sources.append(Source(node, w_t, 1, 0 if trans_b else 1, fresh, 1, out_name))
        self.ann[out_name] = Ann(1, fresh)
        self._edits.append(_Slice(node, 1, 0 if trans_b else 1, out_name))
        if c is not None and c.ndim >= 1 and c.shape[-1] == n and n > 1:
            self._edits.append(_Slice(node, 2, c.ndim - 1, out_name))

    def _matmul(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        w_t = node.inputs[1]
        w = self._const(w_t)
        if w is None or w.dtype.kind != "f" or w.ndim != 2 or self._in(node, 1) is not None:
            raise _Pinned("B is not a constant float matrix")
        ra = self._rank(node.inputs[0])
        if a is not None:
            if ra is None or a.axis != ra - 1:
                raise _Pinned("channels are not on the last axis of A")
            self.sinks.append(Sink(node, node.inputs[0].name, w_t, 1, 0))
            self._edits.append(_Slice(node, 1, 0, node.inputs[0].name))
        ro = self._rank(node.outputs[0])
        if ro is None:
            return
        out_name = node.outputs[0].name
        fresh = self._fresh(w.shape[1])
        self.sources.append(Source(node, w_t, 1, 1, fresh, 1, out_name))
        self.ann[out_name] = Ann(ro - 1, fresh)
        self._edits.append(_Slice(node, 1, 1, out_name))

    def _rnn(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        w_t = node.inputs[1]
        w = self._const(w_t)
        if w is None or w.ndim != 3 or a.axis != 2 or w.shape[2] != len(a.ids):
            raise _Pinned("input features are not the last axis of X, or W is not constant")
        self.sinks.append(Sink(node, node.inputs[0].name, w_t, 1, 2))
        self._edits.append(_Slice(node, 1, 2, node.inputs[0].name))

    # ------------------------------------------------------------ elementwise
    def _elementwise(self, node: gs.Node, inputs: list[int]) -> None:
        out = node.outputs[0]
        oshape = self._shape(out)
        anns = [(i, self._in(node, i)) for i in inputs]
        tracked = [(i, a) for i, a in anns if a is not None]
        if oshape is None:
            if tracked:
                raise _Pinned("output rank unknown")
            return
        r = len(oshape)
        rank = {i: self._rank(node.inputs[i]) for i in inputs if node.inputs[i].name}
        if tracked:
            axes = set()
            for i, a in tracked:
                if rank.get(i) is None:
                    raise _Pinned("input rank unknown")
                axes.add(a.axis + r - rank[i])
            if len(axes) != 1:
                raise _Pinned("inputs carry channels on different axes")
            axis = axes.pop()
            size = oshape[axis]
            ids = None
            for i, a in tracked:
                if isinstance(size, int) and len(a.ids) == size:
                    if ids is None:
                        ids = a.ids
                    else:
                        self._unify(ids, a.ids)
                elif len(a.ids) == 1:
                    self._pin(a, f"{node.op} {node.name!r}: one channel broadcast over {size}")
                else:
                    raise _Pinned(f"{len(a.ids)} channels against an axis of size {size}")
            if ids is None:
                return
        else:
            found = self._flexible(node, inputs, oshape)
            if found is None:
                return
            axis, ids = found
        size = len(ids)
        for i in inputs:
            t = node.inputs[i]
            if not t.name or any(j == i for j, _ in tracked):
                continue
            s = self._shape(t)
            if s is None:
                raise _Pinned(f"shape of {t.name!r} unknown")
            k = axis - (r - len(s))
            d = s[k] if k >= 0 else 1
            if d == 1:
                continue
            if _is_const(t, self.model) and d == size:
                self._edits.append(_Slice(node, i, k, out.name))
                continue
            raise _Pinned(f"channels meet untracked tensor {t.name!r} of size {d} on that axis")
        a = Ann(axis, ids)
        self._set(node, a, range(len(node.outputs)))

    def _flexible(self, node: gs.Node, inputs: list[int], oshape: tuple) -> tuple[int, np.ndarray] | None:
        """Flexible ids for a constant with one axis of size > 1 that meets only
        tensors of size 1 on that axis (e.g. LayerNorm gamma times rsqrt(var))."""
        r = len(oshape)
        found = None
        for i in inputs:
            t = node.inputs[i]
            if not t.name or not _is_const(t, self.model):
                continue
            s = self._shape(t)
            big = [k for k, d in enumerate(s) if d != 1]
            if len(big) != 1:
                if big:
                    return None
                continue
            axis = big[0] + r - len(s)
            if found is not None and found != axis:
                return None
            if oshape[axis] != s[big[0]]:
                return None
            found = axis
        if found is None:
            return None
        for i in inputs:
            t = node.inputs[i]
            if not t.name or _is_const(t, self.model):
                continue
            s = self._shape(t)
            if s is None:
                return None
            k = found - (r - len(s))
            if k >= 0 and s[k] != 1:
                return None
        if not any(node.inputs[i].name and not _is_const(node.inputs[i], self.model) for i in inputs):
            return None
        return found, self._fresh(int(oshape[found]))

    def _batchnorm(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        if a.axis != 1:
            raise _Pinned("channels are not on axis 1")
        if int(node.attrs.get("training_mode", 0)) or any(self._used(t) for t in node.outputs[1:]):
            raise _Pinned("training mode")
        for i in range(1, len(node.inputs)):
            v = self._const(node.inputs[i])
            if v is None or v.shape != (len(a.ids),):
                raise _Pinned(f"parameter {i} is not a constant [C] vector")
            self._edits.append(_Slice(node, i, 0, node.outputs[0].name))
        self._set(node, a)

    def _layernorm(self, node: gs.Node) -> None:
        if any(self._used(t) for t in node.outputs[1:]):
            raise _Pinned("mean/inv-std outputs are used")
        if self._in(node, 0) is None:
            return
        self._elementwise(node, inputs=list(range(len(node.inputs))))

    # ------------------------------------------------------------ layout
    def _transpose(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        perm = node.attrs.get("perm")
        if perm is None:
            r = self._rank(node.inputs[0])
            if r is None:
                raise _Pinned("rank unknown")
            perm = list(range(r - 1, -1, -1))
        self._set(node, Ann(list(perm).index(a.axis), a.ids))

    def _squeeze(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        axes = self._ints(node, "axes", 1)
        ri, ro = self._rank(node.inputs[0]), self._rank(node.outputs[0])
        if ri is None or ro is None:
            raise _Pinned("rank unknown")
        if node.op == "Squeeze":
            if axes is None:
                s = self._shape(node.inputs[0])
                axes = [k for k, d in enumerate(s) if d == 1]
            axes = [x % ri for x in axes]
            if a.axis in axes:
                raise _Pinned("squeezes the channel axis")
            self._set(node, Ann(a.axis - sum(1 for x in axes if x < a.axis), a.ids))
        else:
            axes = sorted(x % ro for x in (axes or []))
            kept = [k for k in range(ro) if k not in axes]
            self._set(node, Ann(kept[a.axis], a.ids))

    def _reshape(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        ins, outs = self._shape(node.inputs[0]), self._shape(node.outputs[0])
        if ins is None or outs is None:
            raise _Pinned("shapes unknown")
        c = len(a.ids)
        mapped = reshape_axis(ins, outs, a.axis, c)
        if mapped is None:
            raise _Pinned(f"splits the channel axis or merges it with dynamic dims: {ins} -> {outs}")
        k, idx = mapped
        ann = Ann(k, a.ids[idx])
        if node.op == "Reshape":
            shape = self._const(node.inputs[1])
            if shape is not None:
                value = int(shape.reshape(-1)[k])
                if value not in (-1, 0):
                    self._edits.append(_Entry(node, 1, k, node.outputs[0].name))
                elif value == 0 and k != a.axis:
                    raise _Pinned("shape entry 0 copies another axis")
            else:
                self._request_entry(node, node.inputs[1], k, ann, outs[k])
        self._set(node, ann)

    def _expand(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        ri, ro = self._rank(node.inputs[0]), self._rank(node.outputs[0])
        if ri is None or ro is None:
            raise _Pinned("rank unknown")
        k = a.axis + ro - ri
        ann = Ann(k, a.ids)
        shape = self._const(node.inputs[1])
        n = len(shape) if shape is not None else None
        if shape is not None:
            pos = k - (ro - n)
            if pos >= 0:
                value = int(shape[pos])
                if value == len(a.ids):
                    self._edits.append(_Entry(node, 1, pos, node.outputs[0].name))
                elif value != 1:
                    raise _Pinned(f"expands the channel axis to {value}")
        else:
            s = self._shape(node.inputs[1])
            if s is None or not isinstance(s[0], int):
                raise _Pinned("shape length unknown")
            pos = k - (ro - s[0])
            if pos >= 0:
                self._request_entry(node, node.inputs[1], pos, ann, len(a.ids), allow_one=True)
        self._set(node, ann)

    def _request_entry(self, node: gs.Node, t: gs.Tensor, element: int, ann: Ann, size, allow_one: bool = False) -> None:
        """Trace entry ``element`` of a run-time shape tensor through Cast and
        Concat to a constant; remember the request (resolved after the walk)."""
        chain: list[gs.Tensor] = [t]
        while True:
            if _is_const(t, self.model):
                break
            prod = t.inputs[0] if t.inputs else None
            if prod is None or id(prod) not in self._main_nodes:
                raise _Pinned("shape computed at run time")
            if prod.op == "Cast":
                t = prod.inputs[0]
                chain.append(t)
                continue
            if prod.op == "Concat" and int(prod.attrs.get("axis", 0)) in (0, -1):
                offset = 0
                for i, part in enumerate(prod.inputs):
                    s = self._shape(part)
                    if s is None or len(s) != 1 or not isinstance(s[0], int):
                        raise _Pinned("shape computed at run time")
                    if offset <= element < offset + s[0]:
                        if not _is_const(part, self.model):
                            raise _Pinned("channel count of a shape is computed at run time")
                        value = int(_const_value(part).reshape(-1)[element - offset])
                        if value == 1 and allow_one:
                            return
                        if value != size:
                            raise _Pinned(f"shape entry {value} is not the channel count {size}")
                        key = (id(prod), i, element - offset)
                        self._shape_requests.setdefault(key, []).append((prod, i, element - offset, node, ann, chain))
                        return
                    offset += s[0]
                raise _Pinned("shape entry out of range")
            raise _Pinned(f"shape computed at run time by {prod.op}")
        value = int(_const_value(t).reshape(-1)[element])
        if value == 1 and allow_one:
            return
        if value != size:
            raise _Pinned(f"shape entry {value} is not the channel count {size}")
        if t is chain[0]:
            self._edits.append(_Entry(node, 1, element, node.outputs[0].name))
        else:
            raise _Pinned("shape constant behind a Cast")

    def _resolve_shape_requests(self) -> None:
        for key, reqs in self._shape_requests.items():
            requesters = {id(r[3]) for r in reqs}
            chain_nodes = set()
            for r in reqs:
                for t in r[5]:
                    for p in t.inputs:
                        chain_nodes.add(id(p))
            ok = True
            for r in reqs:
                for t in r[5]:
                    if any(id(c) not in requesters and id(c) not in chain_nodes for c in t.outputs):
                        ok = False
            first = reqs[0][4]
            if any(len(r[4].ids) != len(first.ids) for r in reqs):
                ok = False
            if not ok:
                for r in reqs:
                    self._pin(r[4], f"{r[3].op} {r[3].name!r}: its shape tensor is shared with other nodes")
                continue
            for r in reqs[1:]:
                self._unify(first.ids, r[4].ids)
            prod, i, element, node = reqs[0][0], reqs[0][1], reqs[0][2], reqs[0][3]
            self._edits.append(_Entry(prod, i, element, node.outputs[0].name))

    def _concat(self, node: gs.Node) -> None:
        if not any(self._in(node, i) is not None for i in range(len(node.inputs))):
            return
        ro = self._rank(node.outputs[0])
        if ro is None:
            raise _Pinned("rank unknown")
        axis = int(node.attrs.get("axis")) % ro
        anns = [self._in(node, i) for i in range(len(node.inputs))]
        taxes = {a.axis for a in anns if a is not None}
        if len(taxes) != 1:
            raise _Pinned("inputs carry channels on different axes")
        t = taxes.pop()
        if t != axis:
            self._elementwise(node, inputs=list(range(len(node.inputs))))
            return
        parts = []
        for i, a in enumerate(anns):
            if a is not None:
                parts.append(a.ids)
                continue
            inp = node.inputs[i]
            s = self._shape(inp)
            if s is None or not isinstance(s[axis], int):
                raise _Pinned(f"size of {inp.name!r} on the channel axis unknown")
            fresh = self._fresh(s[axis])
            if not _is_const(inp, self.model):
                self._pins.append((fresh, f"Concat {node.name!r}: concatenated with untracked {inp.name!r}"))
            else:
                self._edits.append(_Slice(node, i, axis, f"{node.outputs[0].name}#{i}"))
            parts.append(fresh)
        ids = np.concatenate(parts)
        # Masks of constant parts are read from the output's mask by offset.
        self._concat_parts[node.outputs[0].name] = [len(p) for p in parts]
        self._set(node, Ann(axis, ids))

    def _split(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        ri = self._rank(node.inputs[0])
        axis = int(node.attrs.get("axis", 0)) % ri
        if axis != a.axis:
            for i in range(len(node.outputs)):
                self._set(node, a, [i])
            return
        sizes = []
        for t in node.outputs:
            s = self._shape(t)
            if s is None or not isinstance(s[axis], int):
                raise _Pinned("output sizes unknown")
            sizes.append(s[axis])
        if sum(sizes) != len(a.ids):
            raise _Pinned("output sizes do not add up")
        offset = 0
        for i, n in enumerate(sizes):
            self._set(node, Ann(axis, a.ids[offset : offset + n]), [i])
            offset += n
        self._edits.append(_SplitSizes(node, [t.name for t in node.outputs]))

    def _slice(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        ri = self._rank(node.inputs[0])
        if self._opset < 10:
            starts, ends = node.attrs.get("starts"), node.attrs.get("ends")
            axes = node.attrs.get("axes", list(range(len(starts))))
            steps = [1] * len(starts)
        else:
            vals = [self._const(node.inputs[i]) if i < len(node.inputs) and node.inputs[i].name else None for i in range(5)]
            if vals[1] is None or vals[2] is None:
                raise _Pinned("starts/ends computed at run time")
            starts, ends = vals[1].tolist(), vals[2].tolist()
            if len(node.inputs) > 3 and node.inputs[3].name and vals[3] is None:
                raise _Pinned("axes computed at run time")
            if len(node.inputs) > 4 and node.inputs[4].name and vals[4] is None:
                raise _Pinned("steps computed at run time")
            axes = vals[3].tolist() if vals[3] is not None else list(range(len(starts)))
            steps = vals[4].tolist() if vals[4] is not None else [1] * len(starts)
        c = len(a.ids)
        for s, e, ax, st in zip(starts, ends, axes, steps):
            if int(ax) % ri != a.axis:
                continue
            s = s + c if s < 0 else s
            if not (s <= 0 and e >= c and st == 1):
                raise _Pinned("slices part of the channel axis")
        self._set(node, a)

    def _pad(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        ri = self._rank(node.inputs[0])
        pads = self._ints(node, "pads", 1)
        if pads is None:
            raise _Pinned("pads unknown")
        axes = self._ints(node, "__none__", 3) if len(node.inputs) > 3 else None
        axes = [x % ri for x in axes] if axes else list(range(ri))
        n = len(axes)
        for j, ax in enumerate(axes):
            if ax == a.axis and (pads[j] != 0 or pads[j + n] != 0):
                raise _Pinned("pads the channel axis")
        self._set(node, a)

    def _pool(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        if a.axis != 1:
            raise _Pinned("channels are not on axis 1")
        if len(node.outputs) > 1 and self._used(node.outputs[1]):
            raise _Pinned("pooling indices are used")
        self._set(node, a)

    def _resize(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        n_in = len(node.inputs)
        if node.op == "Upsample" or self._opset < 11:
            scales = self._const(node.inputs[1]) if n_in > 1 else node.attrs.get("scales")
            if scales is None or float(np.asarray(scales).reshape(-1)[a.axis]) != 1.0:
                raise _Pinned("scales the channel axis")
            self._set(node, a)
            return
        scales = self._const(node.inputs[2]) if n_in > 2 and node.inputs[2].name else None
        sizes_t = node.inputs[3] if n_in > 3 and node.inputs[3].name else None
        if "axes" in node.attrs:
            axes = [int(x) % self._rank(node.inputs[0]) for x in node.attrs["axes"]]
        else:
            axes = None
        pos = a.axis if axes is None else (axes.index(a.axis) if a.axis in axes else None)
        if scales is not None and scales.size:
            if pos is not None and float(scales.reshape(-1)[pos]) != 1.0:
                raise _Pinned("scales the channel axis")
        elif sizes_t is not None:
            sizes = self._const(sizes_t)
            if sizes is None:
                raise _Pinned("sizes computed at run time")
            if pos is not None:
                if int(sizes.reshape(-1)[pos]) != len(a.ids):
                    raise _Pinned("resizes the channel axis")
                self._edits.append(_Entry(node, 3, pos, node.outputs[0].name))
        else:
            raise _Pinned("neither scales nor sizes are constant")
        self._set(node, a)

    # ------------------------------------------------------------ reductions
    def _axes_attr_or_input(self, node: gs.Node) -> list[int] | None:
        if "axes" in node.attrs:
            return [int(x) for x in node.attrs["axes"]]
        if len(node.inputs) > 1 and node.inputs[1].name:
            v = self._const(node.inputs[1])
            if v is None:
                raise _Pinned("axes computed at run time")
            return [int(x) for x in np.atleast_1d(v)]
        return None

    def _reduce(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        ri = self._rank(node.inputs[0])
        if ri is None:
            raise _Pinned("rank unknown")
        axes = self._axes_attr_or_input(node)
        if not axes:
            if int(node.attrs.get("noop_with_empty_axes", 0)):
                self._set(node, a)
                return
            axes = list(range(ri))
        axes = [x % ri for x in axes]
        keep = int(node.attrs.get("keepdims", 1))
        if a.axis in axes:
            # The channels are consumed (a mean, a norm...): like a layer input.
            self.reductions.append((node, node.inputs[0].name))
            if node.op == "ReduceSum":
                c = len(a.ids)
                for consumer in node.outputs[0].outputs:
                    if consumer.op in ("Mul", "Div") and len(consumer.inputs) == 2:
                        for i, t in enumerate(consumer.inputs):
                            v = self._const(t)
                            if v is None or v.size != 1 or t is node.outputs[0]:
                                continue
                            v = float(v.reshape(-1)[0])
                            if consumer.op == "Mul" and math.isclose(v, 1.0 / c, rel_tol=1e-6):
                                self._edits.append(_MeanScale(consumer, i, node.inputs[0].name, False))
                            elif consumer.op == "Div" and i == 1 and math.isclose(v, float(c), rel_tol=1e-6):
                                self._edits.append(_MeanScale(consumer, i, node.inputs[0].name, True))
            return
        shift = 0 if keep else sum(1 for x in axes if x < a.axis)
        self._set(node, Ann(a.axis - shift, a.ids))

    def _argmax(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        ri = self._rank(node.inputs[0])
        axis = int(node.attrs.get("axis", 0)) % ri
        if axis == a.axis:
            raise _Pinned("index over the channel axis")
        keep = int(node.attrs.get("keepdims", 1))
        self._set(node, Ann(a.axis - (0 if keep or axis > a.axis else 1), a.ids))

    def _softmax(self, node: gs.Node) -> None:
        a = self._in(node, 0)
        if a is None:
            return
        ri = self._rank(node.inputs[0])
        if self._opset < 13:
            axis = int(node.attrs.get("axis", 1)) % ri
            if a.axis >= axis:
                raise _Pinned("normalizes over the channel axis")
        else:
            axis = int(node.attrs.get("axis", -1)) % ri
            if a.axis == axis:
                raise _Pinned("normalizes over the channel axis")
        self._set(node, a)

    # ------------------------------------------------------------ groups
    def _make_groups(self) -> None:
        pinned: dict[int, str] = {}
        for ids, reason in self._pins:
            for r in self.roots(ids).tolist():
                pinned.setdefault(r, reason)
        self._pinned = pinned
        parent = list(range(len(self.sources)))

        def find(x: int) -> int:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        owner: dict[int, int] = {}
        self._source_roots = []
        for k, s in enumerate(self.sources):
            roots = self.roots(s.ids)
            self._source_roots.append(roots)
            for r in roots.tolist():
                if r in owner:
                    a, b = find(owner[r]), find(k)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
                else:
                    owner[r] = k
        members: dict[int, list[int]] = {}
        for k in range(len(self.sources)):
            members.setdefault(find(k), []).append(k)
        for head in sorted(members):
            srcs = [self.sources[k] for k in members[head]]
            classes = list(dict.fromkeys(r for k in members[head] for r in self._source_roots[k].tolist()))
            name = srcs[0].node.name or srcs[0].output
            if len(srcs) > 1:
                name = f"{name} (+{len(srcs) - 1})"
            group = Group(name, srcs, np.array(classes, dtype=np.int64))
            group.pinned = {r: pinned[r] for r in classes if r in pinned}
            self.groups.append(group)
        in_groups = {int(r) for g in self.groups for r in g.classes}
        self.unattached = sorted({why for r, why in pinned.items() if r not in in_groups})

    # ------------------------------------------------------------ rewrite
    def masks(self, removed: set[int]) -> dict[str, np.ndarray]:
        """Keep-masks of every annotated tensor when the classes ``removed`` go."""
        removed_arr = np.fromiter(removed, dtype=np.int64) if removed else np.zeros(0, np.int64)
        out = {}
        for name, a in self.ann.items():
            out[name] = ~np.isin(self.roots(a.ids), removed_arr)
        return out

    def restore_empty(self, removed: set[int], score: dict[int, float]) -> set[int]:
        """Give back, in every tensor that would lose all its channels, its best
        removed class; repeat until no tensor is empty."""
        removed = set(removed)
        while True:
            changed = False
            for name, a in self.ann.items():
                roots = self.roots(a.ids)
                if len(roots) and all(int(r) in removed for r in roots):
                    best = max(set(roots.tolist()), key=lambda r: score.get(r, 0.0))
                    removed.discard(best)
                    changed = True
            if not changed:
                return removed

    def apply(self, removed: set[int]) -> dict[str, np.ndarray]:
        """Remove the channel classes ``removed`` (union-find roots) from the model.

        Returns:
            The keep-mask of every annotated tensor (True = kept), by name.
        """
        masks = self.masks(removed)
        names = NameGenerator(self.model)
        cache: dict[tuple, gs.Constant] = {}

        def mask_of(name: str) -> np.ndarray:
            if "#" in name:  # a constant part of a Concat, by offset
                out, i = name.rsplit("#", 1)
                sizes = self._concat_parts[out]
                start = sum(sizes[: int(i)])
                return masks[out][start : start + sizes[int(i)]]
            return masks[name]

        def replace(node: gs.Node, index: int, value: np.ndarray, base: str) -> None:
            node.inputs[index] = gs.Constant(names.new(base), np.array(value, order="C"))

        for e in self._edits:
            if isinstance(e, _Slice):
                m = mask_of(e.tensor)
                if e.block is not None:
                    m = m[: e.block]
                if m.all():
                    continue
                t = e.node.inputs[e.index]
                key = (id(t), e.axis, m.tobytes())
                if key not in cache:
                    value = np.compress(m, _const_value(t), axis=e.axis)
                    cache[key] = gs.Constant(names.new(f"{t.name}_pruned"), np.array(value, order="C"))
                e.node.inputs[e.index] = cache[key]
            elif isinstance(e, _Entry):
                m = mask_of(e.tensor)
                if m.all():
                    continue
                t = e.node.inputs[e.index]
                value = _const_value(t).copy()
                flat = value.reshape(-1)
                flat[e.element] = int(m.sum())
                replace(e.node, e.index, value, f"{t.name}_pruned")
            elif isinstance(e, _GroupAttr):
                m = masks[e.tensor]
                if not m.all():
                    e.node.attrs["group"] = int(m.sum())
            elif isinstance(e, _SplitSizes):
                ms = [masks[o] for o in e.outputs]
                if all(m.all() for m in ms):
                    continue
                sizes = [int(m.sum()) for m in ms]
                if self._opset >= 13:
                    value = np.array(sizes, dtype=np.int64)
                    c = gs.Constant(names.new(f"{e.node.name or 'split'}_sizes_pruned"), value)
                    if len(e.node.inputs) > 1:
                        e.node.inputs[1] = c
                    else:
                        e.node.inputs.append(c)
                    e.node.attrs.pop("num_outputs", None)
                else:
                    e.node.attrs["split"] = sizes
            elif isinstance(e, _MeanScale):
                m = masks[e.tensor]
                if m.all():
                    continue
                t = e.node.inputs[e.index]
                old = _const_value(t)
                k = float(m.sum())
                value = np.full(old.shape, k if e.divide else 1.0 / k, dtype=old.dtype)
                replace(e.node, e.index, value, f"{t.name}_pruned")
        # Stale shapes: every tensor that shrank loses its declared shape.
        for name, m in masks.items():
            if not m.all():
                t = self.tensors.get(name)
                if isinstance(t, gs.Variable):
                    t.shape = None
        # Constant nodes left without readers.
        outputs = {id(t) for t in self.graph.outputs}
        dead = [
            n for n in self.graph.nodes
            if n.op == "Constant" and all(not t.outputs and id(t) not in outputs for t in n.outputs)
        ]  # fmt: skip
        if dead:
            ids = {id(n) for n in dead}
            for n in dead:
                n.outputs.clear()
            self.graph.nodes = [n for n in self.graph.nodes if id(n) not in ids]
        return masks


def build_depgraph(model: Model, shapes: dict[str, TensorType] | None = None) -> DepGraph:
    """Analyse the channel dependencies of ``model``'s main graph.

    Args:
        model: the model (not modified).
        shapes: :func:`~onnxpress.graph.infer_shapes` of the model, if at hand.

    Returns:
        A :class:`DepGraph`.
    """
    return DepGraph(model, shapes)
