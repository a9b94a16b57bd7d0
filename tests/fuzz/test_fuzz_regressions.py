"""Failures found by the fuzz tests, each reduced to a small explicit model.

Every test names the pass and what went wrong; the checks are the fuzz tests'
own (:mod:`tests.fuzz.checks`): valid model, same signature, same outputs at two
sizes of each dynamic dimension, and a second run that modifies nothing.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx.parser

from tests.fuzz.checks import check_lossless_pass, check_lossless_recipe
from tests.fuzz.strategies import FuzzModel

HEADER = '<ir_version: 8, opset_import: ["" : 17]>\n'


def fuzz_model(text: str, shapes: list[dict[str, tuple]], seed: int = 0, **extra) -> FuzzModel:
    """A FuzzModel of ONNX text with float32 random feeds of the given shapes
    (one dict per size); ``extra`` adds fixed feeds (per size lists)."""
    proto = onnx.parser.parse_model(HEADER + text)
    onnx.checker.check_model(proto, full_check=True)
    rng = np.random.default_rng(seed)
    feeds = []
    for k, size in enumerate(shapes):
        f = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in size.items()}
        f.update({name: values[k] for name, values in extra.items()})
        feeds.append(f)
    return FuzzModel(proto, feeds)


def test_cse_rekeys_readers_when_the_kept_node_writes_a_graph_output() -> None:
    """eliminate-common-subexpressions, not idempotent: ``b`` duplicates ``a`` and
    is a graph output, so ``a``'s node writes ``b`` and ``c = Cast(a)`` now reads
    ``b``; its key in the table of seen nodes still named ``a``, so ``d = Cast(b)``,
    a duplicate of ``c``, was merged only by a second run."""
    fm = fuzz_model(
        """
        g (float[2,8] x) => (float16[2,8] b, float[2,8] c) {
            a = Cast <to = 10> (x)
            c = Cast <to = 1> (a)
            b = Cast <to = 10> (x)
            d = Cast <to = 1> (b)
            e = Add (c, d)
        }
        """,
        [{"x": (2, 8)}] * 2,
    )
    result = check_lossless_pass(fm, "eliminate-common-subexpressions")
    assert result.stats["nodes_merged"] == 2
    check_lossless_recipe(fm)


def test_fold_constants_folds_a_shape_query_whose_index_is_folded_in_the_same_run() -> None:
    """fold-constants, not idempotent: ``Gather(Shape(x), i)`` with a static
    ``x`` dim is folded without onnxruntime only when ``i`` is a constant; here
    ``i = Reshape(2, [1])`` was folded in the same run, so the Gather (and the
    Cast after it) waited for a second run."""
    fm = fuzz_model(
        """
        g (float[N,2,4,4] x) => (float[N,2,4,4] y) <int64[1] two = {2}, int64[1] one = {1}> {
            s = Shape (x)
            i = Reshape (two, one)
            d = Gather <axis = 0> (s, i)
            f = Cast <to = 1> (d)
            y = Div (x, f)
        }
        """,
        [{"x": (1, 2, 4, 4)}, {"x": (3, 2, 4, 4)}],
    )
    result = check_lossless_pass(fm, "fold-constants")
    assert result.stats["nodes_folded"] == 3  # Reshape, Gather, Cast
    check_lossless_recipe(fm)


def test_remove_noops_rechecks_after_a_removal_reveals_shapes() -> None:
    """remove-noops, not idempotent: the Split sizes ``Add(sizes, 0)`` hide the
    Split's output shapes from shape inference, so ``Mul(ones[1,1,1,1], a)`` could
    not be proven a no-op until the Add had been removed, by a second run."""
    fm = fuzz_model(
        """
        g (float[N,1,5,6] x) => (float[N,1,5,1] y)
          <int64[3] sizes = {1, 4, 1}, int64 zero = {0}, float[1,1,1,1] one = {1.0}> {
            s = Add (sizes, zero)
            a, b, c = Split <axis = 3> (x, s)
            y = Mul (one, a)
        }
        """,
        [{"x": (1, 1, 5, 6)}, {"x": (3, 1, 5, 6)}],
    )
    result = check_lossless_pass(fm, "remove-noops")
    assert result.stats["add_zero"] == 1 and result.stats["mul_one"] == 1
    check_lossless_recipe(fm)


NESTED_CONSTANT_IFS = """
    g (float[N,4] x) => (float[N,4] y) <bool c = {1}> {
        y = If (c) <
            then_branch = t1 () => (float[N,4] a) {
                a = If (c) <
                    then_branch = t2 () => (float[N,4] b) { b = Identity (x) },
                    else_branch = e2 () => (float[N,4] b2) { b2 = Relu (x) }
                >
            },
            else_branch = e1 () => (float[N,4] d) { d = Sigmoid (x) }
        >
    }
