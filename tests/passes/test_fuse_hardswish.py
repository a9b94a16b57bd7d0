"""Tests of the fuse-hardswish pass: every written form of ``x * Clip(x + 3, 0, 6) / 6``
(scale last or first, Div by 6 or Mul by 1/6, both operand orders, Clip bounds as
attributes or inputs, constants as initializers or Constant nodes) becomes
``Mul(x, HardSigmoid(x))`` or ``HardSwish(x)``, checked in onnxruntime with graph
optimizations disabled and enabled; refused when an intermediate has another
reader or is a graph output, or a constant is off."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as h
from onnx import numpy_helper as nh

from tests.conftest import apply, assert_equivalent, run_once

PASS = "fuse-hardswish"
RTOL, ATOL = 1e-5, 1e-6


class _G:
    """A small graph under construction: X [N,4,5,5] -> Conv -> x -> pattern."""

    def __init__(self, opset: int, const_kind: str = "init", dtype=np.float32) -> None:
        self.opset, self.const_kind, self.dtype = opset, const_kind, dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.k = itertools.count()
        rng = np.random.default_rng(1)
        w = (rng.standard_normal((4, 4, 3, 3)) * 0.6).astype(dtype)
        self.inits.append(nh.from_array(w, "W"))
        self.node("Conv", ["X", "W"], "x", pads=[1, 1, 1, 1])

    def node(self, op: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or f"t{next(self.k)}"
        self.nodes.append(h.make_node(op, inputs, [out], name=f"n_{out}", **attrs))
        return out

    def const(self, v: float) -> str:
        name = f"c{next(self.k)}"
        kind = self.const_kind
        if kind == "float" and (self.opset < 12 or self.dtype != np.float32):
            kind = "node"
        if kind == "init":
            self.inits.append(nh.from_array(np.array(v, self.dtype), name))
        elif kind == "init1":
            self.inits.append(nh.from_array(np.array([v], self.dtype), name))
        elif kind == "node":
            self.nodes.append(h.make_node("Constant", [], [name], value=nh.from_array(np.array(v, self.dtype), name + "_v")))
        else:  # value_float (opset >= 12)
            self.nodes.append(h.make_node("Constant", [], [name], value_float=float(v)))
        return name

    def clip(self, a: str, lo: float = 0.0, hi: float = 6.0) -> str:
        if self.opset < 11:
            return self.node("Clip", [a], min=lo, max=hi)
        return self.node("Clip", [a, self.const(lo), self.const(hi)])

    def model(self, outputs: list[str]) -> onnx.ModelProto:
        et = TP.FLOAT if self.dtype == np.float32 else int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype)))
        graph = h.make_graph(
            self.nodes,
            "g",
            [h.make_tensor_value_info("X", et, ["N", 4, 5, 5])],
            [h.make_tensor_value_info(o, et, ["N", 4, 5, 5]) for o in outputs],
            initializer=self.inits,
        )
        proto = h.make_model(graph, opset_imports=[h.make_opsetid("", self.opset)], ir_version=7)
        onnx.checker.check_model(proto, full_check=True)
        return proto


def hardswish(g: _G, x: str = "x", form: str = "div", add_x_first: bool = True, mul_x_first: bool = True,
              three: float = 3.0, six: float = 6.0, out: str | None = None) -> dict[str, str]:
    """Write the decomposed pattern; return the names of its tensors."""
    c3 = g.const(three)
    a = g.node("Add", [x, c3] if add_x_first else [c3, x])
    k = g.clip(a, 0.0, six)
    names = {"add": a, "clip": k}

    def times_x(t: str, o: str | None = None) -> str:
        return g.node("Mul", [x, t] if mul_x_first else [t, x], o)

    def scale(t: str, kind: str, o: str | None = None) -> str:
        if kind == "div":
            return g.node("Div", [t, g.const(6.0)], o)
        c = g.const(1.0 / 6.0)
        return g.node("Mul", [t, c] if kind == "mul_sixth" else [c, t], o)

    if form.startswith("first_"):  # x * (Clip(x + 3) / 6)
        names["scaled"] = scale(k, form[len("first_"):])
        names["y"] = times_x(names["scaled"], out)
    else:  # (x * Clip(x + 3)) / 6
        names["product"] = times_x(k)
        names["y"] = scale(names["product"], form, out)
    return names


def feeds(n=(1, 3), dtype=np.float32):
    rng = np.random.default_rng(0)
    # Wide enough for both saturated sides (x < -3 and x > 3) and the ramp.
    return [{"X": (rng.standard_normal((b, 4, 5, 5)) * 3).astype(dtype)} for b in n]


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node if n.op_type != "Constant"]


def expected(opset: int) -> list[str]:
    """The ops after the rewrite of X -> Conv -> pattern (HardSwish needs opset 14)."""
    return ["Conv", "HardSwish"] if opset >= 14 else ["Conv", "HardSigmoid", "Mul"]


def fused(records) -> int:
    return sum(r.stats["patterns_fused"] for r in records if r.name == PASS)


def check_fused(proto, expect_ops, **options):
    out, records = apply(proto, PASS, **options)
    out, _ = apply(out, "eliminate-dead-code")
    assert ops(out) == expect_ops
    assert fused(records) == 1
    assert_equivalent(proto, out, feeds(), rtol=RTOL, atol=ATOL)
    _, again, _ = run_once(out, PASS, **options)
    assert again.modified is False and again.stats["patterns_fused"] == 0
    return out


# ---------------------------------------------------------------- every form
FORMS = ["div", "mul_sixth", "sixth_mul", "first_div", "first_mul_sixth", "first_sixth_mul"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("add_x_first, mul_x_first", [(True, True), (False, False), (True, False), (False, True)])
@pytest.mark.parametrize("opset", [10, 13, 17])
def test_every_form_and_operand_order(form, add_x_first, mul_x_first, opset):
    g = _G(opset)
    hardswish(g, form=form, add_x_first=add_x_first, mul_x_first=mul_x_first, out="Y")
    proto = g.model(["Y"])
    out = check_fused(proto, expected(opset))
    if opset < 14:
        hs = next(n for n in out.graph.node if n.op_type == "HardSigmoid")
        attrs = {a.name: a.f for a in hs.attribute}
        assert attrs["alpha"] == pytest.approx(1 / 6) and attrs["beta"] == 0.5
    assert out.graph.output[0].name == "Y"


@pytest.mark.parametrize("const_kind", ["init", "init1", "node", "float"])
@pytest.mark.parametrize("opset", [7, 10, 11, 12, 14, 18])
def test_constant_kinds_and_clip_bounds_across_opsets(const_kind, opset):
    # Clip bounds are attributes at opset 7-10 and inputs at >= 11.
    g = _G(opset, const_kind)
    hardswish(g, form="div", out="Y")
    check_fused(g.model(["Y"]), expected(opset))


@pytest.mark.parametrize("opset", [14, 17, 20])
def test_hardswish_op_or_the_pair_at_opset_14_and_later(opset):
    g = _G(opset)
    hardswish(g, form="mul_sixth", out="Y")
    check_fused(g.model(["Y"]), ["Conv", "HardSwish"])
    check_fused(g.model(["Y"]), ["Conv", "HardSigmoid", "Mul"], prefer_hardswish=False)


def test_float16():
    g = _G(13, "init", np.float16)
    hardswish(g, out="Y")
    proto = g.model(["Y"])
    out, records = apply(proto, PASS)
    assert fused(records) == 1
    assert_equivalent(proto, out, feeds(dtype=np.float16), rtol=2e-3, atol=2e-3)


def test_two_patterns_and_fused_into_conv_by_onnxruntime(tmp_path):
    g = _G(12)
    y1 = hardswish(g, form="div")["y"]
    g.inits.append(nh.from_array((np.random.default_rng(2).standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32), "W2"))
    c2 = g.node("Conv", [y1, "W2"])
    y2 = hardswish(g, x=c2, form="first_mul_sixth", add_x_first=False)["y"]
    # onnxruntime does not fuse an activation that writes a graph output.
    g.node("Sigmoid", [y2], "Y")
    proto = g.model(["Y"])
    out, records = apply(proto, PASS, "eliminate-dead-code")
    assert fused(records) == 2
    assert ops(out) == ["Conv", "HardSigmoid", "Mul", "Conv", "HardSigmoid", "Mul", "Sigmoid"]
    assert_equivalent(proto, out, feeds(), rtol=RTOL, atol=ATOL)
    # What the pass is for: onnxruntime folds each pair into its Conv.
    path = tmp_path / "opt.onnx"
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path)
    opts.log_severity_level = 3
    ort.InferenceSession(out.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(path))
    activations = [a.s for n in optimized.graph.node for a in n.attribute if a.name == "activation"]
    assert activations.count(b"HardSwish") == 2
    assert not any(n.op_type in ("HardSigmoid", "Clip") for n in optimized.graph.node)


def _branch() -> _G:
    """An empty opset-13 branch builder whose names cannot clash with the outer graph's."""
    sub = _G(13)
    sub.nodes, sub.inits, sub.k = [], [], itertools.count(1000)
    return sub


