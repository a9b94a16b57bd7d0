"""Small graphs and differential references for the pruning tests."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxpress.graph import load
from onnxpress.passes import Context, make_pass

F32 = np.float32


class Builder:
    """Builds an ONNX model node by node with seeded random weights.

    Channels listed in ``zero`` get all-zero filters and biases, so they carry
    exact zeros (through activations with f(0) = 0) and have zero importance.
    """

    def __init__(self, seed: int = 0, opset: int = 17) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.opset = opset

    def const(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], name: str, outputs: int | list[str] = 1, **attrs) -> str | list[str]:
        outs = [name] if outputs == 1 else (outputs if isinstance(outputs, list) else [f"{name}_{i}" for i in range(outputs)])
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def conv(self, x: str, name: str, cin: int, cout: int, k: int = 3, group: int = 1, zero=(), bias: bool = True, **attrs) -> str:
        w = self.rng.normal(0, 0.5, (cout, cin // group, k, k)).astype(F32)
        b = self.rng.normal(0, 0.1, cout).astype(F32)
        w[list(zero)] = 0
        b[list(zero)] = 0
        ins = [x, self.const(f"{name}.w", w)] + ([self.const(f"{name}.b", b)] if bias else [])
        attrs.setdefault("pads", [k // 2] * 4)
        return self.op("Conv", ins, name, kernel_shape=[k, k], group=group, **attrs)

    def matmul(self, x: str, name: str, k: int, n: int, zero=()) -> str:
        w = self.rng.normal(0, 0.3, (k, n)).astype(F32)
        b = self.rng.normal(0, 0.1, n).astype(F32)
        w[:, list(zero)] = 0
        b[list(zero)] = 0
        y = self.op("MatMul", [x, self.const(f"{name}.w", w)], name)
        return self.op("Add", [y, self.const(f"{name}.b", b)], f"{name}_bias")

    def model(self, inputs: list[tuple[str, list]], outputs: list[str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
            initializer=self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
        for out in m.graph.output:
            if out.name in known and known[out.name].type.tensor_type.HasField("shape"):
                out.CopyFrom(known[out.name])
        onnx.checker.check_model(m, full_check=True)
        return m


def session(model: onnx.ModelProto, optimize: bool = False) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def prune(proto: onnx.ModelProto, ctx: Context | None = None, **options):
    """Run prune-channels once; return (checked pruned proto, PassResult, Context, pass)."""
    model = load(onnx.ModelProto.FromString(proto.SerializeToString()))
    ctx = ctx or Context()
    p = make_pass("prune-channels", **options)
    result = p.run(model, ctx)
    out = model.to_proto()
    onnx.checker.check_model(out, full_check=True)
    return out, result, ctx, p


def outputs(model: onnx.ModelProto, feeds: dict, optimize: bool = False) -> list[np.ndarray]:
    return session(model, optimize).run(None, feeds)


def assert_exact(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict) -> None:
    """Same outputs bit for bit with onnxruntime optimizations off; with them on,
    equal up to float rounding (the optimized kernels block the channel axis, e.g.
    NCHWc, so a different channel count sums in another order)."""
    for optimize in (False, True):
        ref, got = outputs(before, feeds, optimize), outputs(after, feeds, optimize)
        for r, g in zip(ref, got):
            assert r.shape == g.shape
            if optimize:
                np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
            else:
                np.testing.assert_array_equal(g, r)


def weight(model: onnx.ModelProto, node_name: str, index: int = 1) -> np.ndarray:
    """The constant input ``index`` of node ``node_name``."""
    node = next(n for n in model.graph.node if n.name == node_name)
    init = {t.name: t for t in model.graph.initializer}
    return numpy_helper.to_array(init[node.input[index]])


def masked_reference(proto: onnx.ModelProto, **options) -> onnx.ModelProto:
    """The original model with the channels prune-channels would remove zeroed
    at every layer input (a ``Mul`` by a 0/1 mask before each consumer).

    Removing a channel is the same as feeding zeros in its place to every layer
    that reads it, so the pruned model must compute what this model computes
    (channel reductions aside: a mean over fewer channels has another divisor).
    """
    from onnxpress.prune import build_depgraph, channel_importance

    m = load(onnx.ModelProto.FromString(proto.SerializeToString()))
    p = make_pass("prune-channels", **options)
    dg = build_depgraph(m)
    score = channel_importance(dg, p.importance)
    removed = dg.restore_empty(p._select(dg, score), score)
    masks = dg.masks(removed)
    for k, (node, name) in enumerate([(s.node, s.input) for s in dg.sinks] + list(dg.reductions)):
        mask = masks[name]
        if mask.all():
            continue
        ann = dg.ann[name]
        shape = [1] * len(dg.shapes[name].shape)
        shape[ann.axis] = len(mask)
        c = gs.Constant(f"__mask{k}", mask.astype(F32).reshape(shape))
        src = dg.tensors[name]
        out = gs.Variable(f"{name}__masked{k}", dtype=F32)
        m.graph.nodes.append(gs.Node("Mul", inputs=[src, c], outputs=[out]))
        for i, t in enumerate(node.inputs):
            if t is src:
                node.inputs[i] = out
    m.graph.toposort()
    return m.to_proto()
