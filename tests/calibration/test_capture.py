"""Activation capture: values equal onnxruntime's, If branches (nested, real
Silero VAD), inputs of varying shape (real PP-OCRv4 rec), bounded memory."""
from __future__ import annotations

import gc
import tracemalloc
import weakref

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxpress.calibration import (
    Gram,
    Histogram,
    MinMax,
    PerChannel,
    capturable_tensors,
    capture,
    open_calibration,
)
from onnxpress.errors import InputError, InputNameError
from onnxpress.testing import realmodels as rm

OPSET = [helper.make_opsetid("", 17)]


class Keep:
    """Test-only collector that keeps copies of what it sees."""

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def update(self, array: np.ndarray) -> None:
        self.arrays.append(np.array(array, copy=True))


def run_with_outputs(model: onnx.ModelProto, names: list[str], feed: dict) -> list[np.ndarray]:
    """Reference: the model with ``names`` as plain extra outputs, ORT optimizations off."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.add().name = n
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(names, feed)


def mlp_model(rng) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    w1 = numpy_helper.from_array(rng.normal(size=(8, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(size=(16, 4)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    return helper.make_model(helper.make_graph(nodes, "mlp", [x], [y], [w1, w2]), opset_imports=OPSET)


def const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name + "_v"))


def if_model() -> onnx.ModelProto:
    """y = If(c, then: sum(relu(2x)) + If(sum(x) > 0, argmax(b), max(-b)), else: mean(|x - 1|)).

    The inner branches return int-cast and float values of different ops; every
    branch output is untyped in shape, as exporters write them.
    """
    f = TensorProto.FLOAT
    inner_then = helper.make_graph(
        [
            helper.make_node("ArgMax", ["b"], ["am"], axis=1, keepdims=0),
            helper.make_node("Cast", ["am"], ["am_f"], to=f),
        ],
        "inner_then", [], [helper.make_tensor_value_info("am_f", f, None)],
    )
    inner_else = helper.make_graph(
        [helper.make_node("Neg", ["b"], ["neg"]), helper.make_node("ReduceMax", ["neg"], ["nmax"], axes=[1], keepdims=0)],
        "inner_else", [], [helper.make_tensor_value_info("nmax", f, None)],
    )
    then = helper.make_graph(
        [
            const("two", np.float32(2.0)),
            helper.make_node("Mul", ["x", "two"], ["a"]),
            helper.make_node("Relu", ["a"], ["b"]),
            const("zero", np.float32(0.0)),
            helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=0),
            helper.make_node("Greater", ["sx", "zero"], ["pos"]),
            helper.make_node("If", ["pos"], ["inner"], then_branch=inner_then, else_branch=inner_else, name="inner_if"),
            const("ax1", np.array([1], np.int64)),
            helper.make_node("ReduceSum", ["b", "ax1"], ["rb"], keepdims=0),
            helper.make_node("Add", ["rb", "inner"], ["then_out"]),
        ],
        "then", [], [helper.make_tensor_value_info("then_out", f, None)],
    )
    other = helper.make_graph(
        [
            const("one", np.float32(1.0)),
            helper.make_node("Sub", ["x", "one"], ["s"]),
            helper.make_node("Abs", ["s"], ["e"]),
            helper.make_node("ReduceMean", ["e"], ["else_out"], axes=[1], keepdims=0),
        ],
        "else", [], [helper.make_tensor_value_info("else_out", f, None)],
    )
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="outer_if")],
        "ifs",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", f, ["N", 4])],
        [helper.make_tensor_value_info("y", f, ["N"])],
    )
    return helper.make_model(g, opset_imports=OPSET)


def loop_model() -> onnx.ModelProto:
    """y = x + 1 + 1 + 1 through a Loop of 3 iterations (body tensor 'inc')."""
    f = TensorProto.FLOAT
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            const("one", np.float32(1.0)),
            helper.make_node("Add", ["v_in", "one"], ["inc"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", f, [2]),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("inc", f, [2])],
    )
    g = helper.make_graph(
        [
            const("n", np.array(3, np.int64)),
            const("t", np.array(True)),
            helper.make_node("Relu", ["x"], ["rx"]),
            helper.make_node("Loop", ["n", "t", "rx"], ["y"], body=body, name="the_loop"),
        ],
        "loop",
        [helper.make_tensor_value_info("x", f, [2])],
        [helper.make_tensor_value_info("y", f, [2])],
    )
    return helper.make_model(g, opset_imports=OPSET)


# ------------------------------------------------------------------ main graph
def test_capture_main_graph_values_equal_onnxruntime(rng):
    model = mlp_model(rng)
    before = model.SerializeToString()
    feeds = [{"x": rng.normal(size=(n, 8)).astype(np.float32)} for n in (1, 3, 2)]
    names = ["h", "r", "y", "x", "w1"]
    out = capture(model, names, feeds, lambda t: [Keep(), MinMax()], progress=False)
    assert list(out) == names
    assert model.SerializeToString() == before  # the caller's model is untouched
    for i, feed in enumerate(feeds):
        ref = run_with_outputs(model, ["h", "r", "y"], feed)
        for name, r in zip(["h", "r", "y"], ref):
            got = out[name][0].arrays[i]
            assert got.shape == r.shape and got.dtype == r.dtype
            np.testing.assert_array_equal(got, r)
        np.testing.assert_array_equal(out["x"][0].arrays[i], feed["x"])
        np.testing.assert_array_equal(out["w1"][0].arrays[i], numpy_helper.to_array(model.graph.initializer[0]))
    allh = np.concatenate([a.ravel() for a in out["h"][0].arrays])
    assert out["h"][1].min == allh.min() and out["h"][1].max == allh.max()


def test_overridable_initializer_input_uses_the_feed_else_the_default(rng):
    model = mlp_model(rng)
    model.graph.input.append(helper.make_tensor_value_info("w2", TensorProto.FLOAT, [16, 4]))  # IR >= 4 default
    x = rng.normal(size=(1, 8)).astype(np.float32)
    w2 = np.ones((16, 4), np.float32)
    out = capture(model, ["w2", "y"], [{"x": x}, {"x": x, "w2": w2}], lambda t: [Keep()], progress=False)
    np.testing.assert_array_equal(out["w2"][0].arrays[0], numpy_helper.to_array(model.graph.initializer[1]))
    np.testing.assert_array_equal(out["w2"][0].arrays[1], w2)
    np.testing.assert_allclose(out["y"][0].arrays[1], run_with_outputs(model, ["y"], {"x": x, "w2": w2})[0])
    assert capture(model, [], [{"x": x}], {}, progress=False) == {}


def test_capture_takes_a_mapping_and_calibration_data(rng, tmp_path):
    model = mlp_model(rng)
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", x=rng.normal(size=(2, 8)).astype(np.float32))
    data = open_calibration(tmp_path, model)
    pc, gram, hist = PerChannel(axis=-1), Gram(axis=-1), Histogram(bins=64)
    out = capture(model, ["r"], data, {"r": [pc, gram, hist]}, progress=True, desc="test")
    assert out["r"] == [pc, gram, hist]
    ref = np.concatenate([run_with_outputs(model, ["r"], f)[0] for f in data]).astype(np.float64)
    np.testing.assert_allclose(pc.max, ref.max(axis=0))
    np.testing.assert_allclose(gram.xtx, ref.T @ ref, rtol=1e-10)
    assert gram.count == 6 and int(hist.counts.sum()) == ref.size


def test_capture_errors(rng):
    model = mlp_model(rng)
    feeds = [{"x": np.zeros((1, 8), np.float32)}]
    with pytest.raises(InputError, match="no tensor of that name"):
        capture(model, ["nope"], feeds, lambda t: [MinMax()], progress=False)
    with pytest.raises(InputError, match="no collectors given for tensor 'r'"):
        capture(model, ["h", "r"], feeds, {"h": [MinMax()]}, progress=False)
    with pytest.raises(InputNameError, match="feed 0: .*no input 'z'"):
        capture(model, ["h"], [{"x": feeds[0]["x"], "z": feeds[0]["x"]}], lambda t: [MinMax()], progress=False)


def test_loop_bodies_are_not_capturable():
    model = loop_model()
    where = capturable_tensors(model)
    assert where["rx"] == "main" and where["x"] == "main" and "inc" not in where and "one" not in where
    with pytest.raises(InputError, match="'inc'.*Loop node 'the_loop'"):
        capture(model, ["inc"], [{"x": np.zeros(2, np.float32)}], lambda t: [MinMax()], progress=False)
    out = capture(model, ["rx", "y"], [{"x": np.array([-1, 2], np.float32)}], lambda t: [Keep()], progress=False)
    np.testing.assert_array_equal(out["y"][0].arrays[0], [3, 5])


# ------------------------------------------------------------------ If branches
def reference_if(c: bool, x: np.ndarray) -> dict[str, np.ndarray | None]:
    """What each tensor of :func:`if_model` is on one sample (None: not computed)."""
    vals: dict[str, np.ndarray | None] = dict.fromkeys(["a", "b", "am", "neg", "e", "pos"])
    if c:
        a = x * np.float32(2)
        b = np.maximum(a, 0)
        vals.update(a=a, b=b, pos=np.array(x.sum() > 0))
        if x.sum() > 0:
            vals["am"] = b.argmax(axis=1).astype(np.int64)
        else:
            vals["neg"] = -b
    else:
        vals["e"] = np.abs(x - np.float32(1))
    return vals


def test_capture_inside_nested_if_branches(rng):
    model = if_model()
    where = capturable_tensors(model)
    assert where["y"] == "main" and where["c"] == "main"
    for t in ("a", "b", "am", "neg", "e", "two", "nmax"):
        assert where[t] == "if-branch", t
    before = model.SerializeToString()
    feeds = []
    for i in range(12):
        x = rng.normal(size=(int(rng.integers(1, 4)), 4)).astype(np.float32)
        if i % 3 == 1:
            x = -np.abs(x)  # sum < 0: the inner else branch
        feeds.append({"c": np.array(i % 4 != 3), "x": x})
    names = ["a", "b", "am", "neg", "e", "pos", "y"]
    out = capture(model, names, feeds, lambda t: [Keep(), MinMax()], progress=False)
    assert model.SerializeToString() == before
    for name in ["a", "b", "am", "neg", "e", "pos"]:
        expected = [v for f in feeds if (v := reference_if(bool(f["c"]), f["x"])[name]) is not None]
        got = out[name][0].arrays
        assert len(got) == len(expected) > 0, name  # samples that skip the branch are not fed
        for g, e in zip(got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype, name
            np.testing.assert_allclose(g, e, rtol=1e-6)
    assert out["am"][0].arrays[0].dtype == np.int64
    y_ref = [run_with_outputs(model, ["y"], f)[0] for f in feeds]
    for g, r in zip(out["y"][0].arrays, y_ref):
        np.testing.assert_array_equal(g, r)
    mm = out["e"][1]
    alle = np.concatenate([a.ravel() for a in out["e"][0].arrays])
    assert (mm.min, mm.max, mm.count) == (alle.min(), alle.max(), alle.size)


# ------------------------------------------------------------------ memory
def big_activation_model() -> onnx.ModelProto:
    """x [1, 64] -> big = Expand(x, [64, 64, 64]) * 2 (1 MiB of float32) -> y = ReduceSum(big)."""
    f = TensorProto.FLOAT
    g = helper.make_graph(
        [
            const("shape", np.array([64, 64, 64], np.int64)),
            helper.make_node("Expand", ["x", "shape"], ["ex"]),
            const("two", np.float32(2.0)),
            helper.make_node("Mul", ["ex", "two"], ["big"]),
            helper.make_node("ReduceSum", ["big"], ["y"], keepdims=0),
        ],
        "big",
        [helper.make_tensor_value_info("x", f, [1, 64])],
        [helper.make_tensor_value_info("y", f, [])],
    )
    return helper.make_model(g, opset_imports=OPSET)


def test_memory_does_not_grow_with_the_number_of_samples():
    model = big_activation_model()

    def feeds(n):  # generated lazily: the test holds no list of inputs either
        r = np.random.default_rng(0)
        for _ in range(n):
            yield {"x": r.normal(size=(1, 64)).astype(np.float32)}

    seen: list[weakref.ref] = []

    class Watch:
        def update(self, array):
            seen.append(weakref.ref(array))

    capture(model, ["big"], feeds(3), lambda t: [MinMax()], progress=False)  # warm-up (imports, ORT arenas)
    gc.collect()
    tracemalloc.start()
    try:
        hist, mm = Histogram(), MinMax()
        capture(model, ["big"], feeds(200), {"big": [hist, mm, Watch()]}, progress=False)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        # Control: keeping arrays is visible to tracemalloc (20 samples = 20 MiB).
        capture(model, ["big"], feeds(20), {"big": [Keep()]}, progress=False)
        _, control_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert hist.count == 200 * 64**3 == int(hist.counts.sum())
    assert control_peak > 15 * 2**20
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB for 200 samples of a 1 MiB activation"
    gc.collect()
    assert len(seen) == 200
    assert sum(r() is not None for r in seen) == 0  # no captured array outlives the run


# ------------------------------------------------------------------ real models
def inline_if(model: onnx.ModelProto, node_name: str, branch: str) -> onnx.ModelProto:
    """A copy of ``model`` where main-graph If ``node_name`` is replaced by ``branch``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = list(m.graph.node)
    idx = next(i for i, n in enumerate(nodes) if n.name == node_name)
    node = nodes[idx]
    g = next(a.g for a in node.attribute if a.name == branch)
    body = list(g.node) + [
        helper.make_node("Identity", [o.name], [n], name=f"{node_name}/inlined_{k}")
        for k, (o, n) in enumerate(zip(g.output, node.output))
    ]
    m.graph.initializer.extend(g.initializer)
    del m.graph.node[:]
    m.graph.node.extend(nodes[:idx] + body + nodes[idx + 1 :])
    return m


