"""Constant folding through onnxruntime.

A node is folded when every input is a constant (an initializer that is not an
overridable graph input, or the output of another folded node) and replaced by an
initializer holding its output. The foldable nodes of each graph are evaluated
together in one onnxruntime session with graph optimizations disabled; when that
session fails, nodes are evaluated one by one and the ones onnxruntime cannot run
stay in the graph.

Never folded:
- non-deterministic ops (``RandomNormal``, ``RandomUniform``, their ``Like``
  variants, ``Bernoulli``, ``Multinomial``);
- ``QuantizeLinear``/``DequantizeLinear``/``DynamicQuantizeLinear``: QDQ pairs are
  the quantization contract with the runtime;
- ``Cast`` of a constant int8/uint8/int4/uint4 tensor to float: weight-only
  quantized weights (folding would store them in float again);
- nodes with subgraphs, nodes outside the default domain, sequence/optional ops;
- a node whose output is a graph output (of any graph);
- a node whose output is larger than ``max_output_bytes`` *and* larger than its
  constant inputs together (a ``Tile`` or ``Expand`` that would grow the file).

``Shape`` (and ``Size``) of a non-constant tensor is folded only when the
requested dimensions are concrete integers after shape inference from the graph
inputs (:func:`onnxpress.graph.infer_shapes`), never from declared shapes, so a
dynamic dimension is never pinned.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from ..graph import Model, TensorType, constant_array, iter_graphs
from ..graph.model import ExternalValues
from ._rewrite import NON_DETERMINISTIC_OPS, ONNX_DOMAINS, all_graph_outputs, remove_nodes, replace_uses
from .base import Context, Pass, PassResult, register

__all__ = ["FoldConstants", "NEVER_FOLD"]

_LOW_BIT_TYPES = frozenset({"int8", "uint8"})

logger = logging.getLogger(__name__)

NEVER_FOLD = NON_DETERMINISTIC_OPS | frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "Constant",  # lift-constants owns these
        "If",
        "Loop",
        "Scan",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceInsert",
        "SequenceErase",
        "SequenceAt",
        "SequenceLength",
        "SplitToSequence",
        "ConcatFromSequence",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
    }
)


def _nbytes(shape, dtype) -> int | None:
    if shape is None or dtype is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _has_subgraph(node: gs.Node) -> bool:
    return any(
        isinstance(v, gs.Graph) or (isinstance(v, (list, tuple)) and any(isinstance(x, gs.Graph) for x in v))
        for v in node.attrs.values()
    )


def _shape_dims(node: gs.Node, shapes: dict[str, TensorType]) -> list | None:
    """Dims (int, symbol or None) that a ``Shape`` node returns, honouring start/end."""
    tt = shapes.get(node.inputs[0].name)
    if tt is None or tt.shape is None:
        return None
    dims = list(tt.shape)
    rank = len(dims)
    start = int(node.attrs.get("start", 0))
    end = node.attrs.get("end")
    start = max(0, min(rank, start + rank if start < 0 else start))
    end = rank if end is None else int(end)
    end = max(0, min(rank, end + rank if end < 0 else end))
    return dims[start:end]


def _static(dims) -> np.ndarray | None:
    return np.array(dims, dtype=np.int64) if all(isinstance(d, int) for d in dims) else None


def _shape_value(node: gs.Node, shapes: dict[str, TensorType], model: Model) -> np.ndarray | None:
    """Value of ``Shape``/``Size`` of a tensor whose requested dims are concrete, or
    of ``Gather``/``Slice`` picking only concrete dims out of a ``Shape``
    (``Shape(x)[0]`` with ``x: [2, N, 128]`` is 2 whatever N is)."""
    if node.op == "Size":
        tt = shapes.get(node.inputs[0].name)
        if tt is None or tt.shape is None:
            return None
        dims = _static(tt.shape)
        return None if dims is None else np.array(np.prod(dims), dtype=np.int64)
    if node.op == "Shape":
        dims = _shape_dims(node, shapes)
        return None if dims is None else _static(dims)
    src = node.inputs[0].inputs[0] if node.inputs and node.inputs[0].inputs else None
    if src is None or src.op != "Shape" or src.domain not in ONNX_DOMAINS:
        return None
    dims = _shape_dims(src, shapes)
    rest = node.inputs[1:]
    if dims is None or not all(t.name == "" or model.is_constant(t) for t in rest):
        return None
    args = [None if not t.name else constant_array(t) for t in rest]
    picked = np.empty(len(dims), dtype=object)
    picked[:] = dims
    try:
        if node.op == "Gather":
            if int(node.attrs.get("axis", 0)) not in (0, -1):
                return None
            sel = np.take(picked, args[0].astype(np.int64), axis=0)
        elif node.op == "Slice":
            starts, ends = args[0], args[1]
            axes = args[2] if len(args) > 2 and args[2] is not None else np.array([0])
            steps = args[3] if len(args) > 3 and args[3] is not None else np.array([1])
            if starts.size != 1 or int(axes.reshape(-1)[0]) not in (0, -1):
                return None
            start, end, step = (int(v.reshape(-1)[0]) for v in (starts, ends, steps))
            sel = picked[slice(*slice(start, end, step).indices(len(dims)))]
        else:
            return None
    except (IndexError, ValueError):
        return None
    flat = list(np.asarray(sel, dtype=object).reshape(-1))
    if not all(isinstance(d, int) for d in flat):
        return None
    return np.array(flat, dtype=np.int64).reshape(np.shape(sel))


def _is_weight_decompression(node: gs.Node) -> bool:
    """A ``Cast`` of a constant int8/uint8/int4/uint4 tensor to a float type: how
    weight-only quantized weights are stored (quantize-int8's ``float_layer_weights``).
    Folding it would write the fp32 weights back; onnxruntime folds it at load."""
    if node.op != "Cast" or not node.inputs or not isinstance(node.inputs[0], gs.Constant):
        return False
    to = node.attrs.get("to")
    src = str(node.inputs[0].dtype)
    low_bit = src in _LOW_BIT_TYPES or "int4" in src
    return low_bit and to in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


@register
@dataclass
class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constant and store their outputs.

    Options:
        max_output_bytes: a folded output may exceed its inputs' total size by at most
            this many bytes (default 1 MiB).
        fold_shapes: fold ``Shape``/``Size`` of tensors with concrete dimensions.
    """

    max_output_bytes: int = 1 << 20
    fold_shapes: bool = True

    name = "fold-constants"
    summary = "evaluate all-constant subgraphs in onnxruntime (size cap, no Random*, no QDQ)"

    def run(self, model: Model, ctx: Context) -> PassResult:
        graph_outputs = all_graph_outputs(model)
        folded = shape_folded = 0
        # Repeat until nothing folds: a shape query (``Gather(Shape(x), i)``) is
        # folded without onnxruntime only when ``i`` is already a constant, and a
        # folded constant (a Split's sizes) can make shapes concrete, so what one
        # round folds can make more foldable in the next, with shapes inferred again.
        while True:
            shapes = self.shapes(model) if self.fold_shapes else {}
            round_folded = skipped_large = 0
            for g in iter_graphs(model.graph):
                n, s, big = self._fold_graph(model, g, shapes, graph_outputs)
                round_folded += n
                shape_folded += s
                skipped_large += big
            folded += round_folded
            if not round_folded:
                break
        if folded:
            logger.info("fold-constants: folded %d nodes (%d from shapes)", folded, shape_folded)
        return PassResult(
            modified=folded > 0,
            stats={"nodes_folded": folded, "shape_nodes_folded": shape_folded, "skipped_over_cap": skipped_large},
        )

    # ------------------------------------------------------------------
    def _fold_graph(self, model: Model, g: gs.Graph, shapes, graph_outputs) -> tuple[int, int, int]:
        const_ids: set[int] = set()  # outputs of nodes chosen for folding
        chosen: list[gs.Node] = []
        direct: dict[int, np.ndarray] = {}  # values of shape queries computed without ORT
        skipped_large = 0

        def is_const(t: gs.Tensor) -> bool:
            return t.name == "" or model.is_constant(t) or id(t) in const_ids

        for node in g.nodes:
            if node.domain not in ONNX_DOMAINS or node.op in NEVER_FOLD or _has_subgraph(node):
                continue
            if _is_weight_decompression(node):
                continue
            if any(id(o) in graph_outputs for o in node.outputs):
                continue
            if (
                node.op in ("Shape", "Size", "Gather", "Slice")
                and self.fold_shapes
                and not is_const(node.inputs[0])
            ):
                value = _shape_value(node, shapes, model)
                if value is None:
                    continue
                direct[id(node)] = value
            elif not node.inputs or not all(is_const(t) for t in node.inputs):
                continue
            in_bytes = sum(
                int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
                for t in node.inputs
                if isinstance(t, gs.Constant) and t.dtype is not None
            )
            too_big = False
            for o in node.outputs:
                tt = shapes.get(o.name)
                est = _nbytes(tt.shape, tt.dtype) if tt is not None else None
                if est is not None and est > max(self.max_output_bytes, in_bytes):
                    too_big = True
            if too_big:
                skipped_large += 1
                continue
            chosen.append(node)
            const_ids.update(id(o) for o in node.outputs)
        if not chosen:
            return 0, 0, skipped_large

        values = self._evaluate(model, chosen, direct)
        # Outputs actually needed outside the folded set.
        chosen_ids = {id(n) for n in chosen}
        folded_nodes: list[gs.Node] = []
        failed: set[int] = set()
        for node in chosen:
            if any(id(t) in failed for t in node.inputs):
                failed.update(id(o) for o in node.outputs)
                continue
            if not all(o.name == "" or id(o) in values for o in node.outputs):
                failed.update(id(o) for o in node.outputs)
                continue
            folded_nodes.append(node)
        # Enforce the size cap on measured outputs; drop nodes over it (and their users).
        over: set[int] = set()
        final: list[gs.Node] = []
        for node in folded_nodes:
            if any(id(t) in over for t in node.inputs):
                over.update(id(o) for o in node.outputs)
                continue
            in_bytes = sum(
                _nbytes(tuple(t.shape), t.dtype) or 0 if isinstance(t, gs.Constant) else values[id(t)].nbytes
                for t in node.inputs
                if t.name and (isinstance(t, gs.Constant) or id(t) in values)
            )
            if any(o.name and values[id(o)].nbytes > max(self.max_output_bytes, in_bytes) for o in node.outputs):
                over.update(id(o) for o in node.outputs)
                skipped_large += 1
                continue
            final.append(node)
        final_ids = {id(n) for n in final}
        shape_count = 0
        for node in final:
            if id(node) in direct:
                shape_count += 1
            for o in node.outputs:
                if not o.name:
                    continue
                users = [c for c in o.outputs if id(c) not in final_ids]
                if users:
                    value = values[id(o)]
                    # np.ascontiguousarray returns at least 1-D: keep a scalar a scalar
                    const = np.ascontiguousarray(value).reshape(value.shape)
                    replace_uses(o, gs.Constant(o.name, const))
        remove_nodes(g, final)
        del chosen_ids
        return len(final), shape_count, skipped_large

    def _evaluate(self, model: Model, nodes: list[gs.Node], direct: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Values of the outputs of ``nodes`` by tensor id."""
        values: dict[int, np.ndarray] = {}
        for node in nodes:
            if id(node) in direct:
                values[id(node.outputs[0])] = direct[id(node)]
        ort_nodes = [n for n in nodes if id(n) not in direct]
        if not ort_nodes:
            return values
        try:
            values.update(self._run_ort(model, ort_nodes, values))
        except Exception as exc:  # onnxruntime rejects the batch: go node by node
            logger.debug("batched folding failed (%s); folding node by node", str(exc).splitlines()[0])
            for node in ort_nodes:
                if not all(t.name == "" or isinstance(t, gs.Constant) or id(t) in values for t in node.inputs):
                    continue
                try:
                    values.update(self._run_ort(model, [node], values))
                except Exception as node_exc:
                    logger.debug("cannot fold %s (%s): %s", node.name, node.op, str(node_exc).splitlines()[0])
        return values

    @staticmethod
    def _run_ort(model: Model, nodes: list[gs.Node], known: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        import onnxruntime as ort

        produced = {id(o) for n in nodes for o in n.outputs}
        inits: dict[str, onnx.TensorProto] = {}
        for n in nodes:
            for t in n.inputs:
                if not t.name or id(t) in produced or t.name in inits:
                    continue
                if isinstance(t, gs.Constant) and isinstance(t._values, ExternalValues):  # weights left on disk
                    inits[t.name] = onnx.numpy_helper.from_array(constant_array(t), t.name)
                elif isinstance(t, gs.Constant):
                    inits[t.name] = OnnxExporter.export_tensor_proto(t)
                else:
                    inits[t.name] = onnx.numpy_helper.from_array(known[id(t)], t.name)
        outputs = [o for n in nodes for o in n.outputs if o.name]
        graph = onnx.helper.make_graph(
            [OnnxExporter.export_node(n) for n in nodes],
            "fold",
            [],
            [onnx.helper.make_value_info(o.name, onnx.TypeProto()) for o in outputs],
            initializer=list(inits.values()),
        )
        proto = onnx.helper.make_model(
            graph,
            opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()],
        )
        proto.ir_version = max(model.ir_version, 4)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 4
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        results = sess.run([o.name for o in outputs], {})
        return {id(o): np.asarray(r) for o, r in zip(outputs, results)}
