"""convert-fp16: small graphs built in code, run in onnxruntime (optimizations off
and on) and, for float16 arithmetic as ARM's fp16 kernels do it, in onnx's
reference evaluator (onnxruntime on x86 computes float16 ops in float32 through
its own Casts, which hides float16 overflow)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh
from onnx.reference import ReferenceEvaluator

from onnxpress.quant.fp16 import DEFAULT_KEEP_FP32_OPS
from tests.conftest import assert_equivalent, run_once, run_ort

RTOL, ATOL = 1e-2, 1e-3


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = h.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _convert(m, **options):
    out, result, _ = run_once(m, "convert-fp16", **options)
    onnx.checker.check_model(out, full_check=True)
    return out, result


def _types(m: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor, by ONNX type inference."""
    g = onnx.shape_inference.infer_shapes(m, strict_mode=True).graph
    t = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    t.update({i.name: i.data_type for i in g.initializer})
    return t


def _io(m):
    return [(v.name, v.type.tensor_type.elem_type) for v in list(m.graph.input) + list(m.graph.output)]


def _sum_of_squares(n=4096):
    ax = nh.from_array(np.array([1], np.int64), "ax")
    return _model(
        [h.make_node("Mul", ["x", "x"], ["sq"]), h.make_node("ReduceSum", ["sq", "ax"], ["y"])],
        [h.make_tensor_value_info("x", TP.FLOAT, [1, n])],
        [h.make_tensor_value_info("y", TP.FLOAT, [1, 1])],
        [ax],
    )


def test_sum_of_squares_stays_correct_and_blind_conversion_overflows(rng):
    m = _sum_of_squares()
    feeds = {"x": rng.uniform(90, 110, (1, 4096)).astype(np.float32)}
    ref = run_ort(m, feeds)[0]
    assert ref[0, 0] > 65504 * 100  # far beyond float16's range

    out, result = _convert(m)
    assert result.modified and result.stats["kept_fp32.keep_fp32_ops"] == 1
    types = _types(out)
    reduce = next(n for n in out.graph.node if n.op_type == "ReduceSum")
    assert types[reduce.input[0]] == TP.FLOAT  # the sum runs in float32
    mul = next(n for n in out.graph.node if n.op_type == "Mul")
    assert types[mul.output[0]] == TP.FLOAT16  # the squares (<= 12100) in float16
    assert _io(out) == _io(m)
    assert_equivalent(m, out, feeds, rtol=RTOL, atol=ATOL)
    exact16 = ReferenceEvaluator(out).run(None, feeds)[0]
    np.testing.assert_allclose(exact16, ref, rtol=RTOL)

    blind, _ = _convert(m, keep_fp32_ops=[])
    types = _types(blind)
    reduce = next(n for n in blind.graph.node if n.op_type == "ReduceSum")
    assert types[reduce.output[0]] == TP.FLOAT16
    with np.errstate(over="ignore"):
        overflowed = ReferenceEvaluator(blind).run(None, feeds)[0]
    assert np.isinf(overflowed).all()


def _cnn(rng):
    """Conv -> Relu -> Resize(x2) -> GlobalAveragePool -> Flatten -> Gemm -> MatMul."""
    w = nh.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32) * 0.2, "w")
    b = nh.from_array(rng.standard_normal(16).astype(np.float32), "b")
    roi = nh.from_array(np.zeros(0, np.float32), "roi")
    scales = nh.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    g1 = nh.from_array(rng.standard_normal((16, 256)).astype(np.float32) * 0.1, "g1")
    c1 = nh.from_array(rng.standard_normal(256).astype(np.float32), "c1")
    w2 = nh.from_array(rng.standard_normal((256, 10)).astype(np.float32) * 0.1, "w2")
    nodes = [
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("Relu", ["c"], ["r"]),
        h.make_node("Resize", ["r", "roi", "scales"], ["up"], mode="linear"),
        h.make_node("GlobalAveragePool", ["up"], ["p"]),
        h.make_node("Flatten", ["p"], ["f"]),
        h.make_node("Gemm", ["f", "g1", "c1"], ["z"], name="gemm"),
        h.make_node("MatMul", ["z", "w2"], ["y"], name="mm"),
    ]
    return _model(
        nodes,
        [h.make_tensor_value_info("x", TP.FLOAT, ["n", 3, 8, 8])],
        [h.make_tensor_value_info("y", TP.FLOAT, ["n", 10])],
        [w, b, roi, scales, g1, c1, w2],
    )


