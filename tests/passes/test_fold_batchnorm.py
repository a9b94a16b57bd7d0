"""Tests of the fold-batchnorm pass: every fold checked in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import apply, assert_equivalent, run_once

TOL = {"rtol": 1e-4, "atol": 1e-5}
EPS = 1e-3


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def bn_inits(rng: np.random.Generator, c: int, prefix: str = "bn") -> list[onnx.TensorProto]:
    """Non-trivial statistics: var in [0.5, 2], nonzero mean."""
    values = {
        "scale": rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c),
        "bias": rng.uniform(-1, 1, c),
        "mean": rng.uniform(0.2, 1.0, c) * rng.choice([-1, 1], c),
        "var": rng.uniform(0.5, 2.0, c),
    }
    return [numpy_helper.from_array(v.astype(np.float32), f"{prefix}_{k}") for k, v in values.items()]


def bn_node(x: str, y: str, prefix: str = "bn", **attrs) -> onnx.NodeProto:
    attrs.setdefault("epsilon", EPS)
    names = [x] + [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")]
    return helper.make_node("BatchNormalization", names, [y], name=prefix, **attrs)


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
    return with_output_shapes(model)


def with_output_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Declare the output shapes onnx infers (the checker wants a shape on outputs)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    for out, inf in zip(model.graph.output, inferred.graph.output):
        out.type.CopyFrom(inf.type)
    onnx.checker.check_model(model, full_check=True)
    return model


def arr(rng, *shape, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def feeds_for(rng, shape) -> list[dict]:
    return [{"X": rng.standard_normal(shape).astype(np.float32)} for _ in range(2)]


# Each case: (builder of the layer nodes + weights, input shape, channels of the BN)
def _conv_nobias(rng):
    return [helper.make_node("Conv", ["X", "W"], ["h"], pads=[1, 1, 1, 1])], [arr(rng, 4, 3, 3, 3, name="W")], (2, 3, 8, 8), 4


def _conv_grouped(rng):
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["h"], group=3, strides=[2, 2])]
    return nodes, [arr(rng, 9, 2, 3, 3, name="W"), arr(rng, 9, name="B")], (2, 6, 9, 9), 9


def _conv_transpose(rng):
    nodes = [helper.make_node("ConvTranspose", ["X", "W", "B"], ["h"], strides=[2, 2], output_padding=[1, 1])]
    return nodes, [arr(rng, 3, 5, 3, 3, name="W"), arr(rng, 5, name="B")], (2, 3, 5, 5), 5


def _conv_transpose_grouped(rng):
    nodes = [helper.make_node("ConvTranspose", ["X", "W", "B"], ["h"], group=2, strides=[2, 2])]
    return nodes, [arr(rng, 4, 3, 3, 3, name="W"), arr(rng, 6, name="B")], (2, 4, 5, 5), 6


def _gemm_transb0(rng):
    nodes = [helper.make_node("Gemm", ["X", "W", "C"], ["h"], alpha=0.7, beta=1.3)]
    return nodes, [arr(rng, 7, 6, name="W"), arr(rng, 6, name="C")], (5, 7), 6


def _gemm_transb1(rng):
    nodes = [helper.make_node("Gemm", ["X", "W", "C"], ["h"], transB=1, alpha=1.5, beta=0.5)]
    return nodes, [arr(rng, 6, 7, name="W"), arr(rng, 1, 6, name="C")], (5, 7), 6


def _gemm_no_c(rng):
    nodes = [helper.make_node("Gemm", ["X", "W"], ["h"], transA=1, beta=3.0)]
    return nodes, [arr(rng, 7, 6, name="W")], (7, 5), 6


def _matmul_add(rng):
    nodes = [helper.make_node("MatMul", ["X", "W"], ["m"]), helper.make_node("Add", ["B", "m"], ["h"])]
    return nodes, [arr(rng, 7, 6, name="W"), arr(rng, 1, 6, name="B")], (5, 7), 6


def _matmul(rng):
    return [helper.make_node("MatMul", ["X", "W"], ["h"])], [arr(rng, 7, 6, name="W")], (5, 7), 6


CASES = {
    "conv_nobias": (_conv_nobias, "bn_conv"),
    "conv_group3": (_conv_grouped, "bn_conv"),
    "conv_transpose": (_conv_transpose, "bn_conv_transpose"),
    "conv_transpose_group2": (_conv_transpose_grouped, "bn_conv_transpose"),
    "gemm_transB0": (_gemm_transb0, "bn_gemm"),
    "gemm_transB1": (_gemm_transb1, "bn_gemm"),
    "gemm_no_c": (_gemm_no_c, "bn_gemm"),
    "matmul_add": (_matmul_add, "bn_matmul_add"),
    "matmul": (_matmul, "bn_matmul"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fold_bn(case, rng):
    build, kind = CASES[case]
    nodes, inits, shape, c = build(rng)
    proto = make_model(nodes + [bn_node("h", "Y")], [("X", shape)], ["Y"], inits + bn_inits(rng, c))
    out, records = apply(proto, "fold-batchnorm")
    assert_equivalent(proto, out, feeds_for(rng, shape), **TOL)
    assert "BatchNormalization" not in ops(out)
    expected = len(proto.graph.node) - (0 if kind == "bn_matmul" else 1)
    assert len(out.graph.node) == expected, ops(out)
    assert records[0].modified and records[0].stats[kind] == 1
    assert out.graph.output[0].name == "Y"
    _, again, _ = run_once(out, "fold-batchnorm")
    assert again.modified is False


def test_fold_bn_default_epsilon_and_bn_output_feeding_more(rng):
    nodes = [
        helper.make_node("Conv", ["X", "W", "B"], ["h"]),
        helper.make_node("BatchNormalization", ["h", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["y"]),
        helper.make_node("Relu", ["y"], ["Y"]),
        helper.make_node("Sigmoid", ["y"], ["Z"]),
    ]
    inits = [arr(rng, 4, 3, 1, 1, name="W"), arr(rng, 4, name="B")] + bn_inits(rng, 4)
    proto = make_model(nodes, [("X", (1, 3, 4, 4))], ["Y", "Z"], inits)
    out, _ = apply(proto, "fold-batchnorm")
    assert ops(out) == ["Conv", "Relu", "Sigmoid"]
    assert_equivalent(proto, out, feeds_for(rng, (1, 3, 4, 4)), **TOL)


def test_conv_with_two_consumers_not_folded(rng):
    nodes = [
        helper.make_node("Conv", ["X", "W"], ["h"]),
        bn_node("h", "Y"),
        helper.make_node("Relu", ["h"], ["Z"]),
    ]
    inits = [arr(rng, 4, 3, 3, 3, name="W")] + bn_inits(rng, 4)
    proto = make_model(nodes, [("X", (1, 3, 6, 6))], ["Y", "Z"], inits)
    out, records = apply(proto, "fold-batchnorm")
    assert ops(out) == ops(proto)
    assert not records[0].modified
    assert_equivalent(proto, out, feeds_for(rng, (1, 3, 6, 6)), **TOL)


def test_conv_output_is_graph_output_not_folded(rng):
    nodes = [helper.make_node("Conv", ["X", "W"], ["H"]), bn_node("H", "Y")]
    inits = [arr(rng, 4, 3, 3, 3, name="W")] + bn_inits(rng, 4)
    proto = make_model(nodes, [("X", (1, 3, 6, 6))], ["Y", "H"], inits)
    out, records = apply(proto, "fold-batchnorm")
    assert ops(out) == ops(proto)
    assert_equivalent(proto, out, feeds_for(rng, (1, 3, 6, 6)), **TOL)


def test_non_constant_weight_or_overridable_params_not_folded(rng):
    nodes = [helper.make_node("Conv", ["X", "W"], ["h"]), bn_node("h", "Y")]
    bn = bn_inits(rng, 4)
    proto = make_model(nodes, [("X", (1, 3, 6, 6)), ("W", (4, 3, 3, 3))], ["Y"], bn)
    out, result, _ = run_once(proto, "fold-batchnorm")
    assert not result.modified and ops(out) == ops(proto)
    # BN mean is an overridable initializer (also a graph input): never a constant
    proto = make_model(nodes, [("X", (1, 3, 6, 6)), ("bn_mean", (4,))], ["Y"], bn + [arr(rng, 4, 3, 3, 3, name="W")])
    out, result, _ = run_once(proto, "fold-batchnorm")
    assert not result.modified and ops(out) == ops(proto)


def test_training_mode_not_folded(rng):
    bn = bn_node("h", "Y", training_mode=1)
    bn.output.extend(["running_mean", "running_var"])
    nodes = [helper.make_node("Conv", ["X", "W"], ["h"]), bn]
    proto = make_model(nodes, [("X", (2, 3, 6, 6))], ["Y"], [arr(rng, 4, 3, 3, 3, name="W")] + bn_inits(rng, 4))
    out, result, _ = run_once(proto, "fold-batchnorm")
    assert not result.modified and ops(out) == ops(proto)


def test_matmul_rank3_not_folded(rng):
    # [2, 6, 7] x [7, 6] -> [2, 6, 6]: BN normalizes axis 1 (6 rows), not the 6 features
    nodes = [helper.make_node("MatMul", ["X", "W"], ["h"]), bn_node("h", "Y")]
    proto = make_model(nodes, [("X", (2, 6, 7))], ["Y"], [arr(rng, 7, 6, name="W")] + bn_inits(rng, 6))
    out, records = apply(proto, "fold-batchnorm")
    assert ops(out) == ops(proto)
    assert_equivalent(proto, out, feeds_for(rng, (2, 6, 7)), **TOL)


def test_shared_weight_folds_into_new_constants(rng):
    nodes = [
        helper.make_node("Conv", ["X", "W"], ["h1"]),
        bn_node("h1", "Y1", prefix="bn1"),
        helper.make_node("Conv", ["X", "W"], ["h2"]),
        bn_node("h2", "Y2", prefix="bn2"),
        helper.make_node("Conv", ["X", "W"], ["Y3"]),
    ]
    inits = [arr(rng, 4, 3, 3, 3, name="W")] + bn_inits(rng, 4, "bn1") + bn_inits(rng, 4, "bn2")
    proto = make_model(nodes, [("X", (1, 3, 6, 6))], ["Y1", "Y2", "Y3"], inits)
    out, records = apply(proto, "fold-batchnorm")
    assert ops(out) == ["Conv", "Conv", "Conv"]
    assert records[0].stats["bn_conv"] == 2
    names = [i.name for i in out.graph.initializer]
    assert len(names) == len(set(names)) == 5  # W, 2 weights, 2 biases
    w = next(i for i in out.graph.initializer if i.name == "W")
    np.testing.assert_array_equal(numpy_helper.to_array(w), numpy_helper.to_array(inits[0]))
    assert_equivalent(proto, out, feeds_for(rng, (1, 3, 6, 6)), **TOL)


def test_conv_then_mul_then_add(rng):
    c = 5
    inits = [
        arr(rng, c, 3, 3, 3, name="W"),
        arr(rng, c, name="B"),
        numpy_helper.from_array(rng.uniform(0.5, 2, (c, 1, 1)).astype(np.float32), "s"),
        numpy_helper.from_array(rng.uniform(-1, 1, (1, c, 1, 1)).astype(np.float32), "t"),
        numpy_helper.from_array(np.array(0.25, dtype=np.float32), "k"),
    ]
    nodes = [
        helper.make_node("Conv", ["X", "W", "B"], ["h"]),
        helper.make_node("Mul", ["h", "s"], ["a"]),
        helper.make_node("Add", ["t", "a"], ["b"]),
        helper.make_node("Mul", ["k", "b"], ["Y"]),
    ]
    proto = make_model(nodes, [("X", (2, 3, 7, 7))], ["Y"], inits)
    out, records = apply(proto, "fold-batchnorm")
    assert ops(out) == ["Conv"]
    assert records[0].stats["mul_conv"] == 2 and records[0].stats["add_conv"] == 1
    assert_equivalent(proto, out, feeds_for(rng, (2, 3, 7, 7)), **TOL)
    _, again, _ = run_once(out, "fold-batchnorm")
    assert again.modified is False


def test_conv_transpose_then_add_without_bias(rng):
    inits = [
        arr(rng, 4, 3, 2, 2, name="W"),
        numpy_helper.from_array(rng.uniform(-1, 1, (6, 1, 1)).astype(np.float32), "t"),
    ]
    nodes = [
        helper.make_node("ConvTranspose", ["X", "W"], ["h"], group=2),
        helper.make_node("Add", ["h", "t"], ["Y"]),
    ]
    proto = make_model(nodes, [("X", (1, 4, 5, 5))], ["Y"], inits)
    out, records = apply(proto, "fold-batchnorm")
    assert ops(out) == ["ConvTranspose"]
    assert_equivalent(proto, out, feeds_for(rng, (1, 4, 5, 5)), **TOL)


def test_mul_not_per_channel_not_folded(rng):
    inits = [
        arr(rng, 4, 3, 3, 3, name="W"),
        numpy_helper.from_array(rng.uniform(0.5, 2, (4,)).astype(np.float32), "s"),  # broadcasts on W axis
        numpy_helper.from_array(rng.uniform(0.5, 2, (4, 4, 1)).astype(np.float32), "u"),
    ]
    nodes = [
        helper.make_node("Conv", ["X", "W"], ["h"]),
        helper.make_node("Mul", ["h", "s"], ["a"]),
        helper.make_node("Conv", ["X", "W"], ["h2"]),
        helper.make_node("Mul", ["h2", "u"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["Y"]),
    ]
    proto = make_model(nodes, [("X", (1, 3, 6, 6))], ["Y"], inits)
    out, records = apply(proto, "fold-batchnorm")
    assert ops(out) == ops(proto)
    assert_equivalent(proto, out, feeds_for(rng, (1, 3, 6, 6)), **TOL)


def test_fold_inside_if_branch(rng):
    # W lives in the main graph (captured by both branches), the BN statistics in the branch
    then_branch = helper.make_graph(
        [helper.make_node("Conv", ["X", "W"], ["h"]), bn_node("h", "t_out")],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)],
        initializer=bn_inits(rng, 4),
    )
    else_branch = helper.make_graph(
        [helper.make_node("Conv", ["X", "W"], ["e_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)],
    )
    nodes = [helper.make_node("If", ["C"], ["Y"], then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, (1, 3, 6, 6)),
            helper.make_tensor_value_info("C", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[arr(rng, 4, 3, 3, 3, name="W")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    proto = with_output_shapes(proto)
    out, records = apply(proto, "fold-batchnorm")
    branch = next(a.g for a in out.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["Conv"]
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    assert_equivalent(proto, out, [{"X": x, "C": np.array(True)}, {"X": x, "C": np.array(False)}], **TOL)


def test_fold_inside_local_function_after_lifting(rng):
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[1,2,3,3] X) => (float[1,2,3,3] Y) {
            Y = local.f (X)
        }
        <domain: "local", opset_import: ["" : 17]>
        f (x) => (y) {
            w = Constant <value = float[2,2,1,1] {1,2,3,4}> ()
            s = Constant <value = float[2] {1.5, -2}> ()
            b = Constant <value = float[2] {0.5, -1}> ()
            mu = Constant <value = float[2] {0.3, -0.2}> ()
            v = Constant <value = float[2] {0.7, 1.5}> ()
            c = Conv(x, w)
            y = BatchNormalization <epsilon = 0.001> (c, s, b, mu, v)
        }"""
    )
    out, records = apply(proto, "lift-constants", "fold-batchnorm")
    assert records[1].stats["bn_conv"] == 1
    assert [n.op_type for n in out.functions[0].node if n.op_type != "Constant"] == ["Conv"]
    assert_equivalent(proto, out, feeds_for(rng, (1, 2, 3, 3)), **TOL)
