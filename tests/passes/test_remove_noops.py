"""Tests of the remove-noops pass: every rewrite checked in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest
from onnx import TensorProto, helper

from tests.conftest import apply, assert_equivalent, run_once

HEADER = '<ir_version: 8, opset_import: ["" : {opset}]>\n'


def parse(text: str, opset: int = 17) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEADER.replace("{opset}", str(opset)) + text)
    onnx.checker.check_model(model, full_check=True)
    return model


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def count_nodes(graph: onnx.GraphProto) -> int:
    """Nodes of ``graph`` and of all its subgraphs."""
    total = 0
    for node in graph.node:
        total += 1
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            total += sum(count_nodes(sg) for sg in subgraphs)
    return total


def check_removed(proto: onnx.ModelProto, feeds, removed: int, **tol) -> onnx.ModelProto:
    """Run the pass to a fixed point, compare in ORT, check the count and idempotency."""
    out, records = apply(proto, "remove-noops")
    assert_equivalent(proto, out, feeds, **tol)
    assert count_nodes(out.graph) == count_nodes(proto.graph) - removed, (ops(proto), ops(out))
    assert records[0].modified == (removed > 0)
    assert records[0].stats["nodes_removed"] == removed
    _, again, _ = run_once(out, "remove-noops")
    assert again.modified is False
    assert again.stats["nodes_removed"] == 0
    return out


def check_kept(proto: onnx.ModelProto, feeds) -> onnx.ModelProto:
    out, records = apply(proto, "remove-noops")
    assert ops(out) == ops(proto)
    assert all(not r.modified for r in records)
    assert_equivalent(proto, out, feeds)
    return out


@pytest.fixture
def x23(rng):
    return {"X": rng.standard_normal((2, 3)).astype(np.float32)}


# ----------------------------------------------------------------- Identity, Dropout
def test_identity_chain_including_graph_output(x23):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y) {
            a = Identity(X)
            b = Relu(a)
            Y = Identity(b)
        }"""
    )
    out = check_removed(proto, x23, 2)
    assert ops(out) == ["Relu"]
    assert out.graph.output[0].name == "Y"


def test_identity_from_input_to_output_kept(x23):
    proto = parse("g (float[2,3] X) => (float[2,3] Y) { Y = Identity(X) }")
    check_kept(proto, x23)


def test_dropout_inference_opset13(x23):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y) <bool t = {0}, float r = {0.5}> {
            a = Dropout(X)
            b = Dropout(a, r, t)
            c, m = Dropout(b, r)
            Y = Relu(c)
        }""",
        opset=13,
    )
    check_removed(proto, x23, 3)


def test_dropout_opset10_ratio_attr(x23):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y) {
            a = Dropout <ratio = 0.3> (X)
            Y = Relu(a)
        }""",
        opset=10,
    )
    check_removed(proto, x23, 1)


def test_dropout_with_used_mask_or_training_input_kept(x23):
    proto = parse(
        """g (float[2,3] X, bool T) => (float[2,3] Y, bool[2,3] M) <float r = {0.0}> {
            a, M = Dropout(X)
            Y = Dropout(a, r, T)
        }""",
        opset=13,
    )
    feeds = dict(x23, T=np.array(False))
    check_kept(proto, feeds)