def test_weights_fp16_size_halved_interface_kept(rng):
    m = _cnn(rng)
    out, result = _convert(m)
    assert _io(out) == _io(m)
    inits = {i.name: i for i in out.graph.initializer}
    for name in ("w", "b", "g1", "c1", "w2"):
        assert inits[name].data_type == TP.FLOAT16, name
    assert inits["scales"].data_type == TP.FLOAT  # Resize's scales are tensor(float) in every opset
    ratio = out.ByteSize() / m.ByteSize()
    assert 0.45 < ratio < 0.56, ratio
    s = result.stats
    assert s["weights_converted"] == 6  # with Resize's empty roi (type T2, float16 allowed)
    assert s["weight_bytes_after"] * 2 == s["weight_bytes_before"]
    assert 0 < s["weight_rel_fro_error"] < 1e-3
    feeds = [{"x": rng.standard_normal((n, 3, 8, 8)).astype(np.float32)} for n in (1, 3)]
    assert_equivalent(m, out, feeds, rtol=RTOL, atol=ATOL)


def test_second_run_changes_nothing(rng):
    for m in (_cnn(rng), _sum_of_squares()):
        once, _ = _convert(m)
        twice, result = _convert(once)
        assert not result.modified, result.stats
        assert len(twice.graph.node) == len(once.graph.node)


def test_cast_to_float_is_retargeted_and_graph_input_cast_once(rng):
    """int input -> Cast(FLOAT) -> MatMul: the Cast now writes float16 directly."""
    w = nh.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    m = _model(
        [
            h.make_node("Cast", ["ids"], ["f"], to=TP.FLOAT),
            h.make_node("MatMul", ["f", "w"], ["a"]),
            h.make_node("Add", ["a", "x"], ["b"]),
            h.make_node("Mul", ["b", "x"], ["y"]),
        ],
        [h.make_tensor_value_info("ids", TP.INT32, [2, 8]), h.make_tensor_value_info("x", TP.FLOAT, [2, 4])],
        [h.make_tensor_value_info("y", TP.FLOAT, [2, 4])],
        [w],
    )
    out, result = _convert(m)
    cast = next(n for n in out.graph.node if n.input[0] == "ids")
    assert cast.attribute[0].i == TP.FLOAT16
    casts = [n for n in out.graph.node if n.op_type == "Cast"]
    assert len(casts) == 3  # ids (retargeted), x -> fp16 (shared by Add and Mul), y -> fp32
    feeds = {"ids": rng.integers(0, 3, (2, 8)).astype(np.int32), "x": rng.standard_normal((2, 4)).astype(np.float32)}
    assert_equivalent(m, out, feeds, rtol=RTOL, atol=ATOL)


def test_layernorm_statistics_stay_fp32_without_round_trips(rng):
    """Decomposed LayerNorm: ReduceMean/Pow and the ``+ eps`` stay float32, and no
    float16 round trip is inserted between ReduceMean and Sqrt."""
    ax = [-1]
    eps = nh.from_array(np.array(1e-12, np.float32), "eps")  # flushes to 0 in float16
    two = nh.from_array(np.array(2.0, np.float32), "two")
    gamma = nh.from_array(rng.standard_normal(64).astype(np.float32), "gamma")
    w = nh.from_array(rng.standard_normal((64, 64)).astype(np.float32) * 0.1, "w")
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["h"]),
        h.make_node("ReduceMean", ["h"], ["mu"], axes=ax),
        h.make_node("Sub", ["h", "mu"], ["d"]),
        h.make_node("Pow", ["d", "two"], ["d2"]),
        h.make_node("ReduceMean", ["d2"], ["var"], axes=ax),
        h.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        h.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        h.make_node("Div", ["d", "sd"], ["n"]),
        h.make_node("Mul", ["n", "gamma"], ["y"]),
    ]
    m = _model(
        nodes,
        [h.make_tensor_value_info("x", TP.FLOAT, [4, 64])],
        [h.make_tensor_value_info("y", TP.FLOAT, [4, 64])],
        [eps, two, gamma, w],
        opset=17,
    )
    out, result = _convert(m)
    types = _types(out)
    byname = {n.name: n for n in out.graph.node}
    assert types[byname["add_eps"].output[0]] == TP.FLOAT
    assert types[byname["sqrt"].output[0]] == TP.FLOAT
    assert {i.name: i.data_type for i in out.graph.initializer}["eps"] == TP.FLOAT
    feeds = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    assert_equivalent(m, out, feeds, rtol=RTOL, atol=5e-3)
    np.testing.assert_allclose(ReferenceEvaluator(out).run(None, feeds)[0], run_ort(m, feeds)[0], rtol=2e-2, atol=2e-2)


