"""Hypothesis strategies for random, valid ONNX models (opset 17, IR 8).

:func:`onnx_models` grows a graph from a pool of typed, shaped values. Every value
carries, for each dimension, its concrete size under each of the ``SIZES``
assignments of the symbolic dimensions that the tests run (batch ``N`` and a
spatial ``S``), so every op added is valid for all of them; a dimension is
declared static, by its symbol, or unnamed (derived, e.g. ``S + 2``).

Ops: Conv, ConvTranspose, Gemm, MatMul, BatchNormalization; Add, Mul, Sub, Div,
Relu, Sigmoid, Clip, Concat, Split, Reshape, Flatten, Transpose; Slice, Pad, Identity,
Cast, Constant, Shape + Gather (and Greater, for If conditions); If whose branches
read outer-scope values (nested up to depth 2).

Planted for the passes: constants as initializers, ``Constant`` nodes
(``value``, ``value_float(s)``, ``value_int(s)``) and foldable exact constant
expressions; shared and byte-identical initializers; overridable initializers
(graph inputs with a default, fed a different value at one size); exact no-ops
(Mul/Div by ones, Add/Sub zeros, identity Transpose, Reshape to the same shape,
full Slice, zero Pad, Cast to the same type); BatchNorm / per-channel Mul and Add
after Conv, ConvTranspose, Gemm and MatMul; duplicate subexpressions; dead nodes
and unused Split outputs; decomposed HardSwish (``x * Clip(x + 3, 0, 6)`` then ``/ 6`` or ``* 1/6``, or
the scale first; either operand order; an intermediate sometimes read again);
Cast round trips (f32->f16->f32, f32->f64->f32,
f32->int32->f32, and the exact f16->f32->f16, int32->int64->int32 inside them);
Reshape targets computed from ``Shape``; If conditions that are graph inputs,
constants, or ``Shape``-derived (true at one size only).

Numbers stay finite and moderate: weights are scaled by 1/sqrt(fan-in), Div
divides by constants of magnitude >= 0.5 or by dimension sizes, and a rough
magnitude estimate gates products of activations. Casts that round
(f32->f16, f32->int32) only read *exact* values: values computed from the inputs
without any Conv/ConvTranspose/Gemm/MatMul/BatchNorm upstream, whose bits no
lossless rewrite may change (folding BatchNorm into a Conv changes the last bit
of its output, which a later rounding Cast could amplify into a false alarm).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

__all__ = ["FuzzModel", "onnx_models", "SIZES", "OPSET", "IR_VERSION", "OPS"]

OPSET = 17
IR_VERSION = 8
SIZES = 2  # assignments of the symbolic dims that every model is valid (and tested) for
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
F32, F16, F64, I32, I64, BOOL = TP.FLOAT, TP.FLOAT16, TP.DOUBLE, TP.INT32, TP.INT64, TP.BOOL
_NP = {F32: np.float32, F16: np.float16, F64: np.float64, I32: np.int32, I64: np.int64, BOOL: np.bool_}

# Op generators, simplest first (hypothesis shrinks toward the front).
OPS = (
    "unary",
    "identity",
    "binary",
    "transpose",
    "reshape",
    "flatten",
    "slice",
    "pad",
    "concat",
    "split",
    "cast",
    "shape_scale",
    "conv",
    "conv_transpose",
    "gemm",
    "matmul",
    "batchnorm",
    "dup",
    "if",
    "hardswish",
)


# --------------------------------------------------------------------- values
@dataclass(frozen=True)
class Dim:
    """One dimension: its size under each tested assignment, and its declaration
    (an int when static, a symbol such as ``"N"``, or None when derived)."""

    vals: tuple[int, ...]
    label: int | str | None

    @property
    def static(self) -> bool:
        return len(set(self.vals)) == 1

    @property
    def value(self) -> int:
        assert self.static
        return self.vals[0]


def sdim(d: int) -> Dim:
    return Dim((int(d),) * SIZES, int(d))


def ddim(vals, like: Dim | None = None) -> Dim:
    """A dim of sizes ``vals``: static if constant, ``like`` if it has these sizes."""
    vals = tuple(int(v) for v in vals)
    if len(set(vals)) == 1:
        return sdim(vals[0])
    if like is not None and like.vals == vals:
        return like
    return Dim(vals, None)


@dataclass(eq=False)
class Val:
    """A tensor of the graph under construction."""

    name: str
    dtype: int
    dims: tuple[Dim, ...]
    exact: bool = True  # no BN-foldable linear layer upstream (see the module docstring)
    mag: float = 1.0  # rough typical magnitude
    uses: int = 0
    capturable: bool = True  # may be read by a subgraph (see _Builder.op_cast)

    @property
    def rank(self) -> int:
        return len(self.dims)

    def shape(self, k: int) -> tuple[int, ...]:
        return tuple(d.vals[k] for d in self.dims)

    def numel(self) -> tuple[int, ...]:
        return tuple(int(np.prod(self.shape(k), dtype=np.int64)) for k in range(SIZES))

    def value_info(self) -> onnx.ValueInfoProto:
        return h.make_tensor_value_info(self.name, self.dtype, [d.label for d in self.dims])


def broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...] | None:
    """Numpy broadcasting of two dim tuples (None when not valid at every size)."""
    n = max(len(a), len(b))
    a = (sdim(1),) * (n - len(a)) + tuple(a)
    b = (sdim(1),) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x.vals == y.vals:
            out.append(x if x.label is not None else y)
        elif y.static and y.value == 1:
            out.append(x)
        elif x.static and x.value == 1:
            out.append(y)
        else:
            return None
    return tuple(out)


# --------------------------------------------------------------------- result
@dataclass
class FuzzModel:
    """A generated model and one feed dict per tested size assignment."""

    proto: onnx.ModelProto
    feeds: list[dict[str, np.ndarray]]
    ops: tuple[str, ...] = ()

    def __repr__(self) -> str:
        try:
            text = onnx.printer.to_text(self.proto)
        except Exception:  # the printer rejects some models; fall back to the proto
            text = str(self.proto)
        shapes = [{k: (v.shape, str(v.dtype)) for k, v in f.items()} for f in self.feeds]
        return f"FuzzModel(feeds={shapes})\n{text}"


@dataclass
class _Root:
    """State shared by the main graph and all subgraph builders."""

    counter: itertools.count = field(default_factory=itertools.count)
    inputs: list[onnx.ValueInfoProto] = field(default_factory=list)
    feeds: list[dict[str, np.ndarray]] = field(default_factory=lambda: [{} for _ in range(SIZES)])
    inits: list[onnx.TensorProto] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)
    vals: dict[str, Val] = field(default_factory=dict)
    cast_outputs: set[str] = field(default_factory=set)
    N: Dim | None = None
    S: Dim | None = None


class _Builder:
    def __init__(self, draw, rng: np.random.Generator, root: _Root, parent: "_Builder | None" = None) -> None:
        self.draw = draw
        self.rng = rng
        self.root = root
        self.parent = parent
        self.depth = 0 if parent is None else parent.depth + 1
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = root.inits if parent is None else []
        # float32 activations; outer ones as captures
        self.pool: list[Val] = [v for v in parent.pool if v.capturable] if parent else []
        self.others: list[Val] = list(parent.others) if parent else []  # other dtypes
        self.local: set[str] = set()
        self.consts: list[tuple[np.ndarray, str]] = []  # constants visible here (and below)
        self.produced: dict[str, onnx.NodeProto] = {}

    # ------------------------------------------------------------ drawing
    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, seq):
        return self.draw(st.sampled_from(list(seq)))

    def chance(self, p: float) -> bool:
        """True with probability ~p; shrinks to False."""
        return self.draw(st.integers(0, 99)) >= 100 - round(100 * p)

    def fresh(self, prefix: str) -> str:
        return f"{prefix}_{next(self.root.counter)}"

    def pick(self, pred: Callable[[Val], bool] = lambda v: True) -> Val | None:
        """An activation of the pool, recent ones first (shrinks to the newest)."""
        cands = [v for v in self.pool if pred(v)]
        if not cands:
            return None
        return cands[-1 - self.integer(0, len(cands) - 1)]

    # ------------------------------------------------------------ building
    def node(self, op: str, inputs: list[str], n_out: int = 1, prefix: str | None = None, **attrs) -> list[str]:
        outs = [self.fresh((prefix or op.lower())) for _ in range(n_out)]
        node = h.make_node(op, inputs, outs, name=self.fresh(f"n{op}"), **attrs)
        self.nodes.append(node)
        self.root.ops.append(op)
        if op == "Cast":
            self.root.cast_outputs.update(outs)
        for i in inputs:
            v = self.root.vals.get(i)
            if v is not None:
                v.uses += 1
        for o in outs:
            self.local.add(o)
            self.produced[o] = node
        return outs

    def val(self, name: str, dtype: int, dims, exact: bool, mag: float, pool: bool = True) -> Val:
        v = Val(name, dtype, tuple(dims), exact, float(mag))
        self.root.vals[name] = v
        if pool:
            (self.pool if dtype == F32 else self.others).append(v)
        return v

    def visible_consts(self):
        b = self
        while b is not None:
            yield from b.consts
            b = b.parent

    def const(self, arr: np.ndarray, depth: int = 0) -> str:
        """A name holding ``arr`` exactly: an initializer (here or in the main graph),
        a Constant node, a reused equal constant, or a foldable exact expression."""
        arr = np.asarray(arr)
        kinds = ["init", "node", "reuse", "expr"] if depth < 2 else ["init", "node", "reuse"]
        kind = self.choice(kinds)
        if kind == "reuse":
            for other, name in self.visible_consts():
                if other.dtype == arr.dtype and other.shape == arr.shape and np.array_equal(other, arr):
                    return name
            kind = "init"
        if kind == "expr" and arr.size:
            name = self._const_expr(arr, depth)
            if name is not None:
                self.consts.append((arr, name))
                return name
            kind = "node"
        if kind == "node":
            name = self.fresh("c")
            if arr.dtype == np.float32 and arr.ndim <= 1 and self.chance(0.5):
                key = "value_float" if arr.ndim == 0 else "value_floats"
                value = float(arr) if arr.ndim == 0 else [float(v) for v in arr]
            elif arr.dtype == np.int64 and arr.ndim <= 1 and self.chance(0.5):
                key = "value_int" if arr.ndim == 0 else "value_ints"
                value = int(arr) if arr.ndim == 0 else [int(v) for v in arr]
            else:
                key, value = "value", nh.from_array(arr, self.fresh("t"))
            node = h.make_node("Constant", [], [name], name=self.fresh("nConstant"), **{key: value})
            self.nodes.append(node)
            self.root.ops.append("Constant")
            self.local.add(name)
            self.produced[name] = node
            self.consts.append((arr, name))
            return name
        name = self.fresh("w")
        # In a subgraph, a weight may live in the main graph (an outer-scope capture).
        target = self.root_builder if (self.parent is not None and self.chance(0.5)) else self
        target.inits.append(nh.from_array(arr, name))
        target.consts.append((arr, name))
        return name

    @property
    def root_builder(self) -> "_Builder":
        b = self
        while b.parent is not None:
            b = b.parent
        return b

    def _const_expr(self, arr: np.ndarray, depth: int) -> str | None:
        """Ops over constants that compute exactly ``arr`` (fold-constants food)."""
        d = depth + 1
        is_float = arr.dtype.kind == "f"
        forms = ["identity"] if arr.dtype == np.bool_ else ["identity", "add0", "mul1"]
        if arr.ndim >= 2:
            forms.append("transpose")
        if arr.ndim >= 1:
            forms.append("reshape")
            if arr.shape[-1] >= 2:
                forms.append("concat")
        if is_float:
            forms += ["cast", "scale2", "neg_sub"]
            if np.all(arr >= 0):
                forms.append("relu")
        elif arr.dtype == np.int64 and arr.min() >= -(2**31) and arr.max() < 2**31:  # not np.abs: INT64_MIN
            forms.append("cast")
        form = self.choice(forms)
        if form == "identity":
            return self.node("Identity", [self.const(arr, d)], prefix="ce")[0]
        if form == "add0":
            return self.node("Add", [self.const(arr, d), self.const(np.zeros((), arr.dtype), d)], prefix="ce")[0]
        if form == "mul1":
            return self.node("Mul", [self.const(np.ones((), arr.dtype), d), self.const(arr, d)], prefix="ce")[0]
        if form == "transpose":
            perm = list(self.draw(st.permutations(range(arr.ndim))))
            src = np.ascontiguousarray(arr.transpose(np.argsort(perm)))
            return self.node("Transpose", [self.const(src, d)], prefix="ce", perm=perm)[0]
        if form == "reshape":
            shape = np.array(arr.shape, dtype=np.int64)
            return self.node("Reshape", [self.const(arr.reshape(-1), d), self.const(shape, d)], prefix="ce")[0]
        if form == "concat":
            k = self.integer(1, arr.shape[-1] - 1)
            a, b = np.ascontiguousarray(arr[..., :k]), np.ascontiguousarray(arr[..., k:])
            return self.node("Concat", [self.const(a, d), self.const(b, d)], prefix="ce", axis=-1)[0]
        if form == "cast":
            if is_float:
                return self.node("Cast", [self.const(arr.astype(np.float64), d)], prefix="ce", to=F32)[0]
            return self.node("Cast", [self.const(arr.astype(np.int32), d)], prefix="ce", to=I64)[0]
        if form == "scale2":
            half = (arr / 2).astype(arr.dtype)
            if not np.array_equal(half * arr.dtype.type(2), arr):
                return None
            return self.node("Mul", [self.const(half, d), self.const(np.array(2, arr.dtype), d)], prefix="ce")[0]
        if form == "neg_sub":
            return self.node("Sub", [self.const(np.zeros_like(arr), d), self.const(-arr, d)], prefix="ce")[0]
        if form == "relu":
            return self.node("Relu", [self.const(arr, d)], prefix="ce")[0]
        return None

    def weight(self, shape, fan_in: int) -> str:
        w = (self.rng.standard_normal(shape) / math.sqrt(max(1, fan_in))).astype(np.float32)
        if self.chance(0.05):
            # An overridable initializer (a graph input with a default value), fed
            # another value at the last size: never a constant for the passes.
            name = self.fresh("wover")
            self.root.inits.append(nh.from_array(w, name))
            self.root.inputs.append(h.make_tensor_value_info(name, F32, list(w.shape)))
            alt = self.rng.standard_normal(shape) / math.sqrt(max(1, fan_in))
            self.root.feeds[SIZES - 1][name] = alt.astype(np.float32)
            return name
        if self.chance(0.6):  # most exported weights are initializers
            name = self.fresh("w")
            self.inits.append(nh.from_array(w, name))
            self.consts.append((w, name))
            return name
        return self.const(w)

    def param(self, arr: np.ndarray) -> str:
        """A layer parameter: an initializer of this graph more often than not."""
        if self.chance(0.6):
            name = self.fresh("p")
            self.inits.append(nh.from_array(arr, name))
            self.consts.append((arr, name))
            return name
        return self.const(arr)

    def ints(self, values) -> str:
        return self.const(np.array(values, dtype=np.int64))

    # ------------------------------------------------------------------ run
    def grow(self, steps: int) -> None:
        for _ in range(steps):
            op = self.choice(OPS)
            if not getattr(self, f"op_{op}")():
                self.op_unary()

    # ------------------------------------------------------------------ ops
    def op_unary(self) -> bool:
        x = self.pick()
        op = self.choice(["Relu", "Sigmoid"])
        y = self.node(op, [x.name])[0]
        self.val(y, F32, x.dims, x.exact, x.mag if op == "Relu" else 1.0)
        return True

    def op_identity(self) -> bool:
        x = self.pick()
        y = self.node("Identity", [x.name])[0]
        self.val(y, F32, x.dims, x.exact, x.mag)
        return True

    def _const_operand(self, x: Val, op: str) -> tuple[np.ndarray, str]:
        """A constant shape broadcastable against ``x`` and a value for ``op``."""
        forms = ["scalar", "one", "lead1", "bigger"]
        if x.dims[-1].static:
            forms.append("last")
        if x.rank >= 2 and x.dims[1].static:
            forms.append("channel")
        forms.append("full")
        form = self.choice(forms)
        static = [d.value if d.static else 1 for d in x.dims]
        shape = {
            "scalar": (),
            "one": (1,),
            "lead1": (1,) * x.rank,
            "bigger": (1,) + tuple(static),
            "last": (static[-1],),
            "channel": (static[1],) + (1,) * (x.rank - 2) if x.rank >= 2 else (),
            "full": tuple(static),
        }[form]
        neutral = self.chance(0.4)
        if neutral:
            arr = np.full(shape, 1.0 if op in ("Mul", "Div") else 0.0, np.float32)
        elif op == "Div":
            arr = self.rng.uniform(0.5, 2.0, shape) * self.rng.choice([-1.0, 1.0], shape)
        else:
            arr = self.rng.standard_normal(shape)
        return np.asarray(arr, dtype=np.float32), form

    def op_binary(self) -> bool:
        op = self.choice(["Add", "Mul", "Sub", "Div"])
        x = self.pick()
        if op != "Div" and self.chance(0.4):
            limit = 50.0
            y = self.pick(
                lambda v: broadcast(x.dims, v.dims) is not None
                and (op != "Mul" or v.mag * x.mag <= limit)
                and len(broadcast(x.dims, v.dims)) == max(x.rank, v.rank)
            )
            if y is not None:
                dims = broadcast(x.dims, y.dims)
                a, b = (x, y) if self.chance(0.5) else (y, x)
                out = self.node(op, [a.name, b.name])[0]
                mag = x.mag * y.mag if op == "Mul" else x.mag + y.mag
                self.val(out, F32, dims, x.exact and y.exact, mag)
                return True
        arr, _ = self._const_operand(x, op)
        c = self.const(arr)
        cdims = tuple(sdim(s) for s in arr.shape)
        dims = broadcast(x.dims, cdims)
        left = op != "Div" and self.chance(0.3)
        out = self.node(op, [c, x.name] if left else [x.name, c])[0]
        cmag = float(np.abs(arr).max()) if arr.size else 0.0
        if op == "Mul":
            mag = x.mag * max(cmag, 1e-3)
        elif op == "Div":
            mag = x.mag * 2.0
        else:
            mag = x.mag + cmag
        self.val(out, F32, dims, x.exact, mag)
        return True

    def op_transpose(self) -> bool:
        x = self.pick(lambda v: v.rank >= 1)
        perm = list(self.draw(st.permutations(range(x.rank))))
        if self.chance(0.2):  # no perm attribute: reverse the axes
            perm = list(reversed(range(x.rank)))
            y = self.node("Transpose", [x.name])[0]
        else:
            y = self.node("Transpose", [x.name], perm=perm)[0]
        dims = tuple(x.dims[p] for p in perm)
        v = self.val(y, F32, dims, x.exact, x.mag)
        if self.chance(0.3):  # and back
            inv = [int(i) for i in np.argsort(perm)]
            z = self.node("Transpose", [v.name], perm=inv)[0]
            self.val(z, F32, x.dims, x.exact, x.mag)
        return True

    def op_flatten(self) -> bool:
        x = self.pick(lambda v: v.rank >= 1)
        axis = self.integer(0, x.rank)
        a = [int(np.prod(x.shape(k)[:axis], dtype=np.int64)) for k in range(SIZES)]
        b = [int(np.prod(x.shape(k)[axis:], dtype=np.int64)) for k in range(SIZES)]
        d0 = ddim(a, x.dims[0] if axis == 1 else None)
        d1 = ddim(b, x.dims[-1] if axis == x.rank - 1 else None)
        attr = axis - x.rank if (0 < axis < x.rank and self.chance(0.3)) else axis
        y = self.node("Flatten", [x.name], axis=attr)[0]
        self.val(y, F32, (d0, d1), x.exact, x.mag)
        return True

    def op_reshape(self) -> bool:
        x = self.pick()
        y = self._reshape(x)
        while y is not None and self.chance(0.3):  # Reshape(Reshape(x)): simplify-reshape food
            y = self._reshape(y)
        return True

    def _reshape(self, x: Val) -> Val | None:
        mode = self.choice(["same", "merge", "factor", "shape_of", "gather"])
        attrs = {}
        if mode == "same":
            target = [self.choice([d.value, 0]) if d.static else 0 for d in x.dims]
            if x.rank and self.chance(0.4):
                target[self.integer(0, x.rank - 1)] = -1
            if 0 not in target and self.chance(0.3):
                attrs["allowzero"] = 1
            y = self.node("Reshape", [x.name, self.ints(target)], **attrs)[0]
            v = self.val(y, F32, x.dims, x.exact, x.mag)
            return v
        if mode == "shape_of":
            z = self.pick(lambda v: v.numel() == x.numel())
            shape = self.node("Shape", [z.name])[0]
            y = self.node("Reshape", [x.name, shape])[0]
            v = self.val(y, F32, z.dims, x.exact, x.mag)
            return v
        if mode == "gather":
            k = self.integer(0, x.rank - 1) if x.rank else 0
            pieces = []
            if k:
                how = self.choice(["shape_attr", "gather", "slice"])
                if how == "shape_attr":
                    pieces.append(self.node("Shape", [x.name], start=0, end=k)[0])
                elif how == "gather":
                    s = self.node("Shape", [x.name])[0]
                    pieces.append(self.node("Gather", [s, self.ints(list(range(k)))], axis=0)[0])
                else:
                    s = self.node("Shape", [x.name])[0]
                    pieces.append(self.node("Slice", [s, self.ints([0]), self.ints([k])])[0])
            rest = [int(np.prod(x.shape(j)[k:], dtype=np.int64)) for j in range(SIZES)]
            rest_dim = ddim(rest, x.dims[k] if k == x.rank - 1 else None)
            tail = rest_dim.value if (rest_dim.static and self.chance(0.5)) else -1
            pieces.append(self.ints([tail]))
            target = self.node("Concat", pieces, axis=0)[0] if len(pieces) > 1 else pieces[0]
            y = self.node("Reshape", [x.name, target])[0]
            v = self.val(y, F32, tuple(x.dims[:k]) + (rest_dim,), x.exact, x.mag)
            return v
        if x.rank < 1:
            return None
        if mode == "merge":
            if x.rank < 2:
                return None
            i = self.integer(0, x.rank - 2)
            j = self.integer(i + 2, x.rank)
            merged = ddim([int(np.prod(x.shape(k)[i:j], dtype=np.int64)) for k in range(SIZES)])
            out_dims = tuple(x.dims[:i]) + (merged,) + tuple(x.dims[j:])
            copy_upto = i
        else:  # factor a static dim
            idx = [i for i, d in enumerate(x.dims) if d.static and d.value >= 4 and _factor(d.value)]
            if not idx:
                return None
            i = self.choice(idx)
            a = self.choice(_factor(x.dims[i].value))
            out_dims = tuple(x.dims[:i]) + (sdim(a), sdim(x.dims[i].value // a)) + tuple(x.dims[i + 1 :])
            copy_upto = i
        target: list[int | None] = []
        for p, d in enumerate(out_dims):
            if p < copy_upto and not d.static:
                target.append(0)
            elif p < copy_upto:
                target.append(self.choice([d.value, 0]))
            else:
                target.append(d.value if d.static else None)
        unknown = [p for p, t in enumerate(target) if t is None]
        if len(unknown) > 1:
            return None
        if unknown:
            target[unknown[0]] = -1
        elif self.chance(0.3):
            p = self.integer(0, len(target) - 1)
            target[p] = -1
        y = self.node("Reshape", [x.name, self.ints(target)])[0]
        v = self.val(y, F32, out_dims, x.exact, x.mag)
        return v

    def op_slice(self) -> bool:
        x = self.pick(lambda v: v.rank >= 1)
        axes = self.draw(st.lists(st.integers(0, x.rank - 1), min_size=1, max_size=min(2, x.rank), unique=True))
        starts, ends, steps = [], [], []
        dims = list(x.dims)
        for ax in axes:
            d = x.dims[ax]
            if d.static:
                n = d.value
                mode = self.choice(["full", "range", "step", "neg"])
                if mode == "full":
                    s, e, st_ = 0, self.choice([n, INT64_MAX, n + 5]), 1
                elif mode == "range":
                    s = self.integer(0, n - 1)
                    e = self.integer(s + 1, n)
                    if self.chance(0.3):
                        s -= n
                    if self.chance(0.3):
                        e -= n
                    st_ = 1
                elif mode == "step":
                    st_ = self.choice([2, 3])
                    s, e = self.integer(0, n - 1), self.choice([n, INT64_MAX])
                else:
                    st_ = self.choice([-1, -2])
                    s = self.choice([-1, n - 1, INT64_MAX])
                    e = self.choice([INT64_MIN, -n - 1, 0])
            else:
                mode = self.choice(["full", "drop_first", "drop_last", "reverse"])
                if mode in ("drop_first", "drop_last") and min(d.vals) < 2:
                    mode = "full"
                s, e, st_ = {
                    "full": (0, self.choice([INT64_MAX, 2**31 - 1]), 1),
                    "drop_first": (1, INT64_MAX, 1),
                    "drop_last": (0, -1, 1),
                    "reverse": (-1, INT64_MIN, -1),
                }[mode]
            lens = [len(range(*slice(s, e, st_).indices(d.vals[k]))) for k in range(SIZES)]
            if min(lens) < 1:
                return False
            dims[ax] = ddim(lens, d)
            starts.append(s)
            ends.append(e)
            steps.append(st_)
        inputs = [x.name, self.ints(starts), self.ints(ends)]
        default_axes = list(axes) == list(range(len(axes)))
        if not (default_axes and all(s == 1 for s in steps) and self.chance(0.4)):
            repr_axes = [a - x.rank if self.chance(0.3) else a for a in axes]
            inputs.append(self.ints(repr_axes))
            if not (all(s == 1 for s in steps) and self.chance(0.4)):
                inputs.append(self.ints(steps))
        y = self.node("Slice", inputs)[0]
        self.val(y, F32, dims, x.exact, x.mag)
        return True

    def op_pad(self) -> bool:
        x = self.pick(lambda v: v.rank >= 1)
        mode = self.choice(["constant", "edge", "reflect"])
        zero = self.chance(0.3)
        begins, ends, dims = [], [], []
        for d in x.dims:
            pb = pe = 0
            if not zero:
                opts = [0, 0, 1, 2] + ([-1] if mode == "constant" else [])
                pb, pe = self.choice(opts), self.choice(opts)
                if mode == "reflect" and max(pb, pe) > min(d.vals) - 1:
                    pb = pe = 0
                if min(d.vals) + pb + pe < 1:
                    pb = pe = 0
            begins.append(pb)
            ends.append(pe)
            dims.append(ddim([v + pb + pe for v in d.vals], d))
        inputs = [x.name, self.ints(begins + ends)]
        mag = x.mag
        if mode == "constant" and self.chance(0.5):
            cv = np.float32(self.choice([0.0, 1.0, -0.5]))
            inputs.append(self.const(np.array(cv, np.float32)))
            mag = max(mag, abs(float(cv)))
        y = self.node("Pad", inputs, mode=mode)[0]
        self.val(y, F32, dims, x.exact, mag)
        return True

    def op_concat(self) -> bool:
        x = self.pick(lambda v: v.rank >= 1)
        axis = self.integer(0, x.rank - 1)

        def compatible(v: Val) -> bool:
            return v.rank == x.rank and all(
                v.dims[i].vals == x.dims[i].vals for i in range(x.rank) if i != axis
            )

        others = [self.pick(compatible) for _ in range(self.integer(1, 2))]
        ins = [x] + others
        if self.chance(0.5):
            ins = ins[::-1]
        total = [sum(v.dims[axis].vals[k] for v in ins) for k in range(SIZES)]
        dims = list(x.dims)
        dims[axis] = ddim(total)
        attr = axis - x.rank if self.chance(0.3) else axis
        y = self.node("Concat", [v.name for v in ins], axis=attr)[0]
        self.val(y, F32, dims, all(v.exact for v in ins), max(v.mag for v in ins))
        return True

    def op_split(self) -> bool:
        x = self.pick(lambda v: any(d.static and d.value >= 2 for d in v.dims))
        if x is None:
            return False
        axis = self.choice([i for i, d in enumerate(x.dims) if d.static and d.value >= 2])
        n = x.dims[axis].value
        parts = self.integer(2, min(3, n))
        if n % parts == 0 and self.chance(0.4):
            sizes = [n // parts] * parts
            inputs = [x.name]
        else:
            cuts = sorted(self.draw(st.lists(st.integers(1, n - 1), min_size=parts - 1, max_size=parts - 1, unique=True)))
            sizes = [b - a for a, b in zip([0] + cuts, cuts + [n])]
            inputs = [x.name, self.ints(sizes)]
        attr = axis - x.rank if self.chance(0.3) else axis
        outs = self.node("Split", inputs, n_out=len(sizes), axis=attr)
        for o, s in zip(outs, sizes):
            dims = list(x.dims)
            dims[axis] = sdim(s)
            self.val(o, F32, dims, x.exact, x.mag)
        return True

    def op_cast(self) -> bool:
        kind = self.choice(["f64", "same", "f16", "i32", "f16_exact_rt", "i32_exact_rt"])
        needs_exact = kind in ("f16", "i32", "f16_exact_rt", "i32_exact_rt")
        x = self.pick(lambda v: v.exact and v.mag <= 1000) if needs_exact else self.pick()
        if x is None:
            kind, x = "f64", self.pick()
        chain = {
            "f64": [F64, F32],
            "same": [F32],
            "f16": [F16, F32],
            "i32": [I32, F32],
            "f16_exact_rt": [F16, F32, F16, F32],
            "i32_exact_rt": [I32, I64, I32, F32],
        }[kind]
        cur = x.name
        for to in chain:
            cur = self.node("Cast", [cur], to=to)[0]
            if to != F32:
                self.val(cur, to, x.dims, x.exact, x.mag)
        v = self.val(cur, F32, x.dims, x.exact, x.mag)
        # onnxruntime 1.32 bug: the output of a Cast of a Cast (f32->f64->f32,
        # f32->f32->f32) read inside an If branch arrives there as null ("Missing
        # Input" / "Trying to get a TensorSeq, but got: (null)"), even with graph
        # optimizations disabled: its RemoveDuplicateCastTransformer drops the pair
        # without rewiring the subgraph's implicit input. Keep them out of subgraphs.
        v.capturable = len(chain) == 1 and x.name not in self.root.cast_outputs
        return True

    def op_shape_scale(self) -> bool:
        z = self.pick(lambda v: v.rank >= 1)
        i = self.integer(0, z.rank - 1)
        scalar = self.chance(0.5)
        s = self.node("Shape", [z.name])[0]
        idx = self.const(np.array(i if scalar else [i], np.int64))
        g = self.node("Gather", [s, idx], axis=0)[0]
        c = self.node("Cast", [g], to=F32)[0]
        self.val(s, I64, (sdim(z.rank),), True, 1.0)  # candidates for graph outputs
        self.val(g, I64, () if scalar else (sdim(1),), True, 1.0)
        dim = max(z.dims[i].vals)
        x = self.pick()
        op = self.choice(["Div", "Add", "Mul"])
        if op == "Mul" and x.mag * dim > 100:
            op = "Div"
        y = self.node(op, [x.name, c])[0]
        dims = x.dims if scalar or x.rank >= 1 else (sdim(1),)
        mag = x.mag * dim if op == "Mul" else (x.mag + dim if op == "Add" else x.mag)
        self.val(y, F32, dims, x.exact, mag)
        return True

    # -------------------------------------------------------- linear layers
    def _post_linear(self, y: Val, kind: str) -> Val:
        """Often a BatchNorm or a per-channel Mul/Add after a linear layer."""
        forms = ["none", "bn", "bn_relu"]
        if kind == "conv":
            forms += ["mul", "add"]
        if kind in ("gemm", "matmul") and y.rank != 2:
            forms = ["none"]
        form = self.choice(forms)
        if form != "none" and self.chance(0.15):
            self.pool.append(y)  # a second reader: the fold must be refused
        if form == "none":
            self.pool.append(y)
            return y
        c = y.dims[1].value
        if form in ("bn", "bn_relu"):
            out = self._bn(y)
            if form == "bn_relu":
                r = self.node("Relu", [out.name])[0]
                out = self.val(r, F32, out.dims, False, out.mag)
            return out
        shape = self.choice(
            [(c,) + (1,) * (y.rank - 2), (1, c) + (1,) * (y.rank - 2), (), (1,) * y.rank]
        )
        if form == "mul":
            arr = np.ones(shape, np.float32) if self.chance(0.2) else self.rng.uniform(0.5, 1.5, shape) * self.rng.choice([-1, 1], shape)
        else:
            arr = self.rng.standard_normal(shape)
        op = "Mul" if form == "mul" else "Add"
        cname = self.const(np.asarray(arr, np.float32))
        ins = [y.name, cname] if self.chance(0.7) else [cname, y.name]
        z = self.node(op, ins)[0]
        return self.val(z, F32, broadcast(y.dims, tuple(sdim(s) for s in shape)), False, y.mag * 1.5 + 1)

    def _bn(self, x: Val) -> Val:
        c = x.dims[1].value
        rng = self.rng
        params = [
            rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c),
            rng.uniform(-1, 1, c),
            rng.uniform(-1, 1, c),
            rng.uniform(0.5, 2.0, c),
        ]
        names = [self.param(p.astype(np.float32)) for p in params]
        eps = self.choice([1e-5, 1e-3])
        y = self.node("BatchNormalization", [x.name] + names, epsilon=eps)[0]
        return self.val(y, F32, x.dims, False, x.mag * 1.5 + 1)

    def op_batchnorm(self) -> bool:
        x = self.pick(lambda v: v.rank >= 2 and v.dims[1].static)
        if x is None:
            return False
        self._bn(x)
        return True

    def op_conv(self) -> bool:
        x = self.pick(lambda v: v.rank in (3, 4) and v.dims[1].static)
        if x is None:
            return False
        c = x.dims[1].value
        nsp = x.rank - 2
        group = self.choice([1, c]) if c > 1 else 1
        m = c * self.integer(1, 2) if group > 1 else self.integer(1, 6)
        ks, strides, dil, pads_b, pads_e, spatial = [], [], [], [], [], []
        for d in x.dims[2:]:
            k, s, dl = self.integer(1, 3), self.choice([1, 1, 2]), self.choice([1, 1, 2])
            pb, pe = self.integer(0, 1), self.integer(0, 1)
            outs = [(v + pb + pe - dl * (k - 1) - 1) // s + 1 for v in d.vals]
            if min(outs) < 1:
                k, s, dl, pb, pe = 1, 1, 1, 0, 0
                outs = list(d.vals)
            ks.append(k), strides.append(s), dil.append(dl), pads_b.append(pb), pads_e.append(pe)
            spatial.append(ddim(outs, d))
        fan_in = (c // group) * int(np.prod(ks))
        inputs = [x.name, self.weight((m, c // group, *ks), fan_in)]
        if self.chance(0.5):
            inputs.append(self.const((self.rng.standard_normal(m) * 0.1).astype(np.float32)))
        attrs = {"strides": strides, "pads": pads_b + pads_e, "dilations": dil, "group": group}
        if self.chance(0.5):
            attrs["kernel_shape"] = ks
        y = self.node("Conv", inputs, **attrs)[0]
        v = self.val(y, F32, (x.dims[0], sdim(m), *spatial), False, x.mag * 1.5 + 0.5, pool=False)
        self._post_linear(v, "conv")
        return True

    def op_conv_transpose(self) -> bool:
        x = self.pick(lambda v: v.rank in (3, 4) and v.dims[1].static)
        if x is None:
            return False
        c = x.dims[1].value
        group = self.choice([1, c]) if c > 1 else 1
        per = self.integer(1, 3)
        ks, strides, pads_b, pads_e, out_pad, spatial = [], [], [], [], [], []
        for d in x.dims[2:]:
            k, s = self.integer(1, 3), self.choice([1, 2])
            pb, pe = self.integer(0, min(1, k - 1)), self.integer(0, min(1, k - 1))
            op = self.integer(0, 1) if s == 2 else 0
            outs = [s * (v - 1) + op + (k - 1) + 1 - pb - pe for v in d.vals]
            if min(outs) < 1:
                k, s, pb, pe, op = 1, 1, 0, 0, 0
                outs = list(d.vals)
            ks.append(k), strides.append(s), pads_b.append(pb), pads_e.append(pe), out_pad.append(op)
            spatial.append(ddim(outs, d))
        fan_in = (c // group) * int(np.prod(ks))
        inputs = [x.name, self.weight((c, per, *ks), fan_in)]
        m = per * group
        if self.chance(0.5):
            inputs.append(self.const((self.rng.standard_normal(m) * 0.1).astype(np.float32)))
        attrs = {"strides": strides, "pads": pads_b + pads_e, "group": group}
        if any(out_pad):
            attrs["output_padding"] = out_pad
        if self.chance(0.5):
            attrs["kernel_shape"] = ks
        y = self.node("ConvTranspose", inputs, **attrs)[0]
        v = self.val(y, F32, (x.dims[0], sdim(m), *spatial), False, x.mag * 1.5 + 0.5, pool=False)
        self._post_linear(v, "conv")
        return True

    def op_gemm(self) -> bool:
        trans_a = self.chance(0.2)
        if trans_a:
            x = self.pick(lambda v: v.rank == 2 and v.dims[0].static)
        else:
            x = self.pick(lambda v: v.rank == 2 and v.dims[1].static)
        if x is None:
            return False
        k = x.dims[0].value if trans_a else x.dims[1].value
        rows = x.dims[1] if trans_a else x.dims[0]
        m = self.choice([1, 3, 4, 8, 16, 20])
        trans_b = self.chance(0.5)
        inputs = [x.name, self.weight((m, k) if trans_b else (k, m), k)]
        cform = self.choice(["none", "vec", "row", "scalar"] + (["full"] if rows.static else []))
        if cform != "none":
            shape = {"vec": (m,), "row": (1, m), "scalar": (), "full": (rows.value, m) if rows.static else ()}[cform]
            inputs.append(self.const((self.rng.standard_normal(shape) * 0.3).astype(np.float32)))
        attrs = {}
        if trans_a:
            attrs["transA"] = 1
        if trans_b:
            attrs["transB"] = 1
        if self.chance(0.3):
            attrs["alpha"] = self.choice([0.5, 1.5, 2.0])
        if self.chance(0.3):
            attrs["beta"] = self.choice([0.5, 1.5, 2.0])
        y = self.node("Gemm", inputs, **attrs)[0]
        v = self.val(y, F32, (rows, sdim(m)), False, x.mag * 2 + 1, pool=False)
        self._post_linear(v, "gemm")
        return True

    def op_matmul(self) -> bool:
        if self.chance(0.25):  # activation x activation: x @ x^T
            x = self.pick(lambda v: v.rank >= 2 and v.dims[-1].static and v.mag**2 * v.dims[-1].value <= 200)
            if x is None:
                return False
            perm = list(range(x.rank - 2)) + [x.rank - 1, x.rank - 2]
            xt = self.node("Transpose", [x.name], perm=perm)[0]
            y = self.node("MatMul", [x.name, xt])[0]
            dims = tuple(x.dims[:-1]) + (x.dims[-2],)
            self.val(y, F32, dims, False, x.mag**2 * x.dims[-1].value)
            return True
        x = self.pick(lambda v: v.rank >= 1 and v.dims[-1].static)
        if x is None:
            return False
        k = x.dims[-1].value
        m = self.choice([1, 3, 4, 8, 16, 20])
        y = self.node("MatMul", [x.name, self.weight((k, m), k)])[0]
        dims = tuple(x.dims[:-1]) + (sdim(m),)
        if x.rank == 1:
            dims = (sdim(m),)
        v = self.val(y, F32, dims, False, x.mag * 2 + 1, pool=False)
        if self.chance(0.5):  # bias Add
            shape = self.choice([(m,), (1, m), ()])
            b = self.const((self.rng.standard_normal(shape) * 0.3).astype(np.float32))
            z = self.node("Add", [v.name, b] if self.chance(0.7) else [b, v.name])[0]
            v = self.val(z, F32, broadcast(dims, tuple(sdim(s) for s in shape)), False, v.mag + 1, pool=False)
        self._post_linear(v, "matmul")
        return True

    def op_hardswish(self) -> bool:
        """x * Clip(x + 3, 0, 6) / 6 as exporters write it (fuse-hardswish food)."""
        x = self.pick()

        def scalar(v: float) -> str:
            arr = np.array([v] if x.rank >= 1 and self.chance(0.3) else v, np.float32)
            # Mostly plain (initializer, Constant node): a folded expression needs
            # fold-constants first, so the pass alone would refuse it.
            return self.const(arr, depth=2 if self.chance(0.8) else 0)

        def inter(name: str, mag: float) -> None:
            # Sometimes pooled: a later op may read it, and the fusion must be refused.
            self.val(name, F32, x.dims, x.exact, mag, pool=self.chance(0.15))

        def scale(t: str) -> str:
            if self.chance(0.5):
                return self.node("Div", [t, scalar(6.0)])[0]
            c = scalar(1.0 / 6.0)
            return self.node("Mul", [t, c] if self.chance(0.5) else [c, t])[0]

        def times_x(t: str) -> str:
            return self.node("Mul", [x.name, t] if self.chance(0.5) else [t, x.name])[0]

        c3 = scalar(3.0)
        a = self.node("Add", [x.name, c3] if self.chance(0.7) else [c3, x.name])[0]
        inter(a, x.mag + 3)
        k = self.node("Clip", [a, scalar(0.0), scalar(6.0)])[0]
        inter(k, 6.0)
        if self.chance(0.7):
            m = times_x(k)
            inter(m, 6 * x.mag)
            y = scale(m)
        else:
            s = scale(k)
            inter(s, 1.0)
            y = times_x(s)
        # Not exact: the fused form rounds differently in the last bit.
        self.val(y, F32, x.dims, False, x.mag)
        return True

    # ------------------------------------------------------------ structure
    def op_dup(self) -> bool:
        """Copy an earlier node (same op, inputs, attributes): CSE food."""
        cands = [
            n for n in self.nodes
            if n.op_type != "If" and all(o in self.root.vals for o in n.output)
        ]
        if not cands:
            return False
        src = cands[-1 - self.integer(0, len(cands) - 1)]
        outs = [self.fresh("dup") for _ in src.output]
        node = onnx.NodeProto()
        node.CopyFrom(src)
        node.name = self.fresh(f"n{src.op_type}")
        del node.output[:]
        node.output.extend(outs)
        self.nodes.append(node)
        self.root.ops.append(src.op_type)
        if src.op_type == "Cast":
            self.root.cast_outputs.update(outs)
        for i in src.input:
            if i in self.root.vals:
                self.root.vals[i].uses += 1
        new = []
        for o, so in zip(outs, src.output):
            v = self.root.vals[so]
            self.local.add(o)
            self.produced[o] = node
            new.append(self.val(o, v.dtype, v.dims, v.exact, v.mag))
            new[-1].capturable = v.capturable
        first, orig = new[0], self.root.vals[src.output[0]]
        if first.dtype == F32 and self.chance(0.5):
            op = self.choice(["Add", "Sub", "Mul"]) if first.mag <= 7 else self.choice(["Add", "Sub"])
            z = self.node(op, [orig.name, first.name])[0]
            mag = orig.mag * orig.mag if op == "Mul" else 2 * orig.mag
            self.val(z, F32, orig.dims, orig.exact, mag)
        return True

    def op_if(self) -> bool:
        if self.depth >= 2:
            return False
        targets = [self.pick()]
        if self.chance(0.3):
            targets.append(self.pick())
        cond = self._condition()
        branches = []
        for bname in ("then", "else"):
            sub = _Builder(self.draw, self.rng, self.root, parent=self)
            sub.grow(self.integer(0, 4))
            outs = []
            for t in targets:
                v = sub.pick(lambda v: v.dims == t.dims or tuple(d.vals for d in v.dims) == tuple(d.vals for d in t.dims))
                if self.chance(0.15) and all(d.static for d in t.dims):
                    # a branch returning a constant (lift-constants must keep it a node)
                    arr = (self.rng.standard_normal(t.shape(0)) * 0.5).astype(np.float32)
                    name = sub.fresh("bconst")
                    sub.nodes.append(h.make_node("Constant", [], [name], name=sub.fresh("nConstant"), value=nh.from_array(arr, sub.fresh("t"))))
                    v = sub.val(name, F32, t.dims, True, 1.0, pool=False)
                elif v.name not in sub.local or any(o.name == v.name for o in outs):
                    # onnxruntime rejects a branch returning an outer value directly,
                    # and fails on one value returned twice
                    name = sub.node("Identity", [v.name], prefix="bout")[0]
                    v = sub.val(name, F32, v.dims, v.exact, v.mag, pool=False)
                outs.append(v)
            graph = h.make_graph(
                sub.nodes,
                self.fresh(bname),
                [],
                [h.make_tensor_value_info(v.name, F32, [d.label for d in t.dims]) for v, t in zip(outs, targets)],
                initializer=sub.inits,
            )
            branches.append((graph, outs))
        (then_g, then_o), (else_g, else_o) = branches
        names = self.node("If", [cond], n_out=len(targets), then_branch=then_g, else_branch=else_g)
        for name, t, a, b in zip(names, targets, then_o, else_o):
            self.val(name, F32, t.dims, a.exact and b.exact, max(a.mag, b.mag))
        return True

    def _condition(self) -> str:
        kind = self.choice(["input", "const", "shape"])
        if kind == "shape":
            z = self.pick(lambda v: any(not d.static for d in v.dims))
            if z is not None:
                i = next(i for i, d in enumerate(z.dims) if not d.static)
                s = self.node("Shape", [z.name])[0]
                g = self.node("Gather", [s, self.const(np.array(i, np.int64))], axis=0)[0]
                thr = self.const(np.array(min(z.dims[i].vals), np.int64))
                return self.node("Greater", [g, thr])[0]  # true at the larger size only
            kind = "const"
        if kind == "const":
            return self.const(np.array(self.chance(0.5)) if self.chance(0.7) else np.array([self.chance(0.5)]))
        name = self.fresh("cond")
        self.root.inputs.append(h.make_tensor_value_info(name, BOOL, []))
        flip = self.chance(0.7)
        for k in range(SIZES):
            self.root.feeds[k][name] = np.array(bool(k % 2 == 0) if flip else self.chance(0.5))
        return name


def _tensor_type(arr: np.ndarray) -> int:
    return int(onnx.helper.np_dtype_to_tensor_dtype(arr.dtype))


def _factor(n: int) -> list[int]:
    return [a for a in range(2, n // 2 + 1) if n % a == 0]


# ----------------------------------------------------------------- strategy
@st.composite
def onnx_models(draw, max_steps: int = 20) -> FuzzModel:
    """A random valid ONNX model (opset 17, IR 8) and feeds at ``SIZES`` sizes of
    its dynamic dimensions."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    root = _Root()
    b = _Builder(draw, rng, root)

    n0 = b.integer(1, 3)
    root.N = Dim((n0, n0 + b.integer(1, 3)), "N") if not b.chance(0.25) else None
    s0 = b.integer(4, 6)
    root.S = Dim((s0, s0 + b.integer(1, 3)), "S") if b.chance(0.6) else None

    def batch() -> Dim:
        return root.N if root.N is not None else sdim(b.choice([1, 2]))

    def spatial(lo: int, hi: int) -> Dim:
        return root.S if (root.S is not None and b.chance(0.7)) else sdim(b.integer(lo, hi))

    first: tuple[Dim, ...] | None = None
    for i in range(b.integer(1, 2)):
        if first is not None and b.chance(0.5):
            dims = first
        else:
            rank = b.choice([4, 2, 3])
            if rank == 2:
                dims = (batch(), sdim(b.choice([4, 8, 16, 3, 32])))
            elif rank == 3:
                dims = (batch(), sdim(b.integer(1, 4)), spatial(3, 8))
            else:
                dims = (batch(), sdim(b.integer(1, 4)), sdim(b.integer(2, 5)), spatial(3, 6))
        first = first or dims
        v = b.val(f"x{i}", F32, dims, True, 4.0)
        root.inputs.append(v.value_info())
        for k in range(SIZES):
            root.feeds[k][v.name] = rng.standard_normal(v.shape(k)).astype(np.float32)

    if b.chance(0.15):  # an overridable initializer: a graph input with a default
        x = b.pool[0]
        arr = rng.standard_normal([d.value if d.static else 1 for d in x.dims]).astype(np.float32)
        name = "bias_override"
        root.inits.append(nh.from_array(arr, name))
        root.inputs.append(h.make_tensor_value_info(name, F32, list(arr.shape)))
        root.feeds[SIZES - 1][name] = rng.standard_normal(arr.shape).astype(np.float32)
        y = b.node("Add", [x.name, name])[0]
        b.val(y, F32, x.dims, x.exact, x.mag + 4)

    b.grow(b.integer(1, max_steps))

    for _ in range(b.integer(0, 2) if b.chance(0.25) else 0):
        # Initializers no node reads (remove-unused-initializers food); some are
        # byte-identical to used ones, some are overridable (graph inputs).
        if b.consts and b.chance(0.5):
            arr = b.consts[-1 - b.integer(0, len(b.consts) - 1)][0]
        else:
            arr = rng.standard_normal(b.choice([(), (4,), (2, 3)])).astype(np.float32)
        name = b.fresh("unused")
        root.inits.append(nh.from_array(arr, name))
        if b.chance(0.3):
            root.inputs.append(h.make_tensor_value_info(name, _tensor_type(arr), list(arr.shape)))

    # Graph outputs: 1-3 values, unread ones (sinks) and recent ones first.
    cands = [v for v in b.pool + b.others if not v.name.startswith("x") or b.chance(0.05)] or list(b.pool)
    cands.sort(key=lambda v: v.uses == 0)
    outputs: list[Val] = []
    for _ in range(b.integer(1, 3)):
        v = cands[-1 - b.integer(0, len(cands) - 1)]
        if v not in outputs:
            outputs.append(v)
    if b.chance(0.1):  # a constant graph output (a Constant node, an expression, an initializer)
        arr = rng.standard_normal(b.choice([(), (3,), (2, 2)])).astype(np.float32)
        name = b.const(arr)
        if all(v.name != name for v in outputs):
            outputs.append(Val(name, F32, tuple(sdim(d) for d in arr.shape)))
    graph = h.make_graph(
        b.nodes, "fuzz", root.inputs, [v.value_info() for v in outputs], initializer=root.inits
    )
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    return FuzzModel(proto, root.feeds, tuple(root.ops))