def _if_model(g: _G, sub: _G) -> onnx.ModelProto:
    """``Y = If(C, then: sub's output "b", else: Relu(x))`` appended to ``g``, as a model."""
    then = h.make_graph(sub.nodes, "then", [], [h.make_tensor_value_info("b", TP.FLOAT, ["N", 4, 5, 5])], initializer=sub.inits)
    other = h.make_graph([h.make_node("Relu", ["x"], ["e"])], "else", [], [h.make_tensor_value_info("e", TP.FLOAT, ["N", 4, 5, 5])])
    g.node("If", ["C"], "Y", then_branch=then, else_branch=other)
    graph = h.make_graph(
        g.nodes, "g",
        [h.make_tensor_value_info("X", TP.FLOAT, ["N", 4, 5, 5]), h.make_tensor_value_info("C", TP.BOOL, [])],
        [h.make_tensor_value_info("Y", TP.FLOAT, ["N", 4, 5, 5])], initializer=g.inits,
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)], ir_version=7)


def test_inside_if_branch_reading_outer_x():
    g = _G(13)
    sub = _branch()
    hardswish(sub, form="div", out="b")
    proto = _if_model(g, sub)
    out, records = apply(proto, PASS, "eliminate-dead-code")
    assert fused(records) == 1
    branch = next(a.g for n in out.graph.node if n.op_type == "If" for a in n.attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node if n.op_type != "Constant"] == ["HardSigmoid", "Mul"]
    all_feeds = [dict(f, C=np.array(c)) for f in feeds() for c in (True, False)]
    assert_equivalent(proto, out, all_feeds, rtol=RTOL, atol=ATOL)


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("which", ["add", "clip", "product", "scaled"])
@pytest.mark.parametrize("how", ["reader", "output"])
def test_intermediate_read_elsewhere_is_refused(which, how):
    g = _G(13)
    names = hardswish(g, form="first_div" if which == "scaled" else "div", out="Y")
    outputs = ["Y"]
    if how == "reader":
        outputs.append(g.node("Relu", [names[which]], "Z"))
    else:
        outputs.append(names[which])
    proto = g.model(outputs)
    out, records = apply(proto, PASS)
    assert not any(r.modified for r in records)
    assert ops(out) == ops(proto)
    assert_equivalent(proto, out, feeds())


