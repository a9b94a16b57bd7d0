"""Shape inference that trusts only what can be derived from the inputs.

Exporters sometimes declare wrong shapes (ddddocr declares its output as
``[1, seqlen]`` and returns ``[T, 1, 8210]``). A pass that trusted such a
declaration could pin a dynamic dimension. :func:`infer_shapes` therefore drops the
declared ``value_info`` and output shapes and re-derives every shape with ONNX
shape inference (``onnx.shape_inference``, strict off, data propagation on) from the
graph inputs and the initializers. Large initializers are replaced by typed inputs
so inference never copies the weights.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

from .model import Model, iter_graphs

__all__ = ["TensorType", "infer_shapes", "skeleton_proto"]

logger = logging.getLogger(__name__)

Dim = "int | str | None"


@dataclass(frozen=True)
class TensorType:
    """Inferred element type and shape of one tensor.

    Attributes:
        dtype: numpy dtype, or None when unknown.
        shape: tuple of dims (int for a static dim, str for a symbolic one, None for
            unknown), or None when even the rank is unknown.
    """

    dtype: np.dtype | None
    shape: tuple | None

    @property
    def static(self) -> bool:
        """True when the rank and every dimension are known integers."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)


def _value_info(tensor: gs.Tensor, keep_shape: bool) -> onnx.ValueInfoProto:
    dtype = tensor.dtype
    if dtype is None:
        return onnx.helper.make_empty_tensor_value_info(tensor.name)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)) if not isinstance(dtype, int) else dtype
    shape = tensor.shape if keep_shape else None
    if isinstance(tensor, gs.Constant):
        shape = list(tensor.shape)
    return onnx.helper.make_tensor_value_info(tensor.name, elem, shape)


def _skeleton_graph(graph: gs.Graph, max_elements: int, overridable: set[str]) -> onnx.GraphProto:
    nodes = [OnnxExporter.export_node(n) for n in graph.nodes]
    _replace_subgraphs(nodes, graph, max_elements, overridable)
    inputs = [_value_info(t, keep_shape=True) for t in graph.inputs]
    outputs = [_value_info(t, keep_shape=False) for t in graph.outputs]
    inits = []
    input_names = {t.name for t in graph.inputs}
    seen = set()
    for node in graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and t.name not in seen:
                seen.add(t.name)
                if t.name in input_names:
                    continue
                if int(np.prod(t.shape)) <= max_elements or t.name in overridable:
                    inits.append(OnnxExporter.export_tensor_proto(t))
                else:
                    inputs.append(_value_info(t, keep_shape=True))
    return onnx.helper.make_graph(nodes, graph.name or "g", inputs, outputs, initializer=inits)


def _replace_subgraphs(nodes, graph: gs.Graph, max_elements: int, overridable: set[str]) -> None:
    for proto_node, node in zip(nodes, graph.nodes):
        for attr in proto_node.attribute:
            value = node.attrs.get(attr.name)
            if isinstance(value, gs.Graph):
                attr.g.CopyFrom(_skeleton_graph(value, max_elements, overridable))


def skeleton_proto(model: Model, max_elements: int = 4096) -> onnx.ModelProto:
    """A weightless copy of ``model`` for shape inference: initializers above
    ``max_elements`` become typed graph inputs, declared value_info is dropped."""
    graph = _skeleton_graph(model.graph, max_elements, model.overridable)
    funcs = [OnnxExporter.export_function(f) for f in model.graph.functions]
    proto = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()],
        functions=funcs,
    )
    proto.ir_version = max(model.ir_version, 4)
    return proto


def _dims(tt: onnx.TypeProto.Tensor) -> tuple | None:
    if not tt.HasField("shape"):
        return None
    out = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _run_inference(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several types; a partial answer is fine
        logger.debug("shape inference failed: %s", exc)
        return proto


def _better(old: TensorType | None, new: TensorType) -> bool:
    if old is None:
        return True
    if old.dtype is None and new.dtype is not None:
        return True
    known = lambda t: -1 if t.shape is None else sum(isinstance(d, int) for d in t.shape) + 0.5 * len(t.shape)
    return new.dtype is not None and known(new) > known(old)


def _collect(g: onnx.GraphProto, result: dict[str, TensorType], recurse: bool) -> None:
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.HasField("tensor_type"):
            tt = vi.type.tensor_type
            dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
            new = TensorType(dtype, _dims(tt))
            if _better(result.get(vi.name), new):
                result[vi.name] = new
    for init in g.initializer:
        result[init.name] = TensorType(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)), tuple(init.dims))
    if recurse:
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    _collect(attr.g, result, recurse)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sg in attr.graphs:
                        _collect(sg, result, recurse)


def _standalone_subgraph(model: Model, graph: gs.Graph, known: dict[str, TensorType]) -> onnx.ModelProto:
    """A model made of one subgraph, whose outer-scope reads become graph inputs
    typed from ``known`` (onnx shape inference does not write the types it infers
    inside If/Loop/Scan bodies back to the model)."""
    gp = _skeleton_graph(graph, 4096, model.overridable)
    declared = {vi.name for vi in gp.input} | {t.name for t in gp.initializer}
    produced: set[str] = set()
    read: dict[str, gs.Tensor] = {}
    for g in iter_graphs(graph, functions=False):
        produced.update(t.name for t in g.inputs)
        for node in g.nodes:
            produced.update(t.name for t in node.outputs)
            for t in node.inputs:
                if t.name and not isinstance(t, gs.Constant):
                    read.setdefault(t.name, t)
    for name in read:
        if name in produced or name in declared:
            continue
        tt = known.get(name)
        if tt is not None and tt.dtype is not None:
            elem = onnx.helper.np_dtype_to_tensor_dtype(tt.dtype)
            shape = None if tt.shape is None else [d if d is not None else None for d in tt.shape]
            gp.input.append(onnx.helper.make_tensor_value_info(name, elem, shape))
        else:
            gp.input.append(onnx.helper.make_empty_tensor_value_info(name))
    proto = onnx.helper.make_model(
        gp,
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in model.opset_imports.items()],
        functions=[OnnxExporter.export_function(f) for f in model.graph.functions],
    )
    proto.ir_version = max(model.ir_version, 4)
    return proto



def infer_shapes(model: Model) -> dict[str, TensorType]:
    """Infer the dtype and shape of every tensor of the main graph and subgraphs.

    The main graph is inferred from its inputs; then each If/Loop/Scan body, parents
    first, is inferred as a standalone graph whose outer-scope values are typed
    from what was inferred around it.

    Returns:
        Map from tensor name to :class:`TensorType`; tensors whose type inference
        could not determine are absent. Inference errors are logged and yield a
        partial map, never an exception.
    """
    result: dict[str, TensorType] = {}
    _collect(_run_inference(skeleton_proto(model)).graph, result, recurse=True)
    subgraphs = [g for g in iter_graphs(model.graph, functions=False)][1:]
    for g in subgraphs:
        _collect(_run_inference(_standalone_subgraph(model, g, result)).graph, result, recurse=False)
    return result
