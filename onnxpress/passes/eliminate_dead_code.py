"""Dead-code elimination.

Removes nodes none of whose outputs reach a graph output, in the main graph, in
every If/Loop/Scan subgraph and in local functions. A node stays when any output
is an output of its graph, or is read by a node that stays, including nodes of a
subgraph that capture it from the outer scope. Graph inputs are never removed.
Follows the shape of onnx/ir-py's ``RemoveUnusedNodesPass`` (count, derive
``modified`` from the count, one INFO line).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from ..graph import Model
from ._rewrite import detach_subgraphs, remove_nodes
from .base import Context, Pass, PassResult, register

__all__ = ["EliminateDeadCode"]

logger = logging.getLogger(__name__)


def _subgraphs(node: gs.Node):
    for v in node.attrs.values():
        if isinstance(v, gs.Graph):
            yield v
        elif isinstance(v, (list, tuple)):
            yield from (x for x in v if isinstance(x, gs.Graph))


def _sweep(graph: gs.Graph) -> tuple[int, set[int]]:
    """Remove dead nodes of ``graph`` and (recursively) of its live subgraphs.

    Returns:
        (nodes removed, ids of tensors read by the graph's surviving nodes,
        including reads from enclosing scopes by its subgraphs)
    """
    live: set[int] = {id(t) for t in graph.outputs}
    reads: set[int] = set(live)
    removed = 0
    keep: list[gs.Node] = []
    dead: list[gs.Node] = []
    for node in reversed(graph.nodes):
        if not any(id(o) in live for o in node.outputs):
            dead.append(node)
            continue
        keep.append(node)
        for t in node.inputs:
            live.add(id(t))
            reads.add(id(t))
        for sg in _subgraphs(node):
            n, sub_reads = _sweep(sg)
            removed += n
            live |= sub_reads
            reads |= sub_reads
    if dead:
        for node in dead:
            detach_subgraphs(node)  # their bodies must not stay readers of outer values
        remove_nodes(graph, dead)
        removed += len(dead)
    return removed, reads


@register
@dataclass
class EliminateDeadCode(Pass):
    """Remove nodes whose outputs are never used."""

    name = "eliminate-dead-code"
    summary = "remove nodes whose outputs reach no graph output (subgraph-aware)"

    def run(self, model: Model, ctx: Context) -> PassResult:
        removed, _ = _sweep(model.graph)
        for fn in getattr(model.graph, "functions", []) or []:
            n, _ = _sweep(fn)
            removed += n
        if removed:
            logger.info("eliminate-dead-code: removed %d nodes", removed)
        return PassResult(modified=removed > 0, stats={"nodes_removed": removed})
