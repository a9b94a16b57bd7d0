"""Removal of unused initializers.

An initializer counts as used when any node reads it, in any graph, subgraph
captures included. The onnx-graphsurgeon IR writes only the constants that nodes
read, so an initializer left without readers by another pass disappears on
export; this pass removes the initializers that were already unused in the
user's file (``Model.orphan_initializers``) and, on request, overridable
initializers (graph inputs with a default value, IR >= 4) that nothing reads.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..graph import Model, iter_graphs
from .base import Context, Pass, PassResult, register

__all__ = ["RemoveUnusedInitializers"]

logger = logging.getLogger(__name__)


@register
@dataclass
class RemoveUnusedInitializers(Pass):
    """Drop initializers no node reads.

    Options:
        remove_unused_inputs: also drop initializers that are graph inputs (and the
            inputs) when nothing reads them; off by default since it changes the
            model's input signature.
    """

    remove_unused_inputs: bool = False

    name = "remove-unused-initializers"
    summary = "drop initializers no node reads (keeps initializer-inputs unless asked)"

    def run(self, model: Model, ctx: Context) -> PassResult:
        removed = len(model.orphan_initializers)
        freed = sum(int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize for t in model.orphan_initializers)
        model.orphan_initializers = []
        if self.remove_unused_inputs and model.overridable:
            read = {id(t) for g in iter_graphs(model.graph) for n in g.nodes for t in n.inputs}
            read |= {id(t) for t in model.graph.outputs}
            drop = [t for t in model.graph.inputs if t.name in model.overridable and id(t) not in read]
            for t in drop:
                model.graph.inputs.remove(t)
                model.overridable.discard(t.name)
                freed += int(np.prod(t.shape)) * np.dtype(t.dtype).itemsize
            removed += len(drop)
        if removed:
            logger.info("remove-unused-initializers: removed %d initializers (%d bytes)", removed, freed)
        return PassResult(modified=removed > 0, stats={"initializers_removed": removed, "bytes_freed": freed})
