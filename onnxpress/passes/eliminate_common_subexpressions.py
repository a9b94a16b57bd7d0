"""Common-subexpression elimination: merge nodes that compute the same thing.

Two nodes of the same graph are merged when they have the same op type, domain,
number of outputs (and the same omitted optional outputs), equal attributes and
the *same* input tensors (by identity; equal-valued but distinct initializers are
first merged by ``merge-initializers``). Attributes compare by value: ints,
strings, exact float bits (``0.0`` and ``-0.0`` differ, ``NaN`` never equals),
lists, and tensor attributes by dtype, shape and the sha256 of their bytes.

Never merged:

* non-deterministic ops (``RandomNormal``, ``RandomUniform``, their ``*Like``
  forms, ``Bernoulli``, ``Multinomial``): two draws are not one draw;
* nodes with a subgraph attribute (``If``/``Loop``/``Scan``), for simplicity;
* ops of domains other than ONNX and ``ai.onnx.ml`` (custom ops may be stateful),
  which also excludes calls of local functions;
* a pair whose corresponding outputs are both graph outputs (of any graph): both
  names must stay. When only the later node's output is a graph output, the
  earlier node writes that tensor instead, so the graph output keeps its name.

Nodes are visited in graph order (topological for a valid ONNX graph; the graph
is sorted first if it is not), and consumers of a merged node are rewired at
once, so a chain of duplicates collapses in one run. The pass recurses into
subgraphs and local functions; nodes are merged only within one graph.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any, Hashable

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Model, constant_array, iter_graphs
from ._rewrite import NON_DETERMINISTIC_OPS, ONNX_DOMAINS, all_graph_outputs, replace_uses
from .base import Context, Pass, PassResult, register

__all__ = ["EliminateCommonSubexpressions", "NON_DETERMINISTIC_OPS"]

logger = logging.getLogger(__name__)


_DOMAINS = (*ONNX_DOMAINS, "ai.onnx.ml")


class _Skip(Exception):
    """The node has an attribute that is not compared (a subgraph, an unknown type)."""


def _canonical(value: Any) -> Hashable:
    """A hashable key equal for equal attribute values (raises _Skip)."""
    if isinstance(value, gs.Graph):
        raise _Skip("subgraph")
    if isinstance(value, bool):
        return ("i", int(value))
    if isinstance(value, (int, np.integer)):
        return ("i", int(value))
    if isinstance(value, (float, np.floating)):
        return ("f", float(value).hex())
    if isinstance(value, str):
        return ("s", value)
    if isinstance(value, bytes):
        return ("b", value)
    if isinstance(value, (list, tuple)):
        return ("l", tuple(_canonical(v) for v in value))
    if isinstance(value, gs.Node.AttributeRef):
        return ("ref", value.name, str(value.type))
    if isinstance(value, (gs.Constant, np.ndarray)):
        arr = constant_array(value) if isinstance(value, gs.Constant) else value
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
        return ("t", str(arr.dtype), tuple(arr.shape), digest)
    raise _Skip(type(value).__name__)


def _key(node: gs.Node) -> Hashable | None:
    """What must match for two nodes to be merged, or None when ``node`` is never merged."""
    if node.domain not in _DOMAINS or node.op in NON_DETERMINISTIC_OPS or not node.outputs:
        return None
    try:
        attrs = tuple(sorted((k, _canonical(v)) for k, v in node.attrs.items()))
    except _Skip:
        return None
    inputs = tuple(id(t) if t.name else None for t in node.inputs)
    outputs = tuple(bool(t.name) for t in node.outputs)
    return (node.op, node.domain or "", attrs, inputs, outputs)


def _is_sorted(graph: gs.Graph) -> bool:
    local = {id(t) for n in graph.nodes for t in n.outputs}
    seen: set[int] = set()
    for node in graph.nodes:
        if any(id(t) in local and id(t) not in seen for t in node.inputs):
            return False
        seen.update(id(t) for t in node.outputs)
    return True


@register
@dataclass
class EliminateCommonSubexpressions(Pass):
    """Merge nodes with the same op, attributes and input tensors (see the module
    docstring for what is never merged)."""

    name = "eliminate-common-subexpressions"
    summary = "merge nodes with identical op, attributes and inputs (never Random*/Bernoulli/Multinomial)"

    def run(self, model: Model, ctx: Context) -> PassResult:
        outputs = all_graph_outputs(model)
        merged = 0
        for g in iter_graphs(model.graph):
            merged += self._graph(g, outputs)
        if merged:
            logger.info("eliminate-common-subexpressions: merged %d nodes", merged)
        return PassResult(modified=merged > 0, stats={"nodes_merged": merged})

    def _graph(self, g: gs.Graph, outputs: set[int]) -> int:
        if not _is_sorted(g):
            g.toposort(recurse_subgraphs=False, recurse_functions=False)
        seen: dict[Hashable, gs.Node] = {}
        key_of: dict[int, Hashable] = {}  # id(node) -> its key in ``seen``
        dead: list[gs.Node] = []
        for node in list(g.nodes):
            key = _key(node)
            if key is None:
                continue
            keep = seen.get(key)
            if keep is None:
                seen[key] = node
                key_of[id(node)] = key
                continue
            pairs = list(zip(keep.outputs, node.outputs))
            if any(id(a) in outputs and id(b) in outputs for a, b in pairs if a.name):
                continue  # both names must stay
            node.inputs.clear()
            node.outputs.clear()  # ``b`` loses its producer; rewired below
            for k, (a, b) in enumerate(pairs):
                if not a.name:
                    continue
                if id(b) in outputs:
                    # ``b`` is a graph output: ``keep`` writes it, ``a``'s readers follow.
                    replace_uses(a, b)
                    keep.outputs[k] = b
                    # Readers of ``a`` already visited now read ``b``: re-key them, so
                    # a later duplicate of one of them (reading ``b``) still matches.
                    for reader in b.outputs:
                        old = key_of.get(id(reader))
                        if old is not None and seen.get(old) is reader:
                            del seen[old]
                            new = _key(reader)
                            key_of[id(reader)] = new
                            seen.setdefault(new, reader)
                else:
                    replace_uses(b, a)
            dead.append(node)
            logger.debug("eliminate-common-subexpressions: %s (%s) -> %s", node.name, node.op, keep.name)
        if dead:
            drop = {id(n) for n in dead}
            g.nodes = [n for n in g.nodes if id(n) not in drop]
        return len(dead)
