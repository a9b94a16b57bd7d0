"""Tests of the simplify-reshape pass: constant targets for run-time shapes and
collapsed reshape chains, every rewrite checked in onnxruntime at several sizes of
the dynamic dims."""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxpress.graph import infer_shapes, load
from tests.conftest import apply, assert_equivalent, run_once

HEADER = '<ir_version: 8, opset_import: ["" : {opset}]>\n'
PIPELINE = ("simplify-reshape", "eliminate-dead-code")


def parse(text: str, opset: int = 17) -> onnx.ModelProto:
    model = onnx.parser.parse_model(HEADER.replace("{opset}", str(opset)) + text)
    onnx.checker.check_model(model, full_check=True)
    return model


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node if n.op_type != "Constant"]


def targets(model: onnx.ModelProto) -> list[list[int] | None]:
    """The constant target of every Reshape of the main graph (None: computed)."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            inits[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    return [
        inits[n.input[1]].tolist() if n.input[1] in inits else None
        for n in model.graph.node
        if n.op_type == "Reshape"
    ]


def out_shape(model: onnx.ModelProto, name: str):
    return infer_shapes(load(model))[name].shape


def simplify(proto, feeds_list):
    """Run simplify-reshape + DCE, compare in ORT, check idempotency."""
    out, records = apply(proto, *PIPELINE)
    assert_equivalent(proto, out, feeds_list)
    _, again, _ = run_once(out, "simplify-reshape")
    assert again.modified is False
    assert again.stats["constant_shapes"] == 0 and again.stats["chains_collapsed"] == 0
    return out, records


def first_stats(records):
    return next(r for r in records if r.name == "simplify-reshape").stats


def feeds_x(rng, *shapes, name="X"):
    return [{name: rng.standard_normal(s).astype(np.float32)} for s in shapes]


# ------------------------------------------------------------- constant targets
BATCH_CHAIN = """g (float[N,3,8,8] X) => (float[N,192] Y) {
    s = Shape(X)
    i0 = Constant<value=int64 {0}>()
    n = Gather<axis=0>(s, i0)
    nn = Unsqueeze(n, ax)
    c = Constant<value=int64[1] {192}>()
    t = Concat<axis=0>(nn, c)
    Y = Reshape(X, t)
}"""


@pytest.mark.parametrize("opset", [12, 14, 17])
def test_batch_chain_becomes_constant_and_keeps_batch_symbolic(rng, opset):
    text = BATCH_CHAIN
    if opset < 13:
        text = text.replace("Unsqueeze(n, ax)", "Unsqueeze<axes=[0]>(n)")
    else:
        text = text.replace("nn = Unsqueeze", "ax = Constant<value=int64[1] {0}>()\n    nn = Unsqueeze")
    proto = parse(text, opset)
    out, records = simplify(proto, feeds_x(rng, (1, 3, 8, 8), (5, 3, 8, 8)))
    assert ops(out) == ["Reshape"]
    assert targets(out) == [[0, 192]]
    assert first_stats(records)["constant_shapes"] == 1
    # The batch stays symbolic: inferred from the input, never pinned.
    assert out_shape(out, "Y") == ("N", 192)
    assert [d.dim_param for d in out.graph.input[0].type.tensor_type.shape.dim][:1] == ["N"]


def test_product_of_dims_becomes_minus_one(rng):
    # [N, W, 4] -> [N * W, 4]: one unknown entry, the rest exact.
    proto = parse(
        """g (float[N,W,4] X) => (float[M,4] Y) {
            s = Shape(X)
            a = Gather<axis=0>(s, i0)
            b = Gather<axis=0>(s, i1)
            p = Mul(a, b)
            pp = Unsqueeze(p, ax)
            t = Concat<axis=0>(pp, four)
            Y = Reshape(X, t)
        }""".replace(
            "{\n", "{\n i0 = Constant<value=int64 {0}>()\n i1 = Constant<value=int64 {1}>()\n"
            " ax = Constant<value=int64[1] {0}>()\n four = Constant<value=int64[1] {4}>()\n", 1
        )
    )
    feeds = feeds_x(rng, (1, 32, 4), (5, 96, 4))
    out, _ = simplify(proto, feeds)
    assert targets(out) == [[-1, 4]]


def test_slice_of_shape_and_cast_chain_opset12(rng):
    # The PP-OCR pattern: [Shape(x)[0:2], -1] through int32 casts, opset 12 (where
    # onnx's Reshape inference does not see through the run-time target).
    proto = parse(
        """g (float[N,120,H,W] X) => (float[A,B,C] Y) {
            s = Shape(X)
            s32 = Cast<to=6>(s)
            st = Constant<value=int64[1] {0}>()
            en = Constant<value=int64[1] {2}>()
            sl = Slice(s32, st, en, st)
            sl64 = Cast<to=7>(sl)
            m1 = Constant<value=int64[1] {-1}>()
            t = Concat<axis=0>(sl64, m1)
            Y = Reshape(X, t)
        }""",
        opset=12,
    )
    out, _ = simplify(proto, feeds_x(rng, (1, 120, 1, 8), (3, 120, 2, 40)))
    assert targets(out) == [[0, 120, -1]]
    assert ops(out) == ["Reshape"]


def test_follow_up_reshape_needs_reinferred_shapes(rng):
    # The second target reads a dim of the first Reshape's output, whose shape
    # opset-12 inference learns only after the first target became constant.
    proto = parse(
        """g (float[N,4,W] X) => (float[A,B,C] Y) {
            s = Shape(X)
            i0 = Constant<value=int64 {0}>()
            n = Gather<axis=0>(s, i0)
            nn = Unsqueeze<axes=[0]>(n)
            m1 = Constant<value=int64[1] {-1}>()
            t1 = Concat<axis=0>(nn, m1)
            r = Reshape(X, t1)
            q = Relu(r)
            s2 = Shape(q)
            i1 = Constant<value=int64 {1}>()
            k = Gather<axis=0>(s2, i1)
            kk = Unsqueeze<axes=[0]>(k)
            one = Constant<value=int64[1] {1}>()
            t2 = Concat<axis=0>(nn, kk, one)
            Y = Reshape(q, t2)
        }""",
        opset=12,
    )
    out, records = simplify(proto, feeds_x(rng, (1, 4, 8), (5, 4, 16)))
    assert targets(out) == [[0, -1], [0, 0, 1]]
    assert first_stats(records)["constant_shapes"] == 2
    assert ops(out) == ["Reshape", "Relu", "Reshape"]


def test_two_unknown_dims_left_alone(rng):
    # [N, W, 4] -> [N * 4, W]: entry 0 is a product, entry 1 is dim 2 of the input
    # at position 1 (W != 4): two unknowns, no constant target proves both.
    proto = parse(
        """g (float[N,4,W] X) => (float[A,B] Y) {
            s = Shape(X)
            i0 = Constant<value=int64 {0}>()
            i2 = Constant<value=int64 {2}>()
            four = Constant<value=int64 {4}>()
            a = Gather<axis=0>(s, i0)
            w = Gather<axis=0>(s, i2)
            p = Mul(a, four)
            pp = Unsqueeze(p, ax)
            ww = Unsqueeze(w, ax)
            t = Concat<axis=0>(pp, ww)
            Y = Reshape(X, t)
        }""".replace("{\n", "{\n ax = Constant<value=int64[1] {0}>()\n", 1)
    )
    out, records = apply(proto, "simplify-reshape")
    assert not any(r.modified for r in records)
    assert targets(out) == [None]
    assert_equivalent(proto, out, feeds_x(rng, (2, 4, 3)))


def test_other_input_dim_is_not_copied(rng):
    # Dim 0 of the target comes from another input (symbol M != N): never a 0
    # (copy of N). With one unknown it becomes -1; with an explicit -1 besides, the
    # node is left alone.
    body = """g (float[N,3,8,8] X, float[M,5] Z) => (float[A,B] Y) {
            s = Shape(Z)
            i0 = Constant<value=int64 {0}>()
            m = Gather<axis=0>(s, i0)
            mm = Unsqueeze(m, ax)
            c = Constant<value=int64[1] {LAST}>()
            t = Concat<axis=0>(mm, c)
            Y = Reshape(X, t)
        }""".replace("{\n", "{\n ax = Constant<value=int64[1] {0}>()\n", 1)
    feeds = [
        {"X": rng.standard_normal((n, 3, 8, 8)).astype(np.float32), "Z": np.zeros((n, 5), np.float32)}
        for n in (1, 5)
    ]
    proto = parse(body.replace("LAST", "192"))
    out, _ = simplify(proto, feeds)
    assert targets(out) == [[-1, 192]]
    proto = parse(body.replace("LAST", "-1"))
    out, records = apply(proto, "simplify-reshape")
    assert not any(r.modified for r in records) and targets(out) == [None]
    assert_equivalent(proto, out, feeds)


def test_same_symbol_of_another_tensor_is_copied(rng):
    # Dim 0 read from Z whose dim 0 carries the input's symbol N: provably a copy.
    proto = parse(
        """g (float[N,3,8,8] X, float[N,5] Z) => (float[A,B] Y) {
            s = Shape(Z)
            i0 = Constant<value=int64 {0}>()
            m = Gather<axis=0>(s, i0)
            mm = Unsqueeze(m, ax)
            c = Constant<value=int64[1] {-1}>()
            t = Concat<axis=0>(mm, c)
            Y = Reshape(X, t)
        }""".replace("{\n", "{\n ax = Constant<value=int64[1] {0}>()\n", 1)
    )
    feeds = [
        {"X": rng.standard_normal((n, 3, 8, 8)).astype(np.float32), "Z": np.zeros((n, 5), np.float32)}
        for n in (1, 5)
    ]
    out, _ = simplify(proto, feeds)
    assert targets(out) == [[0, -1]]


def test_allowzero_and_unknown_rank_refused(rng):
    # Y: allowzero=1. Z: its input r comes from a Reshape to a run-time shape of
    # unknown length, so r's rank is unknown.
    proto = parse(
        """g (float[N,3,8,8] X, float[K] R, int64[L] S) => (float[A,B] Y, float[C,D] Z) {
            s = Shape(X)
            i0 = Constant<value=int64 {0}>()
            n = Gather<axis=0>(s, i0)
            nn = Unsqueeze(n, ax)
            c = Constant<value=int64[1] {192}>()
            t = Concat<axis=0>(nn, c)
            Y = Reshape<allowzero=1>(X, t)
            r = Reshape(R, S)
            Z = Reshape(r, t)
        }""".replace("{\n", "{\n ax = Constant<value=int64[1] {0}>()\n", 1)
    )
    out, records = apply(proto, "simplify-reshape")
    assert not any(r.modified for r in records)
    assert targets(out) == [None, None, None]
    feeds = {"X": rng.standard_normal((2, 3, 8, 8)).astype(np.float32),
             "R": rng.standard_normal(384).astype(np.float32), "S": np.array([4, 96])}  # fmt: skip
    assert_equivalent(proto, out, feeds)


def test_declared_output_shape_is_not_trusted(rng):
    # The model declares Y as [1, 6] (wrong, like ddddocr's); the real output is [N, 6].
    proto = parse(
        """g (float[N,2,3] X) => (float[1,6] Y) {
            s = Shape(X)
            i0 = Constant<value=int64 {0}>()
            n = Gather<axis=0>(s, i0)
            nn = Unsqueeze(n, ax)
            m1 = Constant<value=int64[1] {-1}>()
            t = Concat<axis=0>(nn, m1)
            Y = Reshape(X, t)
        }""".replace("{\n", "{\n ax = Constant<value=int64[1] {0}>()\n", 1)
    )
    out, _ = simplify(proto, feeds_x(rng, (1, 2, 3), (4, 2, 3)))
    assert targets(out) == [[0, -1]]


def test_inside_if_branch(rng):
    proto = parse(
        """g (float[N,3,4] X, bool C) => (float[A,B] Y) {
            Y = If(C) <then_branch = t () => (float[P,Q] a) {
                    s = Shape(X)
                    i0 = Constant<value=int64 {0}>()
                    n = Gather<axis=0>(s, i0)
                    nn = Unsqueeze(n, ax)
                    k = Constant<value=int64[1] {12}>()
                    tt = Concat<axis=0>(nn, k)
                    a = Reshape(X, tt)
                }, else_branch = e () => (float[P,Q] b) {
                    k2 = Constant<value=int64[2] {-1, 4}>()
                    b = Reshape(X, k2)
                }>
        }""".replace("Shape(X)\n", "Shape(X)\n                    ax = Constant<value=int64[1] {0}>()\n", 1)
    )
    feeds = [
        {"X": rng.standard_normal((n, 3, 4)).astype(np.float32), "C": np.array(c)}
        for n in (1, 5)
        for c in (True, False)
    ]
    out, records = simplify(proto, feeds)
    assert first_stats(records)["constant_shapes"] == 1
    then = out.graph.node[0].attribute[0].g
    assert [n.op_type for n in then.node] == ["Reshape"]


# ------------------------------------------------------------------ chains
def test_reshape_of_reshape(rng):
    proto = parse(
        """g (float[2,3,4] X) => (float[4,6] Y) {
            a = Constant<value=int64[2] {6, 4}>()
            b = Constant<value=int64[2] {4, 6}>()
            r = Reshape(X, a)
            Y = Reshape(r, b)
        }"""
    )
    out, records = simplify(proto, feeds_x(rng, (2, 3, 4)))
    assert ops(out) == ["Reshape"] and targets(out) == [[4, 6]]
    assert first_stats(records)["chains_collapsed"] == 1


def test_reshape_of_reshape_first_kept_when_read_elsewhere(rng):
    proto = parse(
        """g (float[N,3,4] X) => (float[A,B] Y, float[C,D] Z) {
            a = Constant<value=int64[2] {-1, 4}>()
            b = Constant<value=int64[2] {-1, 2}>()
            r = Reshape(X, a)
            Y = Reshape(r, b)
            Z = Relu(r)
        }"""
    )
    out, _ = simplify(proto, feeds_x(rng, (1, 3, 4), (5, 3, 4)))
    assert ops(out) == ["Reshape", "Reshape", "Relu"]
    assert [n.input[0] for n in out.graph.node if n.op_type == "Reshape"] == ["X", "X"]


def test_reshape_of_reshape_intermediate_is_graph_output(rng):
    proto = parse(
        """g (float[2,3,4] X) => (float[6,4] R, float[4,6] Y) {
            a = Constant<value=int64[2] {6, 4}>()
            b = Constant<value=int64[2] {4, 6}>()
            R = Reshape(X, a)
            Y = Reshape(R, b)
        }"""
    )
    out, _ = simplify(proto, feeds_x(rng, (2, 3, 4)))
    assert ops(out) == ["Reshape", "Reshape"] and [o.name for o in out.graph.output] == ["R", "Y"]


def test_zero_entry_copied_through_first_zero(rng):
    # [N,3,4] -> [0,12] -> [0,3,4]: dim 0 of the intermediate is a copy of N.
    proto = parse(
        """g (float[N,3,4] X) => (float[A,B,C] Y) {
            a = Constant<value=int64[2] {0, 12}>()
            b = Constant<value=int64[3] {0, 4, 3}>()
            r = Reshape(X, a)
            Y = Reshape(r, b)
        }"""
    )
    out, _ = simplify(proto, feeds_x(rng, (1, 3, 4), (5, 3, 4)))
    assert ops(out) == ["Reshape"] and targets(out) == [[0, 4, 3]]


def test_zero_entry_of_a_different_dim_kept(rng):
    # [N,12] -> [-1,4] = [3N,4] -> [0,2,2]: the 0 copies 3N, not N. Must stay.
    proto = parse(
        """g (float[N,12] X) => (float[A,B,C] Y) {
            a = Constant<value=int64[2] {-1, 4}>()
            b = Constant<value=int64[3] {0, 2, 2}>()
            r = Reshape(X, a)
            Y = Reshape(r, b)
        }"""
    )
    out, records = apply(proto, "simplify-reshape")
    assert not any(r.modified for r in records) and ops(out) == ["Reshape", "Reshape"]
    assert_equivalent(proto, out, feeds_x(rng, (1, 12), (5, 12)))


def test_reshape_of_squeeze_and_unsqueeze_and_flatten(rng):
    proto = parse(
        """g (float[N,1,6] X) => (float[A,B,C] Y, float[D,E] Z, float[F,G] W) {
            ax = Constant<value=int64[1] {1}>()
            a = Squeeze(X, ax)
            b = Constant<value=int64[3] {-1, 2, 3}>()
            Y = Reshape(a, b)
            u = Unsqueeze(X, ax)
            c = Constant<value=int64[2] {-1, 3}>()
            Z = Reshape(u, c)
            f = Flatten<axis=2>(X)
            d = Constant<value=int64[2] {-1, 2}>()
            W = Reshape(f, d)
        }"""
    )
    out, records = simplify(proto, feeds_x(rng, (1, 1, 6), (5, 1, 6)))
    assert ops(out) == ["Reshape", "Reshape", "Reshape"]
    assert all(n.input[0] == "X" for n in out.graph.node if n.op_type == "Reshape")
    assert first_stats(records)["chains_collapsed"] == 3


def test_dynamic_chain_then_collapse(rng):
    # The second target becomes constant ([0, -1]: dim 0 of r carries N), then the
    # chain collapses (its 0 copies dim 0 of r, itself a copy of X's).
    proto = parse(
        """g (float[N,3,4] X) => (float[A,B] Y) {
            a = Constant<value=int64[2] {0, -1}>()
            r = Reshape(X, a)
            s = Shape(X)
            i0 = Constant<value=int64 {0}>()
            n = Gather<axis=0>(s, i0)
            nn = Unsqueeze(n, ax)
            k = Constant<value=int64[1] {-1}>()
            t = Concat<axis=0>(nn, k)
            Y = Reshape(r, t)
        }""".replace("{\n", "{\n ax = Constant<value=int64[1] {0}>()\n", 1)
    )
    out, records = simplify(proto, feeds_x(rng, (1, 3, 4), (5, 3, 4)))
    assert ops(out) == ["Reshape"] and targets(out) == [[0, -1]]
    assert out.graph.node[0].input[0] == "X"
    stats = first_stats(records)
    assert stats["constant_shapes"] == 1 and stats["chains_collapsed"] == 1


def test_intermediate_dim_differs_so_no_copy(rng):
    # [N,3,4] -> [-1,4] = [3N,4], then target [Shape(X)[0], -1]: N is not dim 0 of
    # the intermediate (3N), and the -1 is already used: left alone.
    proto = parse(
        """g (float[N,3,4] X) => (float[A,B] Y) {
            a = Constant<value=int64[2] {-1, 4}>()
            r = Reshape(X, a)
            s = Shape(X)
            i0 = Constant<value=int64 {0}>()
            n = Gather<axis=0>(s, i0)
            nn = Unsqueeze(n, ax)
            k = Constant<value=int64[1] {-1}>()
            t = Concat<axis=0>(nn, k)
            Y = Reshape(r, t)
        }""".replace("{\n", "{\n ax = Constant<value=int64[1] {0}>()\n", 1)
    )
    out, records = apply(proto, "simplify-reshape")
    assert not any(r.modified for r in records) and targets(out) == [[-1, 4], None]
    assert_equivalent(proto, out, feeds_x(rng, (1, 3, 4), (5, 3, 4)))


# ------------------------------------------------------------------ real model
@pytest.mark.real
def test_ddddocr_keeps_its_real_output_shape():
    from onnxpress.testing import realmodels as rm

    path = rm.fetch("ddddocr")
    proto = onnx.load(str(path))
    out, records = apply(proto, "lift-constants", "fold-constants", "simplify-reshape", "eliminate-dead-code")
    found = [t for t in targets(out) if t is not None]
    assert [-1, 1024] in found
    assert all(t.count(-1) <= 1 for t in found)
    feeds = rm.real_inputs("ddddocr", n=2, seed=0)
    assert_equivalent(proto, out, feeds, rtol=1e-4, atol=1e-5)
    from tests.conftest import run_ort

    for feed in feeds:
        (y,) = run_ort(out, feed)
        assert y.ndim == 3 and y.shape[1:] == (1, 8210)  # [T, 1, 8210], not the declared [1, seqlen]
