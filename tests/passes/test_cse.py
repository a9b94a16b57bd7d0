"""Tests of the eliminate-common-subexpressions pass, checked in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from tests.conftest import apply, assert_equivalent, run_once

HEADER = '<ir_version: 8, opset_import: ["" : {opset}]>\n'
CSE = "eliminate-common-subexpressions"


def parse(text: str, opset: int = 17) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEADER.replace("{opset}", str(opset)) + text)
    onnx.checker.check_model(model, full_check=True)
    return model


def ops(graph: onnx.GraphProto) -> list[str]:
    return [n.op_type for n in graph.node]


def merge(proto, feeds, merged: int) -> onnx.ModelProto:
    """Run CSE to a fixed point; compare in ORT; check counts and idempotency."""
    out, records = apply(proto, CSE)
    assert_equivalent(proto, out, feeds)
    assert records[0].stats["nodes_merged"] == merged
    assert records[0].modified == (merged > 0)
    _, again, _ = run_once(out, CSE)
    assert again.modified is False and again.stats["nodes_merged"] == 0
    assert [o.name for o in out.graph.output] == [o.name for o in proto.graph.output]
    return out


@pytest.fixture
def x(rng):
    return {"X": rng.standard_normal((2, 3)).astype(np.float32)}


def test_duplicate_unary_merged(x):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y) {
            a = Relu(X)
            b = Relu(X)
            Y = Add(a, b)
        }"""
    )
    out = merge(proto, x, 1)
    assert ops(out.graph) == ["Relu", "Add"]
    assert list(out.graph.node[1].input) == ["a", "a"]


def test_chain_of_duplicates_collapses_in_one_run(x):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y) {
            a1 = Relu(X)
            a2 = Relu(X)
            b1 = Sigmoid(a1)
            b2 = Sigmoid(a2)
            c1 = Mul(b1, X)
            c2 = Mul(b2, X)
            Y = Sub(c1, c2)
        }"""
    )
    out, records = apply(proto, CSE)
    assert records[0].stats["nodes_merged"] == 3 and not records[1].modified
    assert ops(out.graph) == ["Relu", "Sigmoid", "Mul", "Sub"]
    assert_equivalent(proto, out, x)


def test_different_attributes_or_inputs_kept(x):
    proto = parse(
        """g (float[2,3] X, float[2,3] Z) => (float[2,3] Y) {
            a = LeakyRelu<alpha=0.1>(X)
            b = LeakyRelu<alpha=0.2>(X)
            c = LeakyRelu(X)
            d = LeakyRelu<alpha=0.01>(X)
            e = Sub(X, Z)
            f = Sub(Z, X)
            s1 = Add(a, b)
            s2 = Add(c, d)
            s3 = Add(e, f)
            s4 = Add(s1, s2)
            Y = Add(s4, s3)
        }"""
    )
    feeds = dict(x, Z=np.ones((2, 3), np.float32))
    # LeakyRelu without alpha means alpha=0.01, but a missing attribute is not
    # compared to its default: c and d stay apart (conservative).
    out = merge(proto, feeds, 0)
    assert len(out.graph.node) == len(proto.graph.node)


def test_signed_zero_float_attributes_differ():
    proto = parse(
        """g (float[2] X) => (float[2] Y) {
            a = Constant<value_float=0.0>()
            b = Constant<value_float=-0.0>()
            c = Div(X, a)
            d = Div(X, b)
            Y = Add(c, d)
        }"""
    )
    feeds = {"X": np.array([1.0, -2.0], np.float32)}
    out, records = apply(proto, CSE)
    assert not records[0].modified and ops(out.graph).count("Constant") == 2
    with np.errstate(all="ignore"):
        assert_equivalent(proto, out, feeds)


def test_constant_tensors_compared_by_value(x):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y) {
            a = Constant<value=float[3] {1, 2, 3}>()
            b = Constant<value=float[3] {1, 2, 3}>()
            c = Constant<value=float[3] {1, 2, 4}>()
            d = Constant<value=double[3] {1, 2, 3}>()
            p = Add(X, a)
            q = Add(X, b)
            r = Add(X, c)
            dd = Cast<to=1>(d)
            s = Add(X, dd)
            t = Add(p, q)
            u = Add(r, s)
            Y = Add(t, u)
        }"""
    )
    out = merge(proto, x, 2)  # b -> a, then q -> p
    assert ops(out.graph).count("Constant") == 3


def test_random_ops_never_merged():
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y, float[2,3] Z) {
            a = RandomNormalLike(X)
            b = RandomNormalLike(X)
            c = RandomUniform<shape=[2,3]>()
            d = RandomUniform<shape=[2,3]>()
            e = Bernoulli(X)
            f = Bernoulli(X)
            s1 = Add(a, b)
            s2 = Add(c, d)
            s3 = Add(e, f)
            s4 = Add(s1, s2)
            Y = Add(s4, s3)
            Z = Sub(a, b)
        }"""
    )
    out, records = apply(proto, CSE)
    assert not records[0].modified
    assert ops(out.graph) == ops(proto.graph)
    # Two draws are two draws: a - b is not all zeros.
    from tests.conftest import run_ort

    feeds = {"X": np.full((2, 3), 0.5, np.float32)}
    _, z = run_ort(out, feeds)
    assert np.any(z != 0)


def test_both_graph_outputs_kept(x):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] A, float[2,3] B) {
            A = Relu(X)
            B = Relu(X)
        }"""
    )
    out = merge(proto, x, 0)
    assert ops(out.graph) == ["Relu", "Relu"]