def test_if_branches_read_outer_values_and_return_fp32(rng):
    w_out = rng.standard_normal((4, 4)).astype(np.float32)
    w_in = nh.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w_in")

    def branch(name, op):
        return h.make_graph(
            [h.make_node("MatMul", ["hid", "w_in"], [f"{name}_m"]), h.make_node(op, [f"{name}_m"], [f"{name}_o"])],
            name,
            [],
            [h.make_tensor_value_info(f"{name}_o", TP.FLOAT, [2, 4])],
            initializer=[w_in] if name == "then" else [],
        )

    m = _model(
        [
            h.make_node("MatMul", ["x", "w"], ["hid"]),
            h.make_node(
                "If", ["cond"], ["z"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Sigmoid")
            ),
            h.make_node("Add", ["z", "x"], ["y"]),
        ],
        [h.make_tensor_value_info("x", TP.FLOAT, [2, 4]), h.make_tensor_value_info("cond", TP.BOOL, [])],
        [h.make_tensor_value_info("y", TP.FLOAT, [2, 4])],
        [nh.from_array(w_out, "w"), w_in],
    )
    out, result = _convert(m)
    assert result.stats["kept_fp32.control_flow"] == 1
    for c in (True, False):
        feeds = {"x": rng.standard_normal((2, 4)).astype(np.float32), "cond": np.array(c)}
        assert_equivalent(m, out, feeds, rtol=RTOL, atol=ATOL)


def test_constant_node_weights_and_keep_nodes(rng):
    w = rng.standard_normal((8, 8)).astype(np.float32)
    m = _model(
        [
            h.make_node("Constant", [], ["w"], value=nh.from_array(w, "wv")),
            h.make_node("MatMul", ["x", "w"], ["a"], name="mm"),
            h.make_node("Tanh", ["a"], ["t"], name="keep_me"),
            h.make_node("MatMul", ["t", "w"], ["y"], name="mm2"),
        ],
        [h.make_tensor_value_info("x", TP.FLOAT, [2, 8])],
        [h.make_tensor_value_info("y", TP.FLOAT, [2, 8])],
    )
    out, result = _convert(m, keep_fp32_nodes=["keep_me"])
    const = next(n for n in out.graph.node if n.op_type == "Constant")
    assert const.attribute[0].t.data_type == TP.FLOAT16
    types = _types(out)
    keep = next(n for n in out.graph.node if n.name == "keep_me")
    assert types[keep.input[0]] == TP.FLOAT and types[keep.output[0]] == TP.FLOAT
    assert result.stats["kept_fp32.keep_fp32_nodes"] == 1
    assert_equivalent(m, out, {"x": rng.standard_normal((2, 8)).astype(np.float32)}, rtol=RTOL, atol=5e-3)


def test_shape_arithmetic_stays_fp32_and_big_constants_are_clamped(rng):
    """Shape -> Cast(float) -> Mul -> Cast(int64) -> Reshape keeps exact sizes."""
    half = nh.from_array(np.array([0.5, 2.0], np.float32), "half")
    big = nh.from_array(np.full((1, 4096), 1e6, np.float32), "big")  # beyond 65504: clamped
    m = _model(
        [
            h.make_node("Shape", ["x"], ["s"]),
            h.make_node("Cast", ["s"], ["sf"], to=TP.FLOAT),
            h.make_node("Mul", ["sf", "half"], ["hf"], name="size_mul"),
            h.make_node("Cast", ["hf"], ["hi"], to=TP.INT64),
            h.make_node("Min", ["x", "big"], ["xm"]),
            h.make_node("Reshape", ["xm", "hi"], ["y"]),
        ],
        [h.make_tensor_value_info("x", TP.FLOAT, [8, 4096])],
        [h.make_tensor_value_info("y", TP.FLOAT, [4, 8192])],
        [half, big],
    )
    out, result = _convert(m)
    types = _types(out)
    assert types[next(n for n in out.graph.node if n.name == "size_mul").output[0]] == TP.FLOAT
    assert result.stats["values_clamped"] == 4096
    feeds = {"x": rng.standard_normal((8, 4096)).astype(np.float32)}
    assert_equivalent(m, out, feeds, rtol=RTOL, atol=ATOL)


def test_default_keep_list_covers_overflow_prone_ops():
    for op in ("ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "Pow", "Exp", "Log", "Softmax", "Range"):
        assert op in DEFAULT_KEEP_FP32_OPS


def test_recipe_fp16_runs(rng):
    import onnxpress

    m = _cnn(rng)
    result = onnxpress.optimize(m, recipe="fp16", strict=True)
    assert result.recipe.rtol == pytest.approx(1e-2)
    assert result.after.weight_bytes < 0.55 * result.before.weight_bytes
    assert not any(r.modified for r in result.records if r.iteration == max(x.iteration for x in result.records))
