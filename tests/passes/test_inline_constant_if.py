"""inline-constant-if, and the shape folding that makes If conditions constant."""
from __future__ import annotations

import numpy as np
import onnx

from ..conftest import apply, assert_equivalent, run_once

# Silero's pattern: an If on Shape(state)[0] == 2, where state is [2, N, 4].
SILERO_LIKE = '''
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,N,4] state, float[N,4] x) => (float[N,4] y, float[2,N,4] s2) <int64 two = {2}, int64[1] i0 = {0}, float[4] w = {1.,2.,3.,4.}> {
  shp = Shape(state)
  d0 = Gather <axis = 0> (shp, i0)
  d = Squeeze(d0)
  c = Equal(d, two)
  y, s2 = If(c) <then_branch = t () => (float[N,4] o, float[2,N,4] so) {
        h = Mul(x, w)
        o = Relu(h)
        so = Identity(state)
      }, else_branch = e () => (float[N,4] o2, float[2,N,4] so2) {
        o2 = Neg(x)
        so2 = Identity(state)
      }>
}'''


def test_gather_of_static_dim_of_shape_is_folded_and_if_inlined(rng):
    m = onnx.parser.parse_model(SILERO_LIKE)
    out, records = apply(m, "lift-constants", "fold-constants", "inline-constant-if", "remove-noops", "eliminate-dead-code")
    ops = [n.op_type for n in out.graph.node]
    assert "If" not in ops and "Shape" not in ops, ops
    assert ops == ["Mul", "Relu", "Identity"]  # state passes to an output through one Identity
    assert out.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    for n in (1, 5):
        feeds = {"state": rng.standard_normal((2, n, 4)).astype(np.float32), "x": rng.standard_normal((n, 4)).astype(np.float32)}
        assert_equivalent(m, out, feeds)
    stats = {r.name: r.stats for r in records if r.modified}
    assert stats["inline-constant-if"]["ifs_inlined"] == 1
    assert stats["inline-constant-if"]["branch_nodes_dropped"] == 2


def test_symbolic_dim_of_shape_is_not_folded(rng):
    m = onnx.parser.parse_model(SILERO_LIKE.replace("float[2,N,4] state", "float[M,N,4] state").replace("float[2,N,4] s", "float[M,N,4] s"))
    out, _, _ = run_once(m, "fold-constants")
    assert "Shape" in [n.op_type for n in out.graph.node]
    out2, result, _ = run_once(out, "inline-constant-if")
    assert not result.modified


def test_inlined_names_do_not_collide(rng):
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y, float[4] h) <bool c = {1}> {
      h = Neg(x)
      y = If(c) <then_branch = t () => (float[4] o) { h2 = Abs(x)  o = Add(h2, h) },
                 else_branch = e () => (float[4] o2) { o2 = Identity(x) }>
    }''')
    # A branch-local value named like an outer one would shadow it once inlined.
    m.graph.node[1].attribute[0].g.node[0].output[0] = "h_local"
    m.graph.node[1].attribute[0].g.node[1].input[0] = "h_local"
    out, result, _ = run_once(m, "inline-constant-if")
    assert result.modified
    onnx.checker.check_model(out, full_check=True)
    assert_equivalent(m, out, {"x": rng.standard_normal(4).astype(np.float32)})
    assert not run_once(out, "inline-constant-if")[1].modified


def test_duplicate_folded_weights_in_sibling_branches_are_stored_once():
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,64] x, bool c) => (float[1,64,64] y) <float[64,64] w = %s, int64[1] ax = {0}> {
      y = If(c) <then_branch = t () => (float[1,64,64] o) { wu = Unsqueeze(w, ax)  o = Add(x, wu) },
                 else_branch = e () => (float[1,64,64] o2) { wu2 = Unsqueeze(w, ax)  o2 = Sub(x, wu2) }>
    }''' % ("{" + ",".join(["0.5"] * 4096) + "}"))
    out, records = apply(m, "lift-constants", "fold-constants", "eliminate-dead-code", "merge-initializers")
    assert {r.name for r in records if r.modified} >= {"fold-constants", "merge-initializers"}
    assert out.ByteSize() < 64 * 64 * 4 * 1.2  # one copy of the folded weight, not one per branch
    onnx.checker.check_model(out, full_check=True)
    for c in (True, False):
        feeds = {"x": np.arange(64, dtype=np.float32).reshape(1, 64), "c": np.array(c)}
        assert_equivalent(m, out, feeds)
