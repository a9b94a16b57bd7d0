"""Merging of duplicate initializers.

Constants with the same dtype, shape and bytes are merged into one: every reader
of a duplicate reads the first instead. Candidates are grouped by (dtype, shape)
first and hashed only within groups of two or more, so unique weights are never
hashed. Overridable initializers (graph inputs) are never merged. Duplicates are
found across the main graph and all subgraphs (e.g. the same folded weight in
both branches of an If); a constant read by several graphs is written once, in
the main graph, where every subgraph sees it (see ``Model.export``).
"""
from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Model, constant_array, iter_graphs
from ._rewrite import replace_uses
from .base import Context, Pass, PassResult, register

__all__ = ["MergeInitializers"]

logger = logging.getLogger(__name__)


@register
@dataclass
class MergeInitializers(Pass):
    """Make readers of byte-identical constants share one initializer."""

    name = "merge-initializers"
    summary = "share one initializer among byte-identical ones (same dtype, shape, bytes)"

    def run(self, model: Model, ctx: Context) -> PassResult:
        merged = 0
        freed = 0
        groups: dict[tuple, list[gs.Constant]] = defaultdict(list)
        seen: set[int] = set()
        for g in iter_graphs(model.graph, functions=False):
            for node in g.nodes:
                for t in node.inputs:
                    if isinstance(t, gs.Constant) and id(t) not in seen and model.is_constant(t):
                        seen.add(id(t))
                        groups[(str(t.dtype), tuple(t.shape))].append(t)
        for consts in groups.values():
            if len(consts) < 2:
                continue
            by_hash: dict[bytes, gs.Constant] = {}
            for t in consts:
                arr = np.ascontiguousarray(constant_array(t))
                key = hashlib.blake2b(arr.tobytes(), digest_size=16).digest()
                first = by_hash.get(key)
                if first is None:
                    by_hash[key] = t
                    continue
                if not np.array_equal(constant_array(first), arr, equal_nan=arr.dtype.kind in "fc"):
                    continue
                # Readers in every graph switch to ``first``.
                replace_uses(t, first)
                merged += 1
                freed += arr.nbytes
        if merged:
            logger.info("merge-initializers: merged %d duplicates (%d bytes)", merged, freed)
        return PassResult(modified=merged > 0, stats={"initializers_merged": merged, "bytes_freed": freed})