def test_later_graph_output_keeps_its_name(x):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y, float[2,3] B) {
            a = Relu(X)
            s = Sigmoid(a)
            B = Relu(X)
            Y = Add(s, B)
        }"""
    )
    out = merge(proto, x, 1)
    assert ops(out.graph) == ["Relu", "Sigmoid", "Add"]
    assert list(out.graph.node[0].output) == ["B"]
    assert list(out.graph.node[1].input) == ["B"]


def test_earlier_graph_output_kept(x):
    proto = parse(
        """g (float[2,3] X) => (float[2,3] A, float[2,3] Y) {
            A = Relu(X)
            b = Relu(X)
            Y = Sigmoid(b)
        }"""
    )
    out = merge(proto, x, 1)
    assert ops(out.graph) == ["Relu", "Sigmoid"] and list(out.graph.node[1].input) == ["A"]


def test_multi_output_nodes_merged(rng):
    proto = parse(
        """g (float[4,6] X) => (float[4,3] Y) {
            a1, b1 = Split<axis=1, num_outputs=2>(X)
            a2, b2 = Split<axis=1, num_outputs=2>(X)
            p = Mul(a1, b2)
            q = Mul(b1, a2)
            Y = Sub(p, q)
        }""",
        opset=18,
    )
    feeds = {"X": rng.standard_normal((4, 6)).astype(np.float32)}
    out = merge(proto, feeds, 1)
    assert ops(out.graph) == ["Split", "Mul", "Mul", "Sub"]


def test_omitted_optional_output_not_merged_with_present(rng):
    proto = parse(
        """g (float[1,1,4,4] X) => (float[1,1,2,2] Y, int64[1,1,2,2] I) {
            v1 = MaxPool<kernel_shape=[2,2], strides=[2,2]>(X)
            v2, I = MaxPool<kernel_shape=[2,2], strides=[2,2]>(X)
            Y = Add(v1, v2)
        }"""
    )
    feeds = {"X": rng.standard_normal((1, 1, 4, 4)).astype(np.float32)}
    out, records = apply(proto, CSE)
    assert not records[0].modified
    assert_equivalent(proto, out, feeds)


def test_inside_if_branch_like_silero(rng):
    # silero_vad: three identical Cast(Not_output_0) inside one If branch.
    proto = parse(
        """g (bool[3] B, bool C) => (float[3] Y) {
            n = Not(B)
            Y = If(C) <then_branch = t () => (float[3] a) {
                    c1 = Cast<to=1>(n)
                    c2 = Cast<to=1>(n)
                    c3 = Cast<to=1>(n)
                    s = Add(c1, c2)
                    a = Add(s, c3)
                }, else_branch = e () => (float[3] b) {
                    b = Cast<to=1>(n)
                }>
        }"""
    )
    feeds = [{"B": np.array([True, False, True]), "C": np.array(c)} for c in (True, False)]
    out = merge(proto, feeds, 2)
    then = out.graph.node[1].attribute[0].g
    assert ops(then) == ["Cast", "Add", "Add"]


def test_nodes_with_subgraphs_not_merged():
    proto = parse(
        """g (float[2] X, bool C) => (float[2] Y) {
            a = If(C) <then_branch = t () => (float[2] p) { p = Relu(X) },
                       else_branch = e () => (float[2] q) { q = Neg(X) }>
            b = If(C) <then_branch = t2 () => (float[2] p2) { p2 = Relu(X) },
                       else_branch = e2 () => (float[2] q2) { q2 = Neg(X) }>
            Y = Add(a, b)
        }"""
    )
    out, records = apply(proto, CSE)
    assert not records[0].modified and ops(out.graph) == ["If", "If", "Add"]


def test_custom_domain_not_merged(x):
    proto = onnx.parser.parse_model(
        """<ir_version: 8, opset_import: ["" : 17, "custom" : 1]>
        g (float[2,3] X) => (float[2,3] Y) {
            a = custom.Stateful(X)
            b = custom.Stateful(X)
            Y = Add(a, b)
        }"""
    )
    out, result, _ = run_once(proto, CSE)
    assert not result.modified and ops(out.graph) == ["Stateful", "Stateful", "Add"]


def test_in_lossless_recipe_after_merged_initializers(x):
    # Two equal initializers are distinct tensors: merge-initializers unifies them,
    # then CSE merges the two Adds (in the fixed point of the recipe).
    proto = parse(
        """g (float[2,3] X) => (float[2,3] Y) <float[3] w1 = {1, 2, 3}, float[3] w2 = {1, 2, 3}> {
            a = Add(X, w1)
            b = Add(X, w2)
            Y = Mul(a, b)
        }"""
    )
    out, _ = apply(proto, "merge-initializers", CSE, "eliminate-dead-code")
    assert ops(out.graph) == ["Add", "Mul"]
    assert_equivalent(proto, out, x)