"""


def test_inline_constant_if_inlines_an_if_moved_up_by_inlining_its_parent() -> None:
    """inline-constant-if, not idempotent: the graphs to visit were listed before
    inlining, so an If with a constant condition inside the taken branch of
    another, moved into the main graph by the first inlining, was left for a
    second run (and Ifs inside untaken branches were inlined in dead graphs)."""
    fm = fuzz_model(NESTED_CONSTANT_IFS, [{"x": (1, 4)}, {"x": (2, 4)}])
    result = check_lossless_pass(fm, "inline-constant-if")
    assert result.stats["ifs_inlined"] == 2
    check_lossless_recipe(fm)


def test_inline_constant_if_does_not_count_ifs_of_dropped_branches() -> None:
    """inline-constant-if: an If inside the untaken branch goes away with it; it
    was inlined inside the dead branch and counted in ``ifs_inlined``."""
    text = NESTED_CONSTANT_IFS.replace("<bool c = {1}>", "<bool c = {0}>")
    fm = fuzz_model(text, [{"x": (1, 4)}, {"x": (2, 4)}])
    result = check_lossless_pass(fm, "inline-constant-if")
    assert result.stats["ifs_inlined"] == 1
    assert result.stats["branch_nodes_dropped"] == 3  # the inner If and both its branches' nodes


def test_fold_constants_keeps_a_folded_scalar_a_scalar() -> None:
    """fold-constants turned every folded scalar into a [1] tensor
    (``np.ascontiguousarray`` returns at least 1-D): ``Gather(shape, Mul(1, 1))``
    then returned [1] instead of a scalar, changing the rank of a graph output
    (onnx.checker: "Inferred shape and existing shape differ in rank")."""
    fm = fuzz_model(
        """
        g (float[N,3] x) => (int64 y, float[N,3] z) <int64 a = {1}, int64 b = {1}> {
            s = Shape (x)
            i = Mul (a, b)
            y = Gather <axis = 0> (s, i)
            d = Gather <axis = 0> (s, a)
            f = Cast <to = 1> (d)
            z = Add (x, f)
        }
        """,
        [{"x": (2, 3)}, {"x": (5, 3)}],
    )
    check_lossless_pass(fm, "fold-constants")
    check_lossless_recipe(fm)


CONV_BN = """
    g (float[N,2,4,4] x, bool k) => (float[N,3,4,4] y, float[N,2,4,4] z)
      <bool c = {1}, float[3,2,1,1] w = {0.5, -0.25, 1.0, 0.75, -0.5, 0.25},
       float[3] s = {1.5, 0.5, -1.0}, float[3] b = {0.1, 0.2, 0.3},
       float[3] m = {0.5, -0.5, 0.0}, float[3] v = {1.0, 2.0, 0.5}> {
        t = Conv (x, w)
        y = BatchNormalization <epsilon = 0.001> (t, s, b, m, v)
        z = If (COND) <
            then_branch = t1 () => (float[N,2,4,4] a) { a = Relu (x) },
            else_branch = e1 () => (float[N,2,4,4] r) { r = Sigmoid (x) q = Relu (t) }
        >
        DEAD
    }
"""
DEAD_IF = """
        dead = If (k) <
            then_branch = t2 () => (float[N,3,4,4] a2) { a2 = Relu (t) },
            else_branch = e2 () => (float[N,3,4,4] b2) { b2 = Sigmoid (t) }
        >