# ------------------------------------------------------------------------- Cast
def test_cast_to_same_type(x23):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y) {
            a = Cast <to = 1> (X)
            Y = Relu(a)
        }"""
    )
    check_removed(proto, x23, 1)


ROUND_TRIPS = [
    (TensorProto.FLOAT16, TensorProto.FLOAT),
    (TensorProto.FLOAT, TensorProto.DOUBLE),
    (TensorProto.INT8, TensorProto.INT32),
    (TensorProto.UINT8, TensorProto.INT16),
    (TensorProto.BOOL, TensorProto.FLOAT),
    (TensorProto.BOOL, TensorProto.INT64),
]


def _round_trip_model(a: int, b: int, extra_reader: bool = False) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Cast", ["X"], ["m"], to=b),
        helper.make_node("Cast", ["m"], ["r"], to=a),
        helper.make_node("Concat", ["r", "r"], ["Y"], axis=0),
    ]
    outputs = [helper.make_tensor_value_info("Y", a, [4])]
    if extra_reader:
        nodes.append(helper.make_node("Concat", ["m", "m"], ["M"], axis=0))
        outputs.append(helper.make_tensor_value_info("M", b, [4]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", a, [2])], outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _values(elem: int) -> np.ndarray:
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    if dtype == np.bool_:
        return np.array([True, False])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([info.min, info.max], dtype=dtype)
    return np.array([1e-3 / 3, -65504.0 if dtype == np.float16 else 1e30 / 7], dtype=dtype)


@pytest.mark.parametrize("a,b", ROUND_TRIPS)
def test_lossless_cast_round_trip_removed(a, b):
    proto = _round_trip_model(a, b)
    out = check_removed(proto, {"X": _values(a)}, 2)
    assert ops(out) == ["Concat"]


def test_round_trip_with_other_reader_keeps_first_cast():
    a, b = TensorProto.FLOAT16, TensorProto.FLOAT
    proto = _round_trip_model(a, b, extra_reader=True)
    out = check_removed(proto, {"X": _values(a)}, 1)
    assert ops(out) == ["Cast", "Concat", "Concat"]


@pytest.mark.parametrize(
    "a,b,values",
    [
        (TensorProto.FLOAT, TensorProto.FLOAT16, np.array([1e-12, 123456.7], dtype=np.float32)),
        (TensorProto.FLOAT, TensorProto.INT32, np.array([1.7, -2.5], dtype=np.float32)),
        (TensorProto.INT64, TensorProto.FLOAT, np.array([2**40 + 1, -3], dtype=np.int64)),
    ],
)
def test_lossy_cast_round_trip_kept(a, b, values):
    proto = _round_trip_model(a, b)
    out, _ = apply(proto, "remove-noops")
    assert ops(out) == ops(proto)
    assert_equivalent(proto, out, {"X": values})


# ------------------------------------------------------------- Reshape, Flatten
def test_reshape_and_flatten_same_static_shape(rng):
    proto = parse(
        """g (float[2,3,4] X) => (float[2,12] Y) <int64[3] s = {0, -1, 4}, int64[3] t = {2, 3, 4}> {
            a = Reshape(X, s)
            b = Reshape <allowzero = 1> (a, t)
            c = Flatten <axis = 1> (b)
            d = Flatten <axis = -1> (c)
            Y = Relu(d)
        }"""
    )
    out = check_removed(proto, {"X": rng.standard_normal((2, 3, 4)).astype(np.float32)}, 3)
    assert ops(out) == ["Flatten", "Relu"]


def test_reshape_provable_identity_with_symbolic_dim(rng):
    proto = parse(
        """g (float[N,3,4] X) => (float[N,3,4] Y) <int64[3] s = {-1, 3, 4}, int64[3] z = {0, 0, 0}> {
            a = Reshape(X, s)
            b = Reshape(a, z)
            Y = Relu(b)
        }"""
    )
    feeds = [{"X": rng.standard_normal((n, 3, 4)).astype(np.float32)} for n in (1, 5)]
    check_removed(proto, feeds, 2)


def test_reshape_with_symbolic_batch_kept(rng):
    # Identity only when N == 1: it must stay, or a batch of 2 would stop failing.
    proto = parse(
        """g (float[N,3,4] X) => (float[1,3,4] Y) <int64[3] s = {1, 3, 4}> {
            a = Reshape(X, s)
            Y = Relu(a)
        }"""
    )
    check_kept(proto, {"X": rng.standard_normal((1, 3, 4)).astype(np.float32)})


def test_reshape_minus_one_next_to_symbolic_dim_kept(rng):
    # identity for N > 0, but -1 is not provable when another dim is symbolic
    proto = parse(
        """g (float[N,3,4] X) => (float[N,3,4] Y) <int64[3] s = {0, -1, 4}> {
            a = Reshape(X, s)
            Y = Relu(a)
        }"""
    )
    check_kept(proto, {"X": rng.standard_normal((2, 3, 4)).astype(np.float32)})


def test_reshape_trusts_no_declared_shape():
    # value_info claims ``a`` is [2,3,4]; its real shape is [2,12].
    proto = parse(
        """g (float[2,12] X) => (float[2,3,4] Y) <int64[3] s = {2, 3, 4}> {
            a = Relu(X)
            Y = Reshape(a, s)
        }"""
    )
    proto.graph.value_info.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3, 4]))
    out, result, _ = run_once(proto, "remove-noops")
    assert not result.modified
    assert ops(out) == ["Relu", "Reshape"]


# ----------------------------------------------------------- Transpose, Pad, Slice
def test_transpose_pad_slice_noops(rng):
    proto = parse(
        """g (float[N,3,4] X) => (float[N,3,4] Y)
        <int64[6] p = {0,0,0,0,0,0}, int64[2] st = {0, 0}, int64[2] en = {9223372036854775807, 4},
         int64[2] ax = {0, -1}, int64[2] sp = {1, 1}, int64[1] st1 = {0}, int64[1] en1 = {2147483647}> {
            a = Transpose <perm = [0, 1, 2]> (X)
            b = Pad(a, p)
            c = Pad <mode = "reflect"> (b, p)
            d = Slice(c, st, en, ax, sp)
            e = Slice(d, st1, en1)
            Y = Relu(e)
        }"""
    )
    feeds = [{"X": rng.standard_normal((n, 3, 4)).astype(np.float32)} for n in (2, 3)]
    out = check_removed(proto, feeds, 5)
    assert ops(out) == ["Relu"]


def test_slice_and_transpose_that_change_something_kept(rng):
    proto = parse(
        """g (float[N,3,4] X) => (float[N,4,2] Y)
        <int64[1] st = {0}, int64[1] en = {2}, int64[1] ax = {2}, int64[1] en2 = {100000}, int64[1] ax0 = {0}> {
            a = Transpose <perm = [0, 2, 1]> (X)
            b = Slice(a, st, en, ax)
            Y = Slice(b, st, en2, ax0)
        }"""
    )
    check_kept(proto, {"X": rng.standard_normal((2, 3, 4)).astype(np.float32)})


# --------------------------------------------------------------- arithmetic
def test_arithmetic_neutral_constants(rng):
    proto = parse(
        """g (float[2,3,4] X) => (float[2,3,4] Y)
        <float[1,4] one = {1,1,1,1}, float zero = {0}, float[3,1] z31 = {0,0,0}, float[1,1,1] o = {1}> {
            a = Mul(X, one)
            b = Mul(one, a)
            c = Add(zero, b)
            d = Sub(c, z31)
            e = Div(d, o)
            f = Add(e, z31)
            Y = Relu(f)
        }"""
    )
    out = check_removed(proto, {"X": rng.standard_normal((2, 3, 4)).astype(np.float32)}, 6)
    assert ops(out) == ["Relu"]


def test_integer_mul_by_one(rng):
    proto = parse(
        """g (int64[2,3] X) => (int64[2,3] Y, int64[2,3] Z) <int64[3] one = {1,1,1}> {
            a = Mul(X, one)
            Y = Neg(a)
            Z = Mul(X, one)
        }"""
    )
    # the second Mul writes a graph output from a graph input: bypass_node keeps it
    out = check_removed(proto, {"X": rng.integers(-9, 9, (2, 3))}, 1)
    assert ops(out) == ["Neg", "Mul"]


def test_mul_by_ones_that_broadcasts_kept(rng):
    proto = parse(
        """g (float[1,4] X) => (float[3,4] Y) <float[3,1] one = {1,1,1}> {
            a = Mul(X, one)
            b = Relu(a)
            Y = Sub(b, one)
        }"""
    )
    check_kept(proto, {"X": rng.standard_normal((1, 4)).astype(np.float32)})


def test_non_neutral_or_left_side_kept(rng):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y) <float[3] z = {0,0,0}, float[3] one = {1,1,1}, float[3] h = {1,1,0.5}> {
            a = Sub(z, X)
            b = Div(one, a)
            c = Mul(b, h)
            Y = Relu(c)
        }"""
    )
    check_kept(proto, {"X": rng.standard_normal((2, 3)).astype(np.float32) + 3})


