"""Small models for the pruning/distillation tests, built in code."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs, outputs, inits, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        out.type.CopyFrom(inf.type)
    onnx.checker.check_model(model, full_check=True)
    return model


def t(a: np.ndarray, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name)


def mlp(rng: np.random.Generator, k: int = 64, h: int = 96, n: int = 10, matmul: bool = False) -> onnx.ModelProto:
    """x [B, k] -> Gemm(transB=1) or MatMul+Add -> Relu -> Gemm(transB=0) -> y [B, n]."""
    w1 = rng.standard_normal((h, k)) / np.sqrt(k)
    b1 = rng.standard_normal(h) * 0.1
    w2 = rng.standard_normal((h, n)) / np.sqrt(h)
    b2 = rng.standard_normal(n) * 0.1
    if matmul:
        first = [
            helper.make_node("MatMul", ["x", "w1t"], ["mm"], name="fc1"),
            helper.make_node("Add", ["mm", "b1"], ["h"], name="fc1_bias"),
        ]
        inits = [t(w1.T, "w1t"), t(b1, "b1")]
    else:
        first = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1)]
        inits = [t(w1, "w1"), t(b1, "b1")]
    nodes = first + [
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2"),
    ]
    return make_model(nodes, [("x", ["B", k])], ["y"], inits + [t(w2, "w2"), t(b2, "b2")])


def convnet(rng: np.random.Generator, c: int = 8, group2: int = 1) -> onnx.ModelProto:
    """x [1, 3, 16, 16] -> Conv 3x3 (pad 1) -> Relu -> Conv 3x3 (stride 2, group) -> Relu -> Conv 1x1 -> y."""
    w1 = rng.standard_normal((c, 3, 3, 3)) / np.sqrt(27)
    w2 = rng.standard_normal((c, c // group2, 3, 3)) / np.sqrt(9 * c / group2)
    w3 = rng.standard_normal((4, c, 1, 1)) / np.sqrt(c)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 0, 1, 2], strides=[2, 2], group=group2),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    inits = [t(w1, "w1"), t(rng.standard_normal(c) * 0.1, "b1"), t(w2, "w2"), t(rng.standard_normal(c) * 0.1, "b2"), t(w3, "w3")]
    return make_model(nodes, [("x", [1, 3, 16, 16])], ["y"], inits)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Weight of each Conv/Gemm/MatMul node by node name."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.name: inits[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits}


def snr(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    num = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in ref)
    den = sum(float(np.sum((np.asarray(r, np.float64) - g) ** 2)) for r, g in zip(ref, got))
    return 10 * np.log10(num / max(den, 1e-300))
