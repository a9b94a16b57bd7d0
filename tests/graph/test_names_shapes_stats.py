"""graph: unique names, traversal, shape inference, statistics."""
from __future__ import annotations

import numpy as np
import onnx

from onnxpress.graph import NameGenerator, infer_shapes, iter_graphs, load, model_stats

NESTED = '''
<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,8,8] x, bool c) => (float[N,4,8,8] y, float[N,10] z) <float[4,3,3,3] w = %s, float[10,64] fw = %s> {
  conv = Conv <pads = [1,1,1,1]> (x, w)
  y = If(c) <then_branch = t () => (float[N,4,8,8] o) { o = Relu(conv) },
             else_branch = e () => (float[N,4,8,8] o2) { o2 = Sigmoid(conv) }>
  p = MaxPool <kernel_shape = [2,2], strides = [2,2]> (y)
  f = Flatten(p)
  z = Gemm <transB = 1> (f, fw)
}'''


def _nested():
    return onnx.parser.parse_model(
        NESTED % ("{" + ",".join(["0.5"] * 108) + "}", "{" + ",".join(["0.1"] * 640) + "}")
    )


def test_traversal_reaches_subgraphs():
    model = load(_nested())
    graphs = list(iter_graphs(model.graph))
    assert len(graphs) == 3
    assert sorted(n.op for g in graphs[1:] for n in g.nodes) == ["Relu", "Sigmoid"]


def test_unique_names_never_collide_across_runs():
    model = load(_nested())
    gen = NameGenerator(model)
    assert gen.new("conv") == "conv__1"
    assert gen.new("conv") == "conv__2"
    assert gen.new("fresh") == "fresh"
    # A second run over a model that already holds generated names skips them.
    model.graph.nodes[0].outputs[0].name = "conv__1"
    gen2 = NameGenerator(model)
    assert gen2.new("conv") == "conv__2" or gen2.new("conv") not in {"conv__1"}
    assert "o" in gen2 and "o2" in gen2  # subgraph names are known


def test_shapes_are_inferred_from_inputs_not_declarations():
    m = _nested()
    # Corrupt the declared output shape, as ddddocr's exporter does.
    dim = m.graph.output[1].type.tensor_type.shape.dim
    dim[1].dim_value = 999
    shapes = infer_shapes(load(m))
    assert shapes["conv"].shape == ("N", 4, 8, 8)
    assert shapes["z"].shape == ("N", 10)
    assert shapes["o"].shape[1:] == (4, 8, 8)


def test_stats_count_ops_params_and_macs():
    stats = model_stats(load(_nested()))
    assert stats.nodes == 7
    assert stats.op_types["Conv"] == 1 and stats.op_types["Relu"] == 1
    assert stats.params == 108 + 640
    assert stats.weight_bytes == 4 * (108 + 640)
    # Conv: out 4*8*8 elems * 3*3*3 ; Gemm: 10 * 64 (batch N counts as 1)
    assert stats.macs == 4 * 8 * 8 * 27 + 10 * 64
    assert stats.macs_unknown_nodes == 0


def test_types_inside_subgraphs_are_inferred_from_the_outer_scope():
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,4] x, bool c) => (float[N,4] y) {
      a = Relu(x)
      y = If(c) <then_branch = t () => (float[N,4] o) { e = Equal(a, a)  n = Not(e)  f = Cast <to = 1> (n)  o = Mul(a, f) },
                 else_branch = e2 () => (float[N,4] o2) { o2 = Neg(a) }>
    }''')
    shapes = infer_shapes(load(m))
    assert shapes["n"].dtype == np.dtype(bool) and shapes["n"].shape == ("N", 4)
    assert shapes["f"].dtype == np.dtype(np.float32)
