"""Lift ``Constant`` nodes to initializers.

PP-OCR, Silero VAD and many Paddle/TF exports keep every weight in ``Constant``
nodes; other passes (folding, BatchNorm folding, quantization) see a weight only
once it is an initializer. A Constant whose output is a graph output (of any
graph, e.g. an If branch returning a constant) stays a node, since a subgraph
output must be produced by a node of that subgraph. ``sparse_value`` and
string-valued Constants are left alone.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Model, constant_array, iter_graphs
from ._rewrite import all_graph_outputs, remove_nodes, replace_uses
from .base import Context, Pass, PassResult, register

__all__ = ["LiftConstants"]

logger = logging.getLogger(__name__)


def constant_node_value(node: gs.Node) -> np.ndarray | None:
    """The value of a ``Constant`` node as an array, or None when not liftable."""
    attrs = node.attrs
    if "value" in attrs and isinstance(attrs["value"], gs.Constant):
        value = attrs["value"]
        return None if value.dtype is None or np.dtype(value.dtype).kind in "OUS" else constant_array(value)
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    return None


@register
@dataclass
class LiftConstants(Pass):
    """Replace ``Constant`` nodes by initializers of the graph that uses them."""

    name = "lift-constants"
    summary = "turn Constant nodes into initializers (weights of Paddle/TF exports)"

    def run(self, model: Model, ctx: Context) -> PassResult:
        outputs = all_graph_outputs(model)
        lifted = 0
        for g in iter_graphs(model.graph):
            done = []
            for node in g.nodes:
                if node.op != "Constant" or node.domain not in (None, "", "ai.onnx") or len(node.outputs) != 1:
                    continue
                out = node.outputs[0]
                if id(out) in outputs:
                    continue
                value = node.attrs.get("value")
                if isinstance(value, gs.Constant):
                    if value.dtype is None or np.dtype(value.dtype).kind in "OUS":
                        continue
                    const = value  # keeps lazy values: no copy of the data
                    const.name = out.name
                else:
                    arr = constant_node_value(node)
                    if arr is None:
                        continue
                    const = gs.Constant(out.name, arr)
                replace_uses(out, const)
                done.append(node)
            if done:
                remove_nodes(g, done)
                lifted += len(done)
        if lifted:
            logger.info("lift-constants: lifted %d Constant nodes", lifted)
        return PassResult(modified=lifted > 0, stats={"constants_lifted": lifted})
