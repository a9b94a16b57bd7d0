"""Graph layer: load/save, the working IR over onnx-graphsurgeon, names, traversal,
shape inference and statistics. It holds no rewrite policy."""
from __future__ import annotations

from .io import ModelLike, load, load_proto, save, save_proto
from .model import Model, constant_array, iter_graphs, iter_nodes, iter_proto_graphs
from .names import NameGenerator
from .shapes import TensorType, infer_shapes
from .stats import ModelStats, model_stats

__all__ = [
    "Model",
    "ModelLike",
    "ModelStats",
    "NameGenerator",
    "TensorType",
    "constant_array",
    "infer_shapes",
    "iter_graphs",
    "iter_nodes",
    "iter_proto_graphs",
    "load",
    "load_proto",
    "model_stats",
    "save",
    "save_proto",
]