@pytest.mark.real
def test_silero_vad_capture_inside_if_branches():
    model = onnx.load(str(rm.fetch("silero_vad")))
    feeds = rm.real_inputs("silero_vad", n=4)
    where = capturable_tensors(model)
    lstm, lstm_other = "/model/decoder/rnn/LSTM_output_0", "/model/decoder/rnn_1/LSTM_output_0"
    nested = "/model/decoder/rnn/Identity_5_output_0"  # two If levels deep
    cond1, cond2 = "/model/decoder/Cast_output_0", "/model/decoder/rnn/Cast_2_output_0"
    for t in (lstm, lstm_other, nested, cond2):
        assert where[t] == "if-branch"
    names = [lstm, lstm_other, nested, cond1, cond2, "/model/encoder/3/activation/Relu_output_0"]
    out = capture(model, names, feeds, lambda t: [MinMax(), Histogram(), Keep()], progress=False)
    # On these inputs the outer If takes then_branch, the inner one (If_4) else_branch.
    assert [bool(a) for a in out[cond1][2].arrays] == [True] * 4
    assert [bool(a) for a in out[cond2][2].arrays] == [False] * 4
    assert out[lstm_other][0].count == 0  # the branch not taken feeds nothing
    # Reference: inline the taken branches and expose the tensors as plain outputs.
    ref_model = inline_if(inline_if(model, "/model/decoder/If_1", "then_branch"), "/model/decoder/rnn/If_4", "else_branch")
    refs = [run_with_outputs(ref_model, [lstm, nested], f) for f in feeds]
    for k, name in enumerate([lstm, nested]):
        mm, hist, keep = out[name]
        allv = np.concatenate([r[k].ravel() for r in refs])
        assert (mm.min, mm.max, mm.count) == (float(allv.min()), float(allv.max()), allv.size), name
        assert hist.min == mm.min and hist.max == mm.max and int(hist.counts.sum()) == allv.size
        for got, r in zip(keep.arrays, refs):
            np.testing.assert_array_equal(got, r[k])


