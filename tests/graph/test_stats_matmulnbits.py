"""graph.stats: shapes and MACs continue through ``com.microsoft.MatMulNBits``.

ONNX shape inference does not know the contrib op, so without help every tensor
after the first MatMulNBits is untyped and the MACs of the nodes after it are not
counted. Weight-only int4 does not change the MAC count, so an int4 model must
count what its float model counts. (The real models are in
``tests/real/test_int4_check_real.py``.)
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxpress.graph import infer_shapes, iter_proto_graphs, load, model_stats
from onnxpress.graph.stats import stats_shapes
from tests.conftest import run_once

B, S, D, F = "B", "S", 64, 96  # batch, sequence (symbolic), hidden, FFN


def _chain(in_branch: bool = False) -> onnx.ModelProto:
    """x [B, S, 64] -> MatMul 64x96 -> Relu -> MatMul 96x64 -> Add x -> Reshape
    (to [B*S, 64] by a shape computed with Shape) -> Gemm 64x32 (transB) -> y.

    The Reshape's target comes from ``Shape`` of a tensor downstream of the first
    MatMul, as in exported transformers. ``in_branch``: the same chain in the
    then-branch of an ``If`` (else: Identity of a float zero) fed by the outer x.
    """
    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(rng.standard_normal((D, F)).astype(np.float32), "w1"),
        nh.from_array(rng.standard_normal((F, D)).astype(np.float32), "w2"),
        nh.from_array(rng.standard_normal((32, D)).astype(np.float32), "w3"),
        nh.from_array(np.array([-1], np.int64), "minus1"),
        nh.from_array(np.array([2], np.int64), "two"),
        nh.from_array(np.array([3], np.int64), "three"),
    ]
    nodes = [
        h.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        h.make_node("Relu", ["h1"], ["r1"]),
        h.make_node("MatMul", ["r1", "w2"], ["h2"], name="fc2"),
        h.make_node("Add", ["h2", "x"], ["res"]),
        h.make_node("Shape", ["res"], ["shp"]),
        h.make_node("Slice", ["shp", "two", "three"], ["last"]),
        h.make_node("Concat", ["minus1", "last"], ["target"], axis=0),
        h.make_node("Reshape", ["res", "target"], ["flat"]),
        h.make_node("Gemm", ["flat", "w3"], ["y"], name="head", transB=1),
    ]
    x = h.make_tensor_value_info("x", TP.FLOAT, [B, S, D])
    y = h.make_tensor_value_info("y", TP.FLOAT, None)
    if not in_branch:
        g = h.make_graph(nodes, "g", [x], [y], inits)
    else:
        then = h.make_graph(nodes, "then", [], [y], inits)
        other = h.make_graph(
            [h.make_node("Constant", [], ["y0"], value=h.make_tensor("z", TP.FLOAT, [1, 32], [0.0] * 32))],
            "else", [], [h.make_tensor_value_info("y0", TP.FLOAT, None)],
        )
        c = h.make_tensor_value_info("c", TP.BOOL, [])
        g = h.make_graph(
            [h.make_node("If", ["c"], ["out"], then_branch=then, else_branch=other)], "g", [x, c],
            [h.make_tensor_value_info("out", TP.FLOAT, None)],
        )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _int4(model: onnx.ModelProto) -> onnx.ModelProto:
    out, result, _ = run_once(model, "quantize-int4-weights", format="matmulnbits", min_elements=1)
    assert result.stats["layers_quantized"] == 3
    assert sum(n.op_type == "MatMulNBits" for g in iter_proto_graphs(out.graph) for n in g.node) == 3
    return out


EXPECTED_MACS = D * F + F * D + D * 32  # per token (B and S count as 1)


def test_macs_continue_through_matmulnbits():
    fp32 = model_stats(load(_chain()))
    assert (fp32.macs, fp32.macs_unknown_nodes) == (EXPECTED_MACS, 0)
    int4 = load(_int4(_chain()))
    # Plain ONNX shape inference stops at the first MatMulNBits ...
    plain = model_stats(int4, infer_shapes(int4))
    assert plain.macs_unknown_nodes == 2 and plain.macs == D * F
    # ... model_stats does not, and counts what the float model counts.
    stats = model_stats(int4)
    assert (stats.macs, stats.macs_unknown_nodes) == (EXPECTED_MACS, 0)
    assert stats.op_types["com.microsoft:MatMulNBits"] == 3


def test_stats_shapes_gives_matmulnbits_outputs_and_what_follows():
    int4 = load(_int4(_chain()))
    plain, shapes = infer_shapes(int4), stats_shapes(int4)
    outputs = {n.name: n.outputs[0].name for n in int4.graph.nodes if n.op == "MatMulNBits"}
    assert plain.get(outputs["fc1"]) is None or plain[outputs["fc1"]].shape is None
    assert shapes[outputs["fc1"]].shape == (B, S, F) and shapes[outputs["fc1"]].dtype == np.float32
    assert shapes[outputs["fc2"]].shape == (B, S, D)
    assert shapes["res"].shape == (B, S, D)
    assert shapes["flat"].shape[-1] == D  # through Shape/Slice/Concat/Reshape (data propagation)
    assert shapes[int4.graph.outputs[0].name].shape[-1] == 32
    # What the plain inference knew is kept (only refined: "shp" goes from
    # ('unk__0',) to (3,)), no stand-in leaks out, and the model is untouched.
    for name, tt in plain.items():
        assert shapes[name].dtype == tt.dtype, name
        if tt.shape is not None:
            assert len(shapes[name].shape) == len(tt.shape), name
            assert all(d == e for d, e in zip(tt.shape, shapes[name].shape) if isinstance(d, int)), name
    assert shapes["shp"].shape == (3,)
    assert not any("matmulnbits_weight" in k for k in shapes)
    assert sum(n.op == "MatMulNBits" for n in int4.graph.nodes) == 3
    assert not any(t.name.endswith("matmulnbits_weight") for t in int4.graph.inputs)


def test_matmulnbits_inside_an_if_branch():
    fp32 = model_stats(load(_chain(in_branch=True)))
    assert (fp32.macs, fp32.macs_unknown_nodes) == (EXPECTED_MACS, 0)
    int4 = load(_int4(_chain(in_branch=True)))
    assert model_stats(int4, infer_shapes(int4)).macs_unknown_nodes == 2
    stats = model_stats(int4)
    assert (stats.macs, stats.macs_unknown_nodes) == (EXPECTED_MACS, 0)


def test_fp16_matmulnbits_output_is_fp16():
    m = _chain()
    for t in m.graph.initializer:
        if t.data_type == TP.FLOAT:
            t.CopyFrom(nh.from_array(nh.to_array(t).astype(np.float16), t.name))
    m.graph.input[0].type.tensor_type.elem_type = TP.FLOAT16
    int4 = load(_int4(m))
    shapes = stats_shapes(int4)
    first = next(n for n in int4.graph.nodes if n.op == "MatMulNBits")
    assert shapes[first.outputs[0].name].dtype == np.float16
    assert model_stats(int4).macs == EXPECTED_MACS