# ---------------------------------------------------------------- subgraphs
def _if_model() -> onnx.ModelProto:
    then_branch = helper.make_graph(
        [helper.make_node("Identity", ["X"], ["t_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2, 3])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("Relu", ["X"], ["e_mid"]),
            helper.make_node("Identity", ["e_mid"], ["e_id"]),
            helper.make_node("Identity", ["e_id"], ["e_out"]),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 3])],
    )
    graph = helper.make_graph(
        [
            helper.make_node("If", ["C"], ["r"], then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Identity", ["r"], ["Y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("C", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_identity_in_if_branch(x23):
    proto = _if_model()
    feeds = [dict(x23, C=np.array(c)) for c in (True, False)]
    out = check_removed(proto, feeds, 3)  # main Identity + the two in the else branch
    if_node = out.graph.node[0]
    branches = {a.name: a.g for a in if_node.attribute}
    # the then-branch returns an outer-scope value: its Identity must stay
    assert [n.op_type for n in branches["then_branch"].node] == ["Identity"]
    assert [n.op_type for n in branches["else_branch"].node] == ["Relu"]
    assert branches["else_branch"].node[0].output[0] == "e_out"


def test_local_function_with_attribute_reference(x23):
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2,3] X) => (float[2,3] Y) {
            Y = local.f <t = 1> (X)
        }
        <domain: "local", opset_import: ["" : 17]>
        f <t> (x) => (y) {
            a = Identity(x)
            b = Cast <to: int = @t> (a)
            c = Relu(b)
            y = Identity(c)
        }"""
    )
    out, records = apply(proto, "remove-noops")
    assert records[0].stats == {"nodes_removed": 2, "identity": 2}
    # both Identity nodes of the function go; the Cast (``to`` unknown inside) stays
    assert [n.op_type for n in out.functions[0].node] == ["Cast", "Relu"]
    assert_equivalent(proto, out, x23)
    _, again, _ = run_once(out, "remove-noops")
    assert again.modified is False