@pytest.mark.real
def test_ppocr_rec_varying_widths():
    """Histograms over inputs of different widths (onnxruntime's own calibrator
    crashes on those)."""
    model = onnx.load(str(rm.fetch("ppocr_rec")))
    base = rm.real_inputs("ppocr_rec", n=3)
    feeds = [
        {"x": base[0]["x"][..., :120].copy()},
        {"x": base[1]["x"][..., :200].copy()},
        {"x": base[2]["x"]},
        {"x": np.pad(base[0]["x"], ((0, 0), (0, 0), (0, 0), (0, 80)))},
    ]
    names = ["batch_norm_2.tmp_2", "transpose_51.tmp_0", "softmax_11.tmp_0"]

    def make(t):
        extra = PerChannel(axis=1) if t == "batch_norm_2.tmp_2" else Gram(axis=-1)
        return [Histogram(), MinMax(), extra]

    out = capture(model, names, feeds, make, progress=False)
    refs = [run_with_outputs(model, names, f) for f in feeds]
    widths = {r[1].shape[1] for r in refs}
    assert len(widths) == 4  # the sequence length follows the width
    for k, name in enumerate(names):
        hist, mm, extra = out[name]
        allv = np.concatenate([r[k].ravel() for r in refs]).astype(np.float64)
        assert (mm.min, mm.max, mm.count) == (allv.min(), allv.max(), allv.size), name
        assert int(hist.counts.sum()) == allv.size
        width = (hist.edges[-1] - hist.edges[0]) / hist.bins
        assert abs(hist.percentile(50) - np.percentile(allv, 50)) <= width * 1.0001
    pc = out["batch_norm_2.tmp_2"][2]
    chans = np.concatenate([np.moveaxis(r[0], 1, 0).reshape(r[0].shape[1], -1) for r in refs], axis=1)
    np.testing.assert_allclose(pc.max, chans.max(axis=1))
    gram = out["transpose_51.tmp_0"][2]
    rows = np.concatenate([r[1].reshape(-1, r[1].shape[-1]) for r in refs]).astype(np.float64)
    np.testing.assert_allclose(gram.xtx, rows.T @ rows, rtol=1e-9, atol=1e-9)