def test_pattern_output_is_graph_output_and_x_is_read_elsewhere():
    # Y is a graph output (kept by name); x has other readers: both fine.
    g = _G(13)
    hardswish(g, form="sixth_mul", out="Y")
    g.node("Relu", ["x"], "Z")
    proto = g.model(["Y", "Z"])
    out = check_fused(proto, ["Conv", "HardSigmoid", "Mul", "Relu"])
    assert [o.name for o in out.graph.output] == ["Y", "Z"]


@pytest.mark.parametrize(
    "change",
    ["three", "six_clip", "six_div", "other_x", "clip_min_missing", "double", "add_in_outer_graph"],
)
def test_near_misses_are_refused(change):
    if change == "double":
        g = _G(13, "init", np.float64)
        hardswish(g, out="Y")
        proto = g.model(["Y"])
        out, records = apply(proto, PASS)
        assert not any(r.modified for r in records)
        return
    g = _G(13)
    if change == "three":
        hardswish(g, three=2.9, out="Y")
    elif change == "six_clip":
        hardswish(g, six=5.0, out="Y")
    elif change == "six_div":
        a = g.node("Add", ["x", g.const(3.0)])
        k = g.clip(a)
        m = g.node("Mul", ["x", k])
        g.node("Div", [m, g.const(5.0)], "Y")
    elif change == "other_x":
        z = g.node("Relu", ["x"])
        a = g.node("Add", ["x", g.const(3.0)])
        k = g.clip(a)
        m = g.node("Mul", [z, k])
        g.node("Div", [m, g.const(6.0)], "Y")
    elif change == "clip_min_missing":
        a = g.node("Add", ["x", g.const(3.0)])
        k = g.node("Clip", [a, "", g.const(6.0)])
        m = g.node("Mul", ["x", k])
        g.node("Div", [m, g.const(6.0)], "Y")
    elif change == "add_in_outer_graph":
        a = g.node("Add", ["x", g.const(3.0)])
        sub = _branch()
        k = sub.clip(a)
        m = sub.node("Mul", ["x", k])
        sub.node("Div", [m, sub.const(6.0)], "b")
        proto = _if_model(g, sub)
        out, records = apply(proto, PASS)
        assert not any(r.modified for r in records)
        assert_equivalent(proto, out, [dict(f, C=np.array(True)) for f in feeds()])
        return
    proto = g.model(["Y"])
    out, records = apply(proto, PASS)
    assert not any(r.modified for r in records)
    assert ops(out) == ops(proto)
    assert_equivalent(proto, out, feeds())


