"""Pass framework: registry, options, fixed point, iteration cap, strict mode."""
from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs
import pytest

from onnxpress.errors import PassError, UnknownPassError
from onnxpress.graph import load
from onnxpress.passes import Context, Pass, PassManager, PassResult, get_pass, make_pass, registered_passes

LOSSLESS = [
    "lift-constants",
    "fold-constants",
    "inline-constant-if",
    "remove-noops",
    "simplify-reshape",
    "eliminate-common-subexpressions",
    "fold-batchnorm",
    "eliminate-dead-code",
    "merge-initializers",
    "remove-unused-initializers",
]


def _model():
    return load(onnx.parser.parse_model('''
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4] x) => (float[4] y) { a = Identity(x)  b = Identity(a)  y = Relu(b) }'''))


def test_registry_lists_every_lossless_pass():
    names = registered_passes()
    for name in LOSSLESS:
        assert name in names and names[name].lossless and names[name].summary
    with pytest.raises(UnknownPassError, match="valid passes: .*fold-constants"):
        get_pass("fold-everything")
    with pytest.raises(UnknownPassError, match="no option 'cap'.*max_output_bytes"):
        make_pass("fold-constants", cap=3)


def test_manager_reaches_fixed_point_and_records_timing():
    model = _model()
    records = PassManager([make_pass("remove-noops")]).run(model, Context())
    assert [r.modified for r in records] == [True, False]
    assert records[0].stats["nodes_removed"] == 2 and records[0].seconds >= 0
    assert [n.op for n in model.graph.nodes] == ["Relu"]


@dataclass
class _AlwaysModifies(Pass):
    name = "test-always-modifies"

    def run(self, model, ctx):
        return PassResult(True, {"n": 1})


@dataclass
class _Breaks(Pass):
    name = "test-breaks-model"

    def run(self, model, ctx):
        node = model.graph.nodes[-1]
        node.op = "NoSuchOp"
        return PassResult(True, {})


@dataclass
class _Raises(Pass):
    name = "test-raises"

    def run(self, model, ctx):
        raise ValueError("boom")


def test_iteration_cap(caplog):
    records = PassManager([_AlwaysModifies()], max_iterations=3).run(_model())
    assert len(records) == 3
    assert "iteration cap" in caplog.text


def test_strict_mode_names_the_pass_that_broke_the_model():
    with pytest.raises(PassError, match="test-breaks-model.*onnx.checker"):
        PassManager([_Breaks()], strict=True).run(_model())
    # Without strict mode the broken model is not detected by the manager.
    PassManager([_Breaks()], strict=False, fixed_point=False).run(_model())


def test_exceptions_become_pass_errors():
    with pytest.raises(PassError, match="pass 'test-raises': ValueError: boom"):
        PassManager([_Raises()]).run(_model())


@dataclass
class _Countdown(Pass):
    """Lossless stand-in that modifies the model on its first ``times`` runs."""

    name = "test-countdown"
    times: int = 2

    def run(self, model, ctx):
        ctx.options.setdefault("log", []).append(self.name)
        self.times -= 1
        return PassResult(self.times >= 0, {})


@dataclass
class _Lossy(Pass):
    """Lossy stand-in: records how often the countdown ran before it; once per model."""

    name = "test-lossy"
    lossless = False

    def run(self, model, ctx):
        log = ctx.options.setdefault("log", [])
        ctx.options.setdefault("seen", []).append(log.count("test-countdown"))
        log.append(self.name)
        return PassResult(len(ctx.options["seen"]) == 1, {})


def test_lossy_passes_run_once_on_the_lossless_fixed_point():
    """[countdown, LOSSY, LOSSY2]: the countdown runs to its fixed point (3 sweeps:
    two that modify, one that does not) before the lossy passes, which run once,
    in one sweep; then the lossless passes again to their fixed point."""
    ctx = Context()
    lossy2 = _Lossy()
    records = PassManager([_Countdown(times=2), _Lossy(), lossy2]).run(_model(), ctx)
    assert ctx.options["log"] == ["test-countdown"] * 3 + ["test-lossy"] * 2 + ["test-countdown"]
    assert ctx.options["seen"] == [3, 3]  # both lossy passes saw the fixed point
    assert [(r.name, r.iteration) for r in records] == [
        ("test-countdown", 1), ("test-countdown", 2), ("test-countdown", 3),
        ("test-lossy", 4), ("test-lossy", 4), ("test-countdown", 5),
    ]
    # fixed_point=False: the sequence once, as given.
    ctx = Context()
    PassManager([_Countdown(times=2), _Lossy()], fixed_point=False).run(_model(), ctx)
    assert ctx.options["log"] == ["test-countdown", "test-lossy"]


def test_model_state_is_keyed_by_the_model_object():
    """Context.model_state: one set per model; an entry left by a freed model
    whose id a new model reuses is not handed to the new model."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    a, b = load(proto), load(proto)
    ctx = Context()
    ctx.model_state("k", a).add("done")
    assert ctx.model_state("k", a) == {"done"} and ctx.model_state("k", b) == set()
    table = ctx.options["k"]
    table[id(b)] = table.pop(id(a))  # as if b had reused the id of a freed model
    assert ctx.model_state("k", b) == set()
