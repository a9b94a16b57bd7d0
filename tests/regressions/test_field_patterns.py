"""Known failure patterns of other graph optimizers, each as a small graph run
through the whole ``lossless`` recipe and checked in onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxpress

from ..conftest import assert_equivalent, run_ort


def lossless(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnxpress.optimize(proto, recipe="lossless", strict=True).model
    onnx.checker.check_model(out, full_check=True)
    return out


def test_loop_condition_from_identity_and_if_branch_returning_a_constant(rng):
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x, bool c) => (float[4] y, float[4] z) <int64 trip = {3}, bool t = {1}> {
      y = Loop(trip, t, x) <body = b (int64 i, bool cond, float[4] acc) => (bool cond_out, float[4] acc_out) {
          cond_out = Identity(cond)
          acc_out = Add(acc, acc)
        }>
      z = If(c) <then_branch = tb () => (float[4] o) { o = Constant <value = float[4] {1., 2., 3., 4.}> () },
                 else_branch = eb () => (float[4] o2) { o2 = Neg(x) }>
    }''')
    out = lossless(m)
    loop, if_node = out.graph.node[0], out.graph.node[1]
    body = loop.attribute[0].g
    produced = {o for n in body.node for o in n.output} | {i.name for i in body.input}
    assert all(o.name in produced for o in body.output)
    for branch in if_node.attribute:
        assert {o.name for o in branch.g.output} <= {o for n in branch.g.node for o in n.output}
    for c in (True, False):
        assert_equivalent(m, out, {"x": rng.standard_normal(4).astype(np.float32), "c": np.array(c)})


def test_initializer_used_only_inside_an_if_branch_survives(rng):
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4] x, bool c) => (float[4] y) <int64[1] axes = {0}> {
      y = If(c) <then_branch = t () => (float[4] o) { o = Squeeze(x, axes) },
                 else_branch = e () => (float[4] o2) { s = Squeeze(x, axes)  o2 = Neg(s) }>
    }''')
    out = lossless(m)
    for c in (True, False):
        assert_equivalent(m, out, {"x": rng.standard_normal((1, 4)).astype(np.float32), "c": np.array(c)})


def test_tile_far_above_the_fold_cap_stays_and_the_file_does_not_grow():
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1] x) => (float[2048,2048] y) <float[1,1] c = {3.0}, int64[2] reps = {2048, 2048}> {
      t = Tile(c, reps)
      y = Add(t, x)
    }''')
    out = lossless(m)
    assert "Tile" in [n.op_type for n in out.graph.node]
    assert out.ByteSize() <= m.ByteSize() + 64
    np.testing.assert_allclose(run_ort(out, {"x": np.ones(1, np.float32)})[0], 4.0)


def test_shape_gather_concat_reshape_keeps_the_batch_symbolic(rng):
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N,3,8,8] x) => (float[N,192] y) <int64[1] i0 = {0}, int64[1] rest = {-1}> {
      s = Shape(x)
      n = Gather <axis = 0> (s, i0)
      shp = Concat <axis = 0> (n, rest)
      y = Reshape(x, shp)
    }''')
    out = lossless(m)
    assert out.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    for n in (1, 5):
        x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
        assert run_ort(out, {"x": x})[0].shape == (n, 192)
        assert_equivalent(m, out, {"x": x})


@pytest.mark.parametrize(
    "mid, values",
    [(10, [1e-12, 123456.7]), (6, [1.7, -2.5])],  # float16 and int32 round trips lose values
)
def test_lossy_cast_round_trips_are_kept(mid, values):
    m = onnx.parser.parse_model(f'''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {{ a = Cast <to = {mid}> (x)  y = Cast <to = 1> (a) }}''')
    out = lossless(m)
    assert [n.op_type for n in out.graph.node] == ["Cast", "Cast"]
    x = {"x": np.array(values, np.float32)}
    np.testing.assert_array_equal(run_ort(out, x)[0], run_ort(m, x)[0])
    assert not np.array_equal(run_ort(out, x)[0], x["x"])  # the rounding is real and kept


def test_ir10_initializer_input_feeding_only_dead_nodes_still_runs_unfed():
    m = onnx.parser.parse_model('''
    <ir_version: 10, opset_import: ["" : 21]>
    g (float[4] x, float[4] w) => (float[4] y) <float[4] w = {1.,2.,3.,4.}> {
      dead = Mul(x, w)
      y = Relu(x)
    }''')
    out = lossless(m)
    assert [i.name for i in out.graph.input] == ["x", "w"]
    x = np.array([-1, 2, -3, 4], np.float32)
    np.testing.assert_array_equal(run_ort(out, {"x": x})[0], np.maximum(x, 0))


BN = 'bn = BatchNormalization <epsilon = 0.001> (%s, gamma, beta, mean, var)'


@pytest.mark.parametrize(
    "layer, x_shape, w_shape, y_shape",
    [
        ("y0 = Conv <pads = [1,1,1,1]> (x, w)", (2, 3, 8, 8), (6, 3, 3, 3), (2, 6, 8, 8)),
        ("y0 = Conv <group = 3, pads = [1,1,1,1]> (x, w)", (2, 6, 8, 8), (9, 2, 3, 3), (2, 9, 8, 8)),
        ("y0 = ConvTranspose <strides = [2,2], output_padding = [1,1]> (x, w)", (2, 3, 5, 5), (3, 4, 3, 3), (2, 4, 12, 12)),
        ("y0 = ConvTranspose <group = 2, strides = [2,2]> (x, w)", (2, 4, 5, 5), (4, 3, 3, 3), (2, 6, 11, 11)),
    ],
)
def test_batchnorm_after_conv_variants_folds_exactly(rng, layer, x_shape, w_shape, y_shape):
    c = y_shape[1]
    def f32(shape, lo=-1, hi=1):
        return rng.uniform(lo, hi, size=shape).astype(np.float32)

    inits = [
        onnx.numpy_helper.from_array(f32(w_shape), "w"),
        onnx.numpy_helper.from_array(f32((c,), 0.5, 1.5), "gamma"),
        onnx.numpy_helper.from_array(f32((c,)), "beta"),
        onnx.numpy_helper.from_array(f32((c,)), "mean"),
        onnx.numpy_helper.from_array(f32((c,), 0.5, 2.0), "var"),
    ]
    m = onnx.parser.parse_model(f'''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[{",".join(map(str, x_shape))}] x) => (float[{",".join(map(str, y_shape))}] y) {{
      {layer}
      {BN % "y0"}
      y = Identity(bn)
    }}''')
    m.graph.initializer.extend(inits)
    out = lossless(m)
    assert "BatchNormalization" not in [n.op_type for n in out.graph.node]
    assert_equivalent(m, out, {"x": f32(x_shape)}, rtol=1e-4, atol=1e-5)


def test_random_normal_feeding_add_is_not_folded():
    m = onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) { r = RandomNormal <shape = [4]> ()  y = Add(r, x) }''')
    out = lossless(m)
    assert "RandomNormal" in [n.op_type for n in out.graph.node]
    from onnxpress.runtime_check import make_session

    session = make_session(out, "enabled")
    x = {"x": np.zeros(4, np.float32)}
    assert not np.array_equal(session.run(None, x)[0], session.run(None, x)[0])
