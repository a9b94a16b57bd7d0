"""Inline an ``If`` whose condition is a constant.

Exporters emit ``If`` nodes on values that are fixed for the exported model
(Silero VAD branches on ``Shape(state)[0]``, which is always 2). Once
fold-constants has made the condition a constant, the branch that is taken
replaces the ``If``: its nodes move into the enclosing graph, its outputs become
the ``If``'s outputs, and the other branch disappears. Names local to the branch
that are used anywhere else in the model are renamed, so scopes never collide.
The condition must be a constant with exactly one element (the ONNX spec).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import onnx_graphsurgeon as gs

from ..graph import Model, constant_array, iter_graphs
from ._rewrite import ONNX_DOMAINS, all_graph_outputs, detach_graph, remove_nodes, replace_uses
from .base import Context, Pass, PassResult, register

__all__ = ["InlineConstantIf"]

logger = logging.getLogger(__name__)



@register
@dataclass
class InlineConstantIf(Pass):
    """Replace ``If`` nodes with a constant condition by the branch they take."""

    name = "inline-constant-if"
    summary = "replace an If with a constant condition by the branch it takes"

    def run(self, model: Model, ctx: Context) -> PassResult:
        inlined = dropped = 0
        # Graphs are visited parents first and found from the current nodes, so an
        # If moved up by inlining its parent is visited in its new graph (and the
        # untaken branches, now gone, are not visited at all).
        stack = [model.graph, *reversed(list(getattr(model.graph, "functions", None) or []))]
        while stack:
            g = stack.pop()
            i = 0
            while i < len(g.nodes):
                node = g.nodes[i]
                if node.op != "If" or node.domain not in ONNX_DOMAINS or not model.is_constant(node.inputs[0]):
                    i += 1
                    continue
                cond = constant_array(node.inputs[0])
                if cond.size != 1:
                    i += 1
                    continue
                taken = node.attrs["then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"]
                other = node.attrs["else_branch" if bool(cond.reshape(-1)[0]) else "then_branch"]
                dropped += sum(len(sg.nodes) for sg in iter_graphs(other, functions=False))
                detach_graph(other)  # its nodes must not stay readers of outer values
                self._inline(model, g, node, taken)
                inlined += 1  # the taken branch's nodes now start at position i: visit them next
            stack.extend(
                reversed([v for n in g.nodes for v in n.attrs.values() if isinstance(v, gs.Graph)])
            )
        if inlined:
            logger.info("inline-constant-if: inlined %d If nodes (%d nodes of untaken branches dropped)", inlined, dropped)
        return PassResult(modified=inlined > 0, stats={"ifs_inlined": inlined, "branch_nodes_dropped": dropped})

    def _inline(self, model: Model, graph: gs.Graph, node: gs.Node, branch: gs.Graph) -> None:
        names = self.names(model)
        local = {id(t) for sg in iter_graphs(branch, functions=False) for n in sg.nodes for t in n.outputs}
        # Names of the branch's own values that also appear outside it.
        outside: set[str] = set()
        branch_graphs = {id(sg) for sg in iter_graphs(branch, functions=False)}
        for g in iter_graphs(model.graph):
            if id(g) in branch_graphs:
                continue
            for n in g.nodes:
                outside.update(t.name for t in n.outputs)
                outside.update(t.name for t in n.inputs)
            outside.update(t.name for t in g.inputs)
        for sg in iter_graphs(branch, functions=False):
            for n in sg.nodes:
                for t in n.outputs:
                    if t.name in outside and id(t) in local:
                        t.name = names.new(t.name)
                if n.name in outside:
                    n.name = names.new(n.name)
        graph_outputs = all_graph_outputs(model)
        position = next(i for i, n in enumerate(graph.nodes) if n is node)
        moved = list(branch.nodes)
        branch_outputs = list(branch.outputs)
        if_outputs = list(node.outputs)
        remove_nodes(graph, [node])  # disconnects the If from its condition and outputs
        graph.nodes[position:position] = moved
        branch.nodes = []
        extra: list[gs.Node] = []
        carried: dict[int, gs.Tensor] = {}  # branch output -> the tensor now holding it
        for b_out, i_out in zip(branch_outputs, if_outputs):
            src = carried.get(id(b_out), b_out)
            producer = src.inputs[0] if src.inputs else None
            if src is b_out and producer is not None and id(b_out) in local:
                # The producer now writes the If's output; other readers follow.
                replace_uses(b_out, i_out)
                idx = next(k for k, t in enumerate(producer.outputs) if t is b_out)
                producer.outputs[idx] = i_out
                carried[id(b_out)] = i_out
            elif id(i_out) in graph_outputs:
                extra.append(gs.Node("Identity", names.new(f"{i_out.name}_inline"), inputs=[src], outputs=[i_out]))
            else:
                replace_uses(i_out, src)
        if extra:
            at = position + len(moved)
            graph.nodes[at:at] = extra
        branch.outputs = []