def test_rank_one_constant_that_could_broadcast_is_refused():
    # x is a scalar input: Add(x, [3]) has shape [1], HardSigmoid(x) shape []:
    # the rewrite would change the output shape.
    g = _G(13, "init1")
    g.nodes, g.inits = [], []
    hardswish(g, x="S", form="div", out="Y")
    graph = h.make_graph(g.nodes, "g", [h.make_tensor_value_info("S", TP.FLOAT, [])],
                         [h.make_tensor_value_info("Y", TP.FLOAT, [1])], initializer=g.inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)], ir_version=7)
    out, records = apply(proto, PASS)
    assert not any(r.modified for r in records)
    assert_equivalent(proto, out, {"S": np.array(1.5, np.float32)})


# ------------------------------------------------------------------ real models
@pytest.mark.real
@pytest.mark.parametrize("name", ["ppocr_det", "ppocr_rec"])
def test_ppocr_hardswish_fused_and_outputs_equal(name):
    from onnxpress.runtime_check import compare
    from onnxpress.testing import realmodels as rm

    proto = onnx.load(str(rm.fetch(name)))
    out, records = apply(proto, "lift-constants", PASS, "eliminate-dead-code")
    count = fused(records)
    assert count > 0  # PP-LCNetV3: det 24, rec 28 (Mul(x, Clip(Add(x, 3), 0, 6)) / 6)
    assert sum(n.op_type == "HardSigmoid" for n in out.graph.node) == count + sum(
        n.op_type == "HardSigmoid" for n in proto.graph.node
    )
    report = compare(proto, out, rm.real_inputs(name, n=4, seed=0), atol=1e-5, rtol=1e-4)
    assert report.passed, report.to_table()
