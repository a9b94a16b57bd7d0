"""eliminate-dead-code, remove-unused-initializers, merge-initializers."""
from __future__ import annotations

import numpy as np
import onnx

from ..conftest import apply, assert_equivalent, run_once, run_ort


def test_dce_removes_dead_nodes_and_keeps_outputs(rng):
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) {
      dead = Exp(x)
      dead2 = Log(dead)
      y = Relu(x)
    }''')
    out, result, _ = run_once(m, "eliminate-dead-code")
    assert result.stats["nodes_removed"] == 2 and [n.op_type for n in out.graph.node] == ["Relu"]
    assert_equivalent(m, out, {"x": rng.standard_normal(4).astype(np.float32)})
    assert not run_once(out, "eliminate-dead-code")[1].modified


def test_dce_keeps_outer_values_captured_by_subgraphs_and_loop_outputs(rng):
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x, bool c) => (float[4] y, float[4] z) <int64 trip = {3}> {
      a = Exp(x)
      unused = Sin(x)
      y = If(c) <then_branch = t () => (float[4] o) { o = Add(a, x) },
                 else_branch = e () => (float[4] o2) { dead = Cos(a) o2 = Identity(a) }>
      z = Loop(trip, c, x) <body = b (int64 i, bool cond, float[4] acc) => (bool cond_out, float[4] acc_out) {
          cond_out = Identity(cond)
          acc_out = Add(acc, a)
        }>
    }''')
    out, result, _ = run_once(m, "eliminate-dead-code")
    assert result.stats["nodes_removed"] == 2  # Sin outside, Cos inside the else branch
    onnx.checker.check_model(out, full_check=True)
    for c in (True, False):
        assert_equivalent(m, out, {"x": rng.standard_normal(4).astype(np.float32), "c": np.array(c)})


def test_unused_initializers_removed_but_subgraph_use_counts():
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x, bool c) => (float[4] y) <float[2] unused = {1., 2.}, int64[1] axes = {0}> {
      y = If(c) <then_branch = t () => (float[4] o) { o = Squeeze(x, axes) },
                 else_branch = e () => (float[4] o2) { o2 = Squeeze(x, axes) }>
    }''')
    out, result, _ = run_once(m, "remove-unused-initializers")
    assert result.stats["initializers_removed"] == 1
    assert [t.name for t in out.graph.initializer] == ["axes"]
    onnx.checker.check_model(out, full_check=True)
    x = {"x": np.arange(4, dtype=np.float32).reshape(1, 4), "c": np.array(True)}
    np.testing.assert_array_equal(run_ort(out, x)[0], np.arange(4, dtype=np.float32))
    assert not run_once(out, "remove-unused-initializers")[1].modified


def test_initializer_input_kept_even_when_only_dead_nodes_read_it():
    m = onnx.parser.parse_model('''
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[4] x, float[4] w) => (float[4] y) <float[4] w = {1.,2.,3.,4.}> {
      dead = Add(x, w)
      y = Relu(x)
    }''')
    out, records = apply(m, "eliminate-dead-code", "remove-unused-initializers")
    assert [i.name for i in out.graph.input] == ["x", "w"]
    assert run_ort(out, {"x": np.ones(4, np.float32)})[0].tolist() == [1.0] * 4
    out2, result, _ = run_once(out, "remove-unused-initializers", remove_unused_inputs=True)
    assert result.modified and [i.name for i in out2.graph.input] == ["x"]


def test_merge_duplicate_initializers(rng):
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[3] x) => (float[3] y) <float[3] a = {1.,2.,3.}, float[3] b = {1.,2.,3.}, float[3] c = {1.,2.,4.}, int32[3] d = {1,2,3}> {
      p = Add(x, a)
      q = Mul(p, b)
      r = Sub(q, c)
      dd = Cast <to = 1> (d)
      y = Add(r, dd)
    }''')
    out, result, _ = run_once(m, "merge-initializers")
    assert result.stats["initializers_merged"] == 1
    assert sorted(t.name for t in out.graph.initializer) == ["a", "c", "d"]
    assert_equivalent(m, out, {"x": rng.standard_normal(3).astype(np.float32)})
    assert not run_once(out, "merge-initializers")[1].modified