"""


def _conv_bn_model(cond: str, dead: str) -> FuzzModel:
    return fuzz_model(
        CONV_BN.replace("COND", cond).replace("DEAD", dead),
        [{"x": (1, 2, 4, 4)}, {"x": (3, 2, 4, 4)}],
        k=[np.array(True), np.array(False)],
    )


def test_inline_constant_if_detaches_the_untaken_branch() -> None:
    """inline-constant-if left the nodes of the untaken branch registered as
    readers of outer values (``q = Relu(t)`` in the else branch), so fold-batchnorm
    refused ``BatchNormalization(Conv)`` ("'t' has other readers") on the model in
    memory and folded it once the model was exported and reloaded: the lossless
    recipe's fixed point depended on a save/load."""
    from onnxpress.passes import Context, make_pass
    from tests.fuzz.checks import copy_model

    fm = _conv_bn_model("c", "")
    model = copy_model(fm.proto)
    assert make_pass("inline-constant-if").run(model, Context()).modified
    assert make_pass("fold-batchnorm").run(model, Context()).stats.get("bn_conv") == 1
    check_lossless_recipe(fm)


def test_eliminate_dead_code_detaches_the_subgraphs_of_removed_nodes() -> None:
    """eliminate-dead-code removed the dead ``If(k)`` (and the dead ``q = Relu(t)``
    of a live branch) but left the If's branch nodes registered as readers of
    ``t``: fold-batchnorm then refused to fold the BatchNormalization reading
    ``t`` in memory, and folded it after a reload."""
    from onnxpress.passes import Context, make_pass
    from tests.fuzz.checks import copy_model

    fm = _conv_bn_model("k", DEAD_IF)
    model = copy_model(fm.proto)
    assert make_pass("eliminate-dead-code").run(model, Context()).stats["nodes_removed"] == 2
    assert make_pass("fold-batchnorm").run(model, Context()).stats.get("bn_conv") == 1
    check_lossless_recipe(fm)


def test_fold_batchnorm_infers_shapes_without_the_nodes_it_already_folded() -> None:
    """fold-batchnorm, not idempotent: after folding ``Mul(c, Conv)`` the Mul node
    stayed in the graph, disconnected, until the end of the graph's loop; the
    shapes needed next (the rank of the MatMul before a BatchNormalization) were
    inferred from that invalid graph, came back unknown, and the BN was folded
    only by a second run."""
    fm = fuzz_model(
        """
        g (float[1,1,2,S] x, float[1,4] u) => (float[1,1] y, float[1,1,2,S] z)
          <float[1,1,1,1] w = {-0.75}, float[1,1,1] c = {-1.5}, float[4,1] k = {0.1, -0.5, -0.1, -0.08},
           float[1] s = {1.2}, float[1] b = {0.05}, float[1] m = {-0.4}, float[1] v = {1.2}> {
            t = Conv (x, w)
            z = Mul (c, t)
            p = MatMul (u, k)
            y = BatchNormalization (p, s, b, m, v)
        }
        """,
        [{"x": (1, 1, 2, 4), "u": (1, 4)}, {"x": (1, 1, 2, 5), "u": (1, 4)}],
    )
    result = check_lossless_pass(fm, "fold-batchnorm")
    assert result.stats.get("mul_conv") == 1 and result.stats.get("bn_matmul") == 1
    check_lossless_recipe(fm)


def test_fold_constants_infers_shapes_again_after_folding() -> None:
    """fold-constants, not idempotent: the Split sizes ``Identity(sizes)`` hide
    the Split's output shapes, so ``Shape(b)`` became foldable only once the
    Identity had been folded, and shapes were inferred once per run."""
    fm = fuzz_model(
        """
        g (float[1,1,2,3] x) => (int64[1] d) <int64[2] sizes = {1, 2}, int64[1] zero = {0}> {
            s = Identity (sizes)
            a, b = Split <axis = 3> (x, s)
            h = Shape (b)
            d = Gather <axis = 0> (h, zero)
        }
        """,
        [{"x": (1, 1, 2, 3)}] * 2,
    )
    result = check_lossless_pass(fm, "fold-constants")
    assert result.stats["nodes_folded"] == 2  # Identity, Shape (Gather writes a graph output)
    check_lossless_recipe(fm)
