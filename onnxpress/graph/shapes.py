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

from .model import Model

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


def infer_shapes(model: Model) -> dict[str, TensorType]:
    """Infer the dtype and shape of every tensor of the main graph and subgraphs.

    Returns:
        Map from tensor name to :class:`TensorType`; tensors whose type inference
        could not determine are absent. Inference errors are logged and yield a
        partial map, never an exception.
    """
    proto = skeleton_proto(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several types; a partial answer is fine
        logger.debug("shape inference failed: %s", exc)
        inferred = proto
    result: dict[str, TensorType] = {}

    def visit(g: onnx.GraphProto) -> None:
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            if vi.type.HasField("tensor_type"):
                tt = vi.type.tensor_type
                dtype = (
                    np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)) if tt.elem_type else None
                )
                result[vi.name] = TensorType(dtype, _dims(tt))
        for init in g.initializer:
            result[init.name] = TensorType(
                np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)), tuple(init.dims)
            )
        for node in g.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sg in attr.graphs:
                        visit(sg)

    visit(inferred.graph)
    return result
