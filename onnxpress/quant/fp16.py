"""Convert float32 weights and computation to float16 (lossy).

The model keeps its interface: graph inputs and outputs keep their dtypes, and a
``Cast`` is inserted where a float32 value meets float16 computation. Weights are
stored in float16, so the file shrinks to about half.

How a node is decided, in order:

1. **Schema.** A node of the default ONNX domain is converted when every type
   parameter of its schema (``onnx.defs``) that is bound to ``float32`` on the node
   also allows ``float16``. Only the inputs and outputs of those type parameters
   change dtype: inputs of a fixed type stay as they are (``Resize``'s ``scales``
   is ``tensor(float)`` in every opset and stays float32).
2. **Kept in float32** (they get float32 inputs, through a Cast when needed):
   op types of ``keep_fp32_ops`` (default :data:`DEFAULT_KEEP_FP32_OPS`: long
   reductions and sums that overflow float16's 65504 or lose precision when an
   fp16 kernel accumulates in fp16, as the ARM CPU EP does; ``Pow``/``Exp``/``Log``;
   ``Softmax``; ``Range``), nodes named in ``keep_fp32_nodes``, nodes of other
   domains and local-function calls, control flow (``If``/``Loop``/``Scan``: their
   bodies are converted, their interface stays float32), non-deterministic and
   dtype-attribute ops (``Random*``, ``Bernoulli``, ``Multinomial``, ``EyeLike``),
   nodes whose dtypes shape inference cannot tell, nodes computing on values
   derived from ``Shape``/``Size`` (float arithmetic on sizes must stay exact), and
   elementwise nodes reading a small constant (a hyperparameter such as an
   epsilon) whose nonzero values would flush to zero in float16.
3. **No pointless round trips.** A cheap node (not a Conv/MatMul/Gemm/norm/RNN
   and without a weight) whose float inputs all come from float32-kept nodes stays
   float32 (the ``+ eps`` between a float32 ``ReduceMean`` and ``Sqrt`` of a
   decomposed LayerNorm), so the Cast moves to where the fp16 path resumes.
4. **Casts and Constants follow their readers.** ``Cast(to=FLOAT)``, ``Constant``
   and ``ConstantOfShape`` become float16 when every reader is a converted node;
   a ``Cast(to=FLOAT)`` is then retargeted to ``FLOAT16``.
5. **Nodes without float outputs** (``Shape``, comparisons, ``ArgMax``, a Cast to
   int) read float16 directly when all their float inputs already arrive in
   float16 (exact: float16 -> float32 is exact), else keep float32 inputs.

Constants: a float32 initializer read only in float16 is converted in place
(finite values beyond +-65504 are clamped to +-65504 and counted); one read both
ways gets a float16 copy. Overridable initializers (graph inputs with a default)
are treated as inputs. Subgraphs: outer-scope values are cast inside the subgraph
that reads them; subgraph outputs are cast back to their original dtype.

onnxruntime CPU (1.32, x86-64), measured op by op on float16 models: every op whose
schema allows float16 loads and runs. Only a few (Identity, Round, Sign, Max, Min,
Clip, Shape ops, Gather/Scatter, LayerNormalization, Mod, Shrink) have native
float16 kernels; for the others onnxruntime inserts Casts itself and computes in
float32 (its ``InsertCastTransformer``), so a float16 model is *smaller*, not
faster, on x86 CPUs; on ARM CPUs with FP16 arithmetic MLAS computes in float16.
Ops whose schema lacks float16 (``Celu``, ``Range``, ...) stay float32 by rule 1.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph import Model, constant_array, iter_graphs
from ..passes._rewrite import ONNX_DOMAINS, all_graph_outputs
from ..passes.base import Context, Pass, PassResult, register

__all__ = ["ConvertFp16", "DEFAULT_KEEP_FP32_OPS"]

logger = logging.getLogger(__name__)

F32 = "float32"  # dtypes are handled by name: gs mixes numpy types, dtypes and ONNX enums
F16 = "float16"
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
FP16_TINY = 2.0**-24  # smallest positive subnormal; smaller magnitudes flush to zero

DEFAULT_KEEP_FP32_OPS: tuple[str, ...] = (
    # reductions and sums: overflow past 65504, or lose precision accumulating in fp16
    "ReduceSum",
    "ReduceMean",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceProd",
    "CumSum",
    "LpNormalization",
    "MeanVarianceNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "LRN",
    "LpPool",
    "GlobalLpPool",
    # range blow-up
    "Pow",
    "Exp",
    "Log",
    "Softmax",
    "LogSoftmax",
    # index/size arithmetic and non-deterministic ops
    "Range",
    "NonMaxSuppression",
    "RoiAlign",
)

# Never converted, whatever the options: dtype chosen by an attribute, or random.
_NEVER = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial", "EyeLike"}
)
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
# Ops worth running in fp16 even when all their inputs arrive in fp32 (rule 3).
_HEAVY = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "MatMul",
        "Gemm",
        "Einsum",
        "LSTM",
        "GRU",
        "RNN",
        "BatchNormalization",
        "LayerNormalization",
        "Attention",
    }
)
_SMALL = 64  # elements: a constant this small is a hyperparameter, not a weight
_FOLLOW = frozenset({"Cast", "Constant", "ConstantOfShape"})

# node kinds
_FIXED, _CONVERT, _FOLLOWER, _NOFLOAT = "fixed", "convert", "follow", "nofloat"


def _dtype(t: gs.Tensor, inferred: dict) -> str | None:
    """numpy dtype name of ``t`` (``"other"`` for a type numpy lacks); None when unknown."""
    raw = t.dtype
    if raw is None and not isinstance(t, gs.Constant):
        tt = inferred.get(t.name)
        raw = tt.dtype if tt is not None else None
    if raw is None:
        return None
    try:
        return np.dtype(raw).name
    except TypeError:
        return "other"


def _is_float(dt: str | None) -> bool:
    return dt in (F32, F16)


class _Schema:
    """Type parameter of each input/output position of a node, from ``onnx.defs``."""

    def __init__(self, node: gs.Node, opset: int) -> None:
        schema = onnx.defs.get_schema(node.op, opset, "")
        self.allowed = {tc.type_param_str: set(tc.allowed_type_strs) for tc in schema.type_constraints}

        def params(formals, n):
            out = []
            for i in range(n):
                if i < len(formals):
                    f = formals[i]
                elif formals and formals[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
                    f = formals[-1]
                else:
                    raise ValueError("more arguments than the schema has")
                out.append(f.type_str if f.type_str in self.allowed else None)
            return out

        self.inputs = params(schema.inputs, len(node.inputs))
        self.outputs = params(schema.outputs, len(node.outputs))


@register
@dataclass
class ConvertFp16(Pass):
    """Convert float32 weights and computation to float16, keeping the model's
    input and output dtypes (see the module docstring for what stays float32).

    Options:
        keep_fp32_ops: op types kept in float32 (default
            :data:`DEFAULT_KEEP_FP32_OPS`; ``[]`` converts everything the schemas
            allow, which overflows on long sums).
        keep_fp32_nodes: node names kept in float32.
    """

    name = "convert-fp16"
    lossless = False
    summary = "convert float32 weights and compute to float16 (inputs/outputs keep their dtypes)"

    keep_fp32_ops: list[str] = field(default_factory=lambda: list(DEFAULT_KEEP_FP32_OPS))
    keep_fp32_nodes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ run
    def run(self, model: Model, ctx: Context) -> PassResult:
        self._model = model
        self._inferred = self.shapes(model)
        self._names = self.names(model)
        self._graph_outputs = all_graph_outputs(model)
        graphs = list(iter_graphs(model.graph, functions=False))
        self._graph_of: dict[int, gs.Graph] = {}
        nodes: list[gs.Node] = []
        for g in graphs:
            for n in g.nodes:
                self._graph_of[id(n)] = g
                nodes.append(n)
        self._orig: dict[int, Any] = {}  # id(tensor) -> original dtype
        for n in nodes:
            for t in list(n.inputs) + list(n.outputs):
                if t.name and id(t) not in self._orig:
                    self._orig[id(t)] = _dtype(t, self._inferred)
        for g in graphs:
            for t in list(g.inputs) + list(g.outputs):
                if id(t) not in self._orig:
                    self._orig[id(t)] = _dtype(t, self._inferred)

        reasons: dict[str, int] = {}
        self._kind: dict[int, str] = {}
        self._fparams: dict[int, set[str]] = {}
        self._schemas: dict[int, _Schema] = {}
        shape_derived = self._shape_derived(nodes)
        for n in nodes:
            kind, why = self._classify(n, shape_derived)
            self._kind[id(n)] = kind
            if why:
                reasons[why] = reasons.get(why, 0) + 1
        lazy = self._keep_lazy_fp32(nodes)
        if lazy:
            reasons["lazy_fp32"] = lazy
        self._resolve_followers(nodes)

        # Final dtypes of every tensor after conversion.
        self._final: dict[int, Any] = dict(self._orig)
        converted = 0
        for n in nodes:
            kind = self._kind[id(n)]
            if kind == _NOFLOAT:
                self._kind[id(n)] = kind = self._decide_nofloat(n)
                if kind == _FIXED:
                    continue
            if kind != _CONVERT:
                continue
            converted += self._convert_node(n)
        casts = self._fix_graph_outputs(graphs)
        const_uses: dict[int, list[tuple[gs.Node, int, Any]]] = {}
        casts += self._fix_inputs(graphs, const_uses)
        wstats = self._convert_constants(const_uses)

        kept = sum(
            1
            for n in nodes
            if self._kind[id(n)] == _FIXED
            and any(self._orig.get(id(t)) == F32 for t in list(n.inputs) + list(n.outputs) if t.name)
        )
        stats: dict[str, int | float] = {
            "nodes_converted": converted,
            "nodes_kept_fp32": kept,
            "casts_inserted": casts,
            **wstats,
        }
        for why, count in sorted(reasons.items()):
            stats[f"kept_fp32.{why}"] = count
        modified = converted > 0 or casts > 0 or wstats["weights_converted"] > 0
        if modified:
            logger.info(
                "convert-fp16: %d nodes to float16, %d kept float32, %d casts, %d weights (%d -> %d bytes)",
                converted,
                kept,
                casts,
                wstats["weights_converted"],
                wstats["weight_bytes_before"],
                wstats["weight_bytes_after"],
            )
        return PassResult(modified=modified, stats=stats)

    # ------------------------------------------------------------- decisions
    def _shape_derived(self, nodes: list[gs.Node]) -> set[int]:
        """ids of tensors computed only from Shape/Size outputs and constants."""
        derived: set[int] = set()
        for n in nodes:
            if n.op in ("Shape", "Size") and n.domain in ONNX_DOMAINS:
                derived.update(id(t) for t in n.outputs)
                continue
            if n.op in _CONTROL_FLOW or n.domain not in ONNX_DOMAINS:
                continue  # their outputs carry captured data, not only their inputs'
            ins = [t for t in n.inputs if t.name]
            if ins and any(id(t) in derived for t in ins) and all(
                id(t) in derived or isinstance(t, gs.Constant) for t in ins
            ):
                derived.update(id(t) for t in n.outputs)
        return derived

    def _classify(self, n: gs.Node, shape_derived: set[int]) -> tuple[str, str | None]:
        """The initial kind of ``n`` and, for a float node kept float32, why."""
        ts = [t for t in list(n.inputs) + list(n.outputs) if t.name]
        touches_f32 = any(self._orig.get(id(t)) == F32 for t in ts)
        if n.domain not in ONNX_DOMAINS:
            return _FIXED, "other_domain" if touches_f32 else None
        if n.op in _FOLLOW:
            if n.op == "Cast":
                if n.attrs.get("to") != onnx.TensorProto.FLOAT:
                    return _FIXED, None  # input 0 is read as is (flexible)
            elif self._orig.get(id(n.outputs[0])) != F32:
                return _FIXED, None
            if id(n.outputs[0]) in shape_derived:
                return _FIXED, "shape_arithmetic"
            return _FOLLOWER, None
        if not touches_f32:
            return _FIXED, None
        if n.op in _CONTROL_FLOW:
            return _FIXED, "control_flow"
        if n.op in _NEVER:
            return _FIXED, "dtype_attribute"
        if n.op in self.keep_fp32_ops:
            return _FIXED, "keep_fp32_ops"
        if n.name and n.name in self.keep_fp32_nodes:
            return _FIXED, "keep_fp32_nodes"
        if any(id(t) in shape_derived and self._orig.get(id(t)) == F32 for t in n.outputs):
            return _FIXED, "shape_arithmetic"
        try:
            schema = _Schema(n, self._model.opset)
        except Exception:  # no schema, or arity beyond it
            return _FIXED, "no_schema"
        bound: dict[str, set] = {}
        for t, p in list(zip(n.inputs, schema.inputs)) + list(zip(n.outputs, schema.outputs)):
            if not t.name or p is None:
                continue
            dt = self._orig.get(id(t))
            if dt is None:
                return _FIXED, "unknown_dtype"
            bound.setdefault(p, set()).add(dt)
        fparams = {p for p, dts in bound.items() if F32 in dts}
        if not fparams:
            return _FIXED, None
        for p in fparams:
            if len(bound[p]) > 1 or "tensor(float16)" not in schema.allowed[p]:
                return _FIXED, "no_fp16_schema"
        for t, p in zip(n.inputs, schema.inputs):
            if n.op in _HEAVY:
                break  # a tiny bias flushed to 0 moves outputs by < 6e-8; an epsilon is what matters
            if p in fparams and isinstance(t, gs.Constant) and self._model.is_constant(t):
                if int(np.prod(t.shape)) <= _SMALL:
                    v = np.abs(constant_array(t).astype(np.float64))
                    if np.any((v > 0) & (v < FP16_TINY)):
                        return _FIXED, "constant_underflow"
        self._fparams[id(n)] = fparams
        self._schemas[id(n)] = schema
        has_float_out = any(
            t.name and p in fparams and self._orig.get(id(t)) == F32 for t, p in zip(n.outputs, schema.outputs)
        )
        return (_CONVERT if has_float_out else _NOFLOAT), None

    def _keep_lazy_fp32(self, nodes: list[gs.Node]) -> int:
        """Rule 3: a cheap candidate fed only by float32-kept nodes stays float32."""
        count = 0
        for n in nodes:
            if self._kind[id(n)] != _CONVERT or n.op in _HEAVY:
                continue
            schema, fparams = self._schemas[id(n)], self._fparams[id(n)]
            arrivals = []
            weighty = False
            for t, p in zip(n.inputs, schema.inputs):
                if not t.name or p not in fparams:
                    continue
                if isinstance(t, gs.Constant) and self._model.is_constant(t):
                    weighty |= int(np.prod(t.shape)) > _SMALL
                    continue
                prod = t.inputs[0] if t.inputs else None
                arrivals.append(prod is not None and self._kind.get(id(prod)) == _FIXED)
            if not weighty and arrivals and all(arrivals):
                self._kind[id(n)] = _FIXED
                count += 1
        return count

    def _reads_as_fp16(self, t: gs.Tensor) -> bool:
        """True when every reader of ``t`` is a converted node reading it at a
        float16 position, and ``t`` is no graph output."""
        if id(t) in self._graph_outputs or not t.outputs:
            return False
        for c in t.outputs:
            if self._kind.get(id(c)) != _CONVERT:
                return False
            schema, fparams = self._schemas[id(c)], self._fparams[id(c)]
            for x, p in zip(c.inputs, schema.inputs):
                if x is t and p not in fparams:
                    return False
        return True

    def _resolve_followers(self, nodes: list[gs.Node]) -> None:
        for n in nodes:
            if self._kind[id(n)] == _FOLLOWER:
                self._kind[id(n)] = _CONVERT if self._reads_as_fp16(n.outputs[0]) else _FIXED

    def _decide_nofloat(self, n: gs.Node) -> str:
        """Rule 5: read float16 directly only when no Cast would be needed."""
        schema, fparams = self._schemas[id(n)], self._fparams[id(n)]
        for t, p in zip(n.inputs, schema.inputs):
            if not t.name or p not in fparams:
                continue
            if isinstance(t, gs.Constant) or self._final.get(id(t)) != F16:
                return _FIXED
        return _CONVERT

    # --------------------------------------------------------------- rewrite
    def _convert_node(self, n: gs.Node) -> int:
        """Switch the outputs (and attribute-held values) of ``n`` to float16."""
        if n.op in _FOLLOW:
            out = n.outputs[0]
            if n.op == "Cast":
                n.attrs["to"] = onnx.TensorProto.FLOAT16
            elif n.op == "Constant":
                n.attrs = {"value": gs.Constant(out.name, self._to_fp16(_constant_value(n))[0])}
            else:  # ConstantOfShape
                value = n.attrs.get("value")
                arr = constant_array(value) if isinstance(value, gs.Constant) else np.zeros(1, np.float32)
                n.attrs["value"] = gs.Constant(out.name + "_value", self._to_fp16(arr)[0])
            self._set_fp16(out)
            return 1
        schema, fparams = self._schemas[id(n)], self._fparams[id(n)]
        for t, p in zip(n.outputs, schema.outputs):
            if t.name and p in fparams and self._orig.get(id(t)) == F32:
                self._set_fp16(t)
        return 1

    def _set_fp16(self, t: gs.Tensor) -> None:
        self._final[id(t)] = F16
        t.dtype = np.float16

    def _required(self, n: gs.Node, i: int) -> Any:
        """dtype input ``i`` of ``n`` must have after conversion (None: any)."""
        t = n.inputs[i]
        if n.op == "Cast" and n.domain in ONNX_DOMAINS and i == 0:
            return None
        if self._kind.get(id(n)) == _CONVERT and n.op not in _FOLLOW:
            schema, fparams = self._schemas[id(n)], self._fparams[id(n)]
            if i < len(schema.inputs) and schema.inputs[i] in fparams and self._orig.get(id(t)) == F32:
                return F16
        return self._orig.get(id(t))

    def _new_cast(self, src: gs.Tensor, to: Any, base: str) -> tuple[gs.Node, gs.Variable]:
        out = gs.Variable(self._names.new(base), dtype=np.dtype(to).type, shape=src.shape)
        node = gs.Node(
            op="Cast",
            name=self._names.new(f"{base}_cast"),
            attrs={"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(to))},
            inputs=[src],
            outputs=[out],
        )
        self._final[id(out)] = to
        self._orig[id(out)] = to
        self._kind[id(node)] = _FIXED
        return node, out

    def _fix_graph_outputs(self, graphs: list[gs.Graph]) -> int:
        """Graph outputs keep their original dtype (Cast back where needed)."""
        casts = 0
        for gi, g in enumerate(graphs):
            for k, t in enumerate(list(g.outputs)):
                orig, final = self._orig.get(id(t)), self._final.get(id(t))
                if orig == final or not (_is_float(orig) and _is_float(final)):
                    continue
                if gi == 0 and t.inputs:  # main graph: keep the output's name
                    prod = t.inputs[0]
                    inner = gs.Variable(self._names.new(f"{t.name}_fp16"), dtype=np.dtype(final).type, shape=t.shape)
                    self._final[id(inner)] = self._orig[id(inner)] = final
                    for c in list(t.outputs):
                        for j, x in enumerate(c.inputs):
                            if x is t:
                                c.inputs[j] = inner
                    idx = next(j for j, x in enumerate(prod.outputs) if x is t)
                    prod.outputs[idx] = inner
                    cast = gs.Node(
                        op="Cast",
                        name=self._names.new(f"{t.name}_to_fp32"),
                        attrs={"to": onnx.helper.np_dtype_to_tensor_dtype(np.dtype(orig))},
                        inputs=[inner],
                        outputs=[t],
                    )
                    t.dtype = np.dtype(orig).type
                    self._final[id(t)] = orig
                    self._kind[id(cast)] = _FIXED
                    pos = next(j for j, x in enumerate(g.nodes) if x is prod)
                    g.nodes.insert(pos + 1, cast)
                else:
                    cast, out = self._new_cast(t, orig, f"{t.name or 'out'}_out_fp32")
                    g.nodes.append(cast)
                    g.outputs[k] = out
                casts += 1
        return casts

    def _fix_inputs(self, graphs: list[gs.Graph], const_uses: dict) -> int:
        """Insert Casts where a value's dtype differs from what its reader needs;
        record float32 constants read as float16 in ``const_uses``."""
        casts = 0
        for g in graphs:
            made: dict[tuple[int, Any], gs.Variable] = {}
            new_nodes: list[gs.Node] = []
            for n in list(g.nodes):
                for i, t in enumerate(list(n.inputs)):
                    if not t.name:
                        continue
                    need = self._required(n, i)
                    have = self._final.get(id(t))
                    if need is None or need == have or not (_is_float(need) and _is_float(have)):
                        continue
                    if isinstance(t, gs.Constant) and self._model.is_constant(t):
                        const_uses.setdefault(id(t), []).append((n, i, need))
                        continue
                    key = (id(t), need)
                    if key not in made:
                        cast, out = self._new_cast(t, need, f"{t.name}_{need}")
                        new_nodes.append(cast)
                        made[key] = out
                        casts += 1
                    n.inputs[i] = made[key]
                new_nodes.append(n)
            g.nodes = new_nodes
        return casts

    def _to_fp16(self, arr: np.ndarray) -> tuple[np.ndarray, int]:
        """float16 copy of ``arr`` with finite out-of-range values clamped."""
        a = np.asarray(arr)
        finite = np.isfinite(a)
        over = finite & (np.abs(a) > FP16_MAX)
        clamped = int(np.count_nonzero(over))
        if clamped:
            a = np.where(over, np.sign(a) * FP16_MAX, a)
        return a.astype(np.float16), clamped

    def _convert_constants(self, const_uses: dict) -> dict[str, int | float]:
        consts: dict[int, gs.Constant] = {}
        for uses in const_uses.values():
            for n, i, _ in uses:
                consts[id(n.inputs[i])] = n.inputs[i]
        count = clamped = before = after = 0
        max_err = 0.0
        err_sq = ref_sq = 0.0
        for key, uses in const_uses.items():
            c = consts[key]
            arr = constant_array(c)
            arr16, k = self._to_fp16(arr)
            clamped += k
            total_uses = sum(1 for r in c.outputs for x in r.inputs if x is c)
            in_place = total_uses == len(uses) and key not in self._graph_outputs
            if in_place:
                c.values = arr16
                target = c
            else:
                target = gs.Constant(self._names.new(f"{c.name}_fp16"), arr16)
                for n, i, _ in uses:
                    n.inputs[i] = target
            count += 1
            before += arr.nbytes
            after += arr16.nbytes
            fin = np.isfinite(arr)
            diff = np.abs(arr16.astype(np.float64)[fin] - arr.astype(np.float64)[fin])
            if diff.size:
                max_err = max(max_err, float(diff.max()))
                err_sq += float(np.sum(diff**2))
                ref_sq += float(np.sum(arr.astype(np.float64)[fin] ** 2))
        return {
            "weights_converted": count,
            "weight_bytes_before": before,
            "weight_bytes_after": after,
            "weight_max_abs_error": max_err,
            "weight_rel_fro_error": float(np.sqrt(err_sq / ref_sq)) if ref_sq > 0 else 0.0,
            "values_clamped": clamped,
        }


def _constant_value(node: gs.Node) -> np.ndarray:
    from ..passes.lift_constants import constant_node_value

    value = constant_node_value(node)
    if value is None:
        raise ValueError(f"Constant node {node.name!r} has no float value")
    return value
