"""Activation capture: run a model on calibration data and stream chosen
intermediate tensors into collectors.

:func:`capture` exposes the requested tensors as extra outputs of one copy of
the model, opens one onnxruntime CPU session with graph optimizations disabled
(so that every intermediate tensor keeps its name and value), runs the samples
one at a time and gives each captured array to its tensor's collectors, then
drops it. Memory is the model, one sample's activations and the collectors,
whatever the number of samples.

A model whose weights are left in external data (a proto from
``Model.to_proto(external=True)`` or ``load_proto(path, external=True)``, whose
tensors carry ``basepath``) is never loaded here: the copy holds only the stubs,
and :func:`~onnxpress.runtime_check.make_session` hands onnxruntime a small
model file beside the data; the initializer values captured directly are read
from their file.

Tensors inside ``If`` branches (Silero VAD computes its LSTM inside one) are
exposed by threading them out: the tensor becomes an extra output of its
branch (through an ``Identity``), the other branch outputs an empty tensor of
the same element type (a ``Constant`` of shape ``[0]``), and the ``If`` node gets
one more output; nested ``If`` s repeat this level by level. A sample that takes
the other branch yields an empty array, which is skipped: the collectors see the
tensor only on samples that compute it. The element type of such a tensor comes
from the model's ``value_info`` or from ONNX shape inference, run on a copy of
the model without its weights. Tensors inside ``Loop``/``Scan`` bodies hold one
value per iteration and are not capturable.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import CheckError, InputError, InputNameError
from ..graph.model import tensor_array
from ..runtime_check.compare import make_session
from ..runtime_check.inputs import validate_feeds
from .collectors import Collector
from .readers import CalibrationData, Feeds

__all__ = ["capture", "capturable_tensors"]

logger = logging.getLogger(__name__)

_LARGE_CONSTANT = 1024  # elements; bigger Constant values are left out of the type-inference copy
_GRAPH_OPS_IF = {("", "If"), ("ai.onnx", "If")}


@dataclass(frozen=True)
class _Where:
    """Where a tensor is defined.

    kind: ``"main"``, ``"if-branch"`` or ``"loop-body"``.
    path: ``(node index, branch attribute name)`` per ``If`` level, from the main graph down.
    source: ``"input"``, ``"initializer"``, ``"sparse-initializer"`` or ``"node"``.
    blocker: for ``"loop-body"``, the node whose body holds the tensor.
    """

    kind: str
    path: tuple[tuple[int, str], ...] = ()
    source: str = "node"
    blocker: str = ""


def _locate(graph: onnx.GraphProto, path: tuple = (), kind: str = "main", blocker: str = "") -> dict[str, _Where]:
    """Every tensor name defined in ``graph`` and its subgraphs (outermost definition wins)."""
    found: dict[str, _Where] = {}

    def add(name: str, where: _Where) -> None:
        if name and name not in found:
            found[name] = where

    for vi in graph.input:
        add(vi.name, _Where(kind, path, "input", blocker))
    for init in graph.initializer:
        add(init.name, _Where(kind, path, "initializer", blocker))
    for init in graph.sparse_initializer:
        add(init.values.name, _Where(kind, path, "sparse-initializer", blocker))
    for idx, node in enumerate(graph.node):
        for out in node.output:
            add(out, _Where(kind, path, "node", blocker))
        is_if = (node.domain, node.op_type) in _GRAPH_OPS_IF
        for attr in node.attribute:
            sub_path = path + ((idx, attr.name),)
            if attr.type == onnx.AttributeProto.GRAPH:
                if is_if and kind != "loop-body":
                    inner = _locate(attr.g, sub_path, "if-branch")
                else:
                    inner = _locate(attr.g, sub_path, "loop-body", blocker or f"{node.op_type} node {node.name!r}")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                inner = {}
                for g in attr.graphs:
                    inner.update(_locate(g, sub_path, "loop-body", blocker or f"{node.op_type} node {node.name!r}"))
            else:
                continue
            for name, where in inner.items():
                add(name, where)
    return found


def capturable_tensors(model: onnx.ModelProto) -> dict[str, str]:
    """Tensors :func:`capture` can expose, and where they live.

    Returns:
        ``{name: "main" | "if-branch"}``: graph inputs, initializers and node
        outputs of the main graph, and the node outputs and initializers of
        ``If`` branches at any depth (not under a ``Loop``/``Scan``). Tensors
        of ``Loop``/``Scan`` bodies and sparse initializers are left out.
    """
    return {
        name: w.kind
        for name, w in _locate(model.graph).items()
        if w.kind != "loop-body" and w.source != "sparse-initializer"
    }


# ------------------------------------------------------------------ element types
def _collect_types(graph: onnx.GraphProto, into: dict[str, int]) -> None:
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        et = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        if et and vi.name not in into:
            into[vi.name] = et
    for init in graph.initializer:
        into.setdefault(init.name, init.data_type)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _collect_types(attr.g, into)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    _collect_types(g, into)


def _light_node(node: onnx.NodeProto) -> onnx.NodeProto:
    """A copy of ``node`` whose large Constant value keeps its dims and dtype but not its data."""
    light = onnx.NodeProto()
    light.op_type, light.domain, light.name = node.op_type, node.domain, node.name
    light.input.extend(node.input)
    light.output.extend(node.output)
    for attr in node.attribute:
        a = light.attribute.add()
        if attr.type == onnx.AttributeProto.TENSOR and node.op_type == "Constant":
            n = int(np.prod(attr.t.dims)) if len(attr.t.dims) else 1
            if n > _LARGE_CONSTANT:
                a.name, a.type = attr.name, attr.type
                a.t.data_type = attr.t.data_type
                a.t.dims.extend(attr.t.dims)
                continue
        if attr.type == onnx.AttributeProto.GRAPH:
            a.name, a.type = attr.name, attr.type
            a.g.CopyFrom(_light_graph(attr.g, main=False))
            continue
        a.CopyFrom(attr)
    return light


def _light_graph(graph: onnx.GraphProto, main: bool) -> onnx.GraphProto:
    """``graph`` without weight data: main-graph initializers become typed inputs."""
    g = onnx.GraphProto()
    g.name = graph.name
    g.input.extend(graph.input)
    g.output.extend(graph.output)
    g.value_info.extend(graph.value_info)
    if main:
        names = {vi.name for vi in graph.input}
        for init in graph.initializer:
            if init.name not in names:
                g.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    else:
        g.initializer.extend(graph.initializer)  # subgraph weights are small; If branches take no inputs
    g.node.extend(_light_node(n) for n in graph.node)
    return g


def _element_types(model: onnx.ModelProto, wanted: Iterable[str]) -> dict[str, int]:
    """Element types of ``wanted`` tensors: declared ones first, else by shape inference."""
    types: dict[str, int] = {}
    _collect_types(model.graph, types)
    if all(types.get(t) for t in wanted):
        return types
    skeleton = onnx.ModelProto()
    skeleton.ir_version = model.ir_version
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    skeleton.graph.CopyFrom(_light_graph(model.graph, main=True))
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, check_type=False, strict_mode=False)
    except Exception as exc:  # keep what is declared; the caller names what is missing
        logger.debug("shape inference failed on the weightless copy: %s", exc)
        return types
    _collect_types(inferred.graph, types)
    return types


# ------------------------------------------------------------------ exposing
class _Names:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.used = set(_locate(model.graph))
        self.used.update(o.name for o in model.graph.output)

    def new(self, base: str) -> str:
        k = 0
        while True:
            name = f"{base}__capture{k}"
            if name not in self.used:
                self.used.add(name)
                return name
            k += 1


def _branch(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    for attr in node.attribute:
        if attr.name == name:
            return attr.g
    raise KeyError(name)


def _expose_in_if(work: onnx.ModelProto, tensor: str, where: _Where, elem_type: int, names: _Names) -> str:
    """Thread ``tensor`` out of its ``If`` branches to a new main-graph output of ``work``."""
    chain = []
    graph = work.graph
    for idx, attr_name in where.path:
        node = graph.node[idx]
        chain.append((node, attr_name))
        graph = _branch(node, attr_name)
    current = tensor
    for node, attr_name in reversed(chain):
        other_name = "else_branch" if attr_name == "then_branch" else "then_branch"
        branch, other = _branch(node, attr_name), _branch(node, other_name)
        out_b = names.new(tensor)
        branch.node.append(onnx.helper.make_node("Identity", [current], [out_b], name=names.new(tensor + "/identity")))
        branch.output.append(onnx.helper.make_tensor_value_info(out_b, elem_type, None))
        out_e = names.new(tensor + "/empty")
        empty = onnx.helper.make_tensor(out_e, elem_type, [0], [])
        other.node.append(onnx.helper.make_node("Constant", [], [out_e], name=names.new(tensor + "/constant"), value=empty))
        other.output.append(onnx.helper.make_tensor_value_info(out_e, elem_type, None))
        current = names.new(tensor + "/if")
        node.output.append(current)
    work.graph.output.append(onnx.helper.make_tensor_value_info(current, elem_type, None))
    return current


def _resolve_collectors(
    tensors: Sequence[str],
    collectors: Mapping[str, Sequence[Collector]] | Callable[[str], Sequence[Collector]],
) -> dict[str, list[Collector]]:
    out = {}
    for t in tensors:
        if isinstance(collectors, Mapping):
            if t not in collectors:
                raise InputError(f"no collectors given for tensor {t!r}")
            got = collectors[t]
        else:
            got = collectors(t)
        got = [got] if isinstance(got, Collector) else list(got)
        for c in got:
            if not isinstance(c, Collector):
                raise InputError(f"collector {c!r} of tensor {t!r} has no update(array) method")
        out[t] = got
    return out


# ------------------------------------------------------------------ capture
def capture(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    data: Iterable[Feeds],
    collectors: Mapping[str, Sequence[Collector]] | Callable[[str], Sequence[Collector]],
    *,
    progress: bool = True,
    desc: str = "calibrating",
) -> dict[str, list[Collector]]:
    """Run ``model`` on ``data`` and feed the values of ``tensors`` to collectors.

    Each collector's ``update`` is called once per sample with that sample's
    value of its tensor (a numpy array of the tensor's dtype and that sample's
    shape), except where the value is empty (a branch not taken). Graph inputs
    and initializers of the main graph are passed straight from the feed or the
    initializer, without a round trip through onnxruntime.

    Args:
        model: the model (a ``ModelProto`` with its weights loaded, or left in
            external data with ``basepath``); never modified.
        tensors: names of tensors to capture (see :func:`capturable_tensors`);
            duplicates are ignored.
        data: feed dicts, e.g. a :class:`~onnxpress.calibration.CalibrationData`;
            other iterables are validated against ``model`` feed by feed.
        collectors: per tensor name, the collectors to update; or a function
            returning fresh collectors for a tensor name.
        progress: show a tqdm progress bar.
        desc: the progress bar's label.

    Returns:
        ``{tensor: [collectors]}`` in the order of ``tensors``: the same objects
        that were given (or made by the function), updated.

    Raises:
        InputError: a tensor is not in the model, is inside a ``Loop``/``Scan``
            body, or has an unknown element type (inside an ``If``); a tensor
            has no collectors.
        InputNameError: a feed does not fit the model's inputs.
        CheckError: onnxruntime cannot load or run the model.
    """
    from tqdm.auto import tqdm

    tensors = list(dict.fromkeys(tensors))
    located = _locate(model.graph)
    for t in tensors:
        where = located.get(t)
        if where is None:
            raise InputError(f"cannot capture {t!r}: the model has no tensor of that name")
        if where.kind == "loop-body":
            raise InputError(
                f"cannot capture {t!r}: it is inside the body of {where.blocker}; Loop/Scan bodies are not capturable"
            )
        if where.source == "sparse-initializer":
            raise InputError(f"cannot capture {t!r}: sparse initializers are not capturable")
    result = _resolve_collectors(tensors, collectors)
    if not tensors:
        return result

    trivial = [t for t in tensors if located[t].kind == "main" and located[t].source in ("input", "initializer")]
    graph_outputs = {o.name for o in model.graph.output}
    in_main = [t for t in tensors if located[t].kind == "main" and located[t].source == "node"]
    in_branch = [t for t in tensors if located[t].kind == "if-branch"]

    # One copy of the model, with every captured tensor as an output of the main graph.
    ort_names: list[str] = []  # session output names
    ort_tensors: list[str] = []  # the tensor each output carries
    session = None
    if in_main or in_branch:
        types = _element_types(model, in_branch) if in_branch else {}
        for t in in_branch:
            et = types.get(t, 0)
            if not et:
                raise InputError(
                    f"cannot capture {t!r} inside an If branch: its element type is unknown "
                    "(not declared and not found by ONNX shape inference)"
                )
            if et == onnx.TensorProto.STRING:
                raise InputError(f"cannot capture {t!r}: string tensors are not capturable")
        work = onnx.ModelProto()
        work.CopyFrom(model)
        names = _Names(model)
        for t in in_main:
            if t not in graph_outputs:
                vi = work.graph.output.add()
                vi.name = t  # no type: onnxruntime accepts an untyped main-graph output
            ort_names.append(t)
            ort_tensors.append(t)
        for t in in_branch:
            ort_names.append(_expose_in_if(work, t, located[t], types[t], names))
            ort_tensors.append(t)
        session = make_session(work, "disabled")
        del work
    feed_names = {i.name for i in model.graph.input}
    # Initializer values (also the defaults of overridable inputs), converted once.
    wanted = set(trivial)
    init_values = {x.name: tensor_array(x) for x in model.graph.initializer if x.name in wanted}

    validate = not isinstance(data, CalibrationData)
    total = data.count if isinstance(data, CalibrationData) else (len(data) if isinstance(data, Sized) else None)
    start = time.perf_counter()
    samples = 0
    with tqdm(total=total, desc=desc, disable=not progress, unit="sample", leave=False) as bar:
        for i, feed in enumerate(data):
            if validate:
                try:
                    feed = validate_feeds(model, [dict(feed)])[0]
                except InputNameError as exc:
                    raise InputNameError(str(exc).replace("feed 0:", f"feed {i}:", 1)) from None
            if session is not None:
                try:
                    outs = session.run(ort_names, {k: v for k, v in feed.items() if k in feed_names})
                except Exception as exc:
                    raise CheckError(f"onnxruntime fails on sample {i}: {str(exc).splitlines()[0]}") from exc
                for t, arr in zip(ort_tensors, outs):
                    _update(result[t], arr)
                del outs
            for t in trivial:  # a feed value, else the initializer
                value = feed.get(t)
                _update(result[t], init_values[t] if value is None else value)
            samples += 1
            bar.update(1)
    logger.info(
        "captured %d tensor(s) (%d inside If branches) over %d sample(s) in %.2f s",
        len(tensors), len(in_branch), samples, time.perf_counter() - start,
    )
    if samples == 0:
        logger.warning("capture: the calibration data yielded no samples")
    return result


def _update(collectors: list[Collector], array: np.ndarray) -> None:
    array = np.asarray(array)
    if array.size == 0:  # a branch not taken (or a genuinely empty tensor)
        return
    for c in collectors:
        c.update(array)
