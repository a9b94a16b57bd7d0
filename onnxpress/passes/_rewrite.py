"""Small graph edits shared by passes (rewiring consumers, bypassing a node).

All helpers work across subgraphs: onnx-graphsurgeon shares one tensor object
between the outer graph and the subgraphs that capture it, and a tensor's
``outputs`` list holds its consumers in every graph.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..graph import Model, constant_array, iter_graphs

__all__ = [
    "NON_DETERMINISTIC_OPS",
    "ONNX_DOMAINS",
    "all_graph_outputs",
    "bypass_node",
    "constant_value",
    "consumers",
    "detach_graph",
    "detach_subgraphs",
    "graph_output_names",
    "optional_input",
    "producer",
    "remove_nodes",
    "replace_uses",
]

ONNX_DOMAINS = (None, "", "ai.onnx")

# Ops whose outputs differ from run to run: never folded, merged or assumed equal.
NON_DETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial"}
)


def optional_input(node: gs.Node, i: int) -> gs.Tensor | None:
    """Input ``i`` of ``node``, or None when absent or omitted (empty name)."""
    if i < len(node.inputs) and node.inputs[i].name:
        return node.inputs[i]
    return None


def constant_value(model: Model, t: gs.Tensor | None) -> np.ndarray | None:
    """The value of an initializer or of a default-domain ``Constant`` node's output
    (``value``, ``value_float(s)``, ``value_int(s)``), else None."""
    if t is None:
        return None
    if model.is_constant(t):
        return constant_array(t)
    node = t.inputs[0] if len(t.inputs) == 1 else None
    if node is None or node.op != "Constant" or node.domain not in ONNX_DOMAINS or node.outputs[0] is not t:
        return None
    value = node.attrs.get("value")
    if isinstance(value, gs.Constant):
        return constant_array(value)
    for key, cast, dtype in (
        ("value_float", float, np.float32), ("value_floats", float, np.float32),
        ("value_int", int, np.int64), ("value_ints", int, np.int64),
    ):
        v = node.attrs.get(key)
        if v is None or isinstance(v, gs.Node.AttributeRef):
            continue
        return np.array([cast(x) for x in v] if key.endswith("s") else cast(v), dtype=dtype)
    return None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Nodes that read ``tensor``, in any graph."""
    return list(tensor.outputs)


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node that writes ``tensor``, or None for inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def graph_output_names(graph: gs.Graph) -> set[str]:
    return {t.name for t in graph.outputs}


def all_graph_outputs(model: Model) -> set[int]:
    """ids of tensors that are an output of the main graph, a subgraph or a function."""
    return {id(t) for g in iter_graphs(model.graph) for t in g.outputs}


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> int:
    """Make every consumer of ``old`` read ``new`` instead (graph outputs untouched).

    Returns:
        How many node inputs were rewired.
    """
    count = 0
    for node in list(old.outputs):
        for i, t in enumerate(node.inputs):
            if t is old:
                node.inputs[i] = new
                count += 1
    return count


def bypass_node(
    model: Model,
    graph: gs.Graph,
    node: gs.Node,
    input_index: int = 0,
    outputs: set[int] | None = None,
) -> bool:
    """Remove a node whose output 0 equals its input ``input_index``.

    Consumers of the output read the input instead. When the output is a graph
    output (of any graph), the node is kept unless the input is produced by a node
    of the same graph that can write the output name instead (and the input is
    not itself a graph output).

    Args:
        outputs: ``all_graph_outputs(model)``, when the caller has it (it stays
            valid across bypasses: graph output tensors are never replaced). Passing
            it keeps a pass that bypasses many nodes linear.

    Returns:
        True when the node was removed.
    """
    src = node.inputs[input_index]
    out = node.outputs[0]
    if outputs is None:
        outputs = all_graph_outputs(model)
    if id(out) in outputs:
        prod = producer(src)
        if (
            prod is None
            or not any(n is prod for n in graph.nodes)
            or id(src) in outputs
            or src.name in model.overridable
        ):
            return False
        # The producer writes ``out`` directly; ``src``'s other readers follow.
        for i, t in enumerate(prod.outputs):
            if t is src:
                idx = i
                break
        else:
            return False
        node.inputs.clear()
        node.outputs.clear()
        _remove_node(graph, node)
        replace_uses(src, out)
        prod.outputs[idx] = out
        src.inputs.clear()
        return True
    replace_uses(out, src)
    node.inputs.clear()
    node.outputs.clear()
    _remove_node(graph, node)
    return True


def _remove_node(graph: gs.Graph, node: gs.Node) -> None:
    # By identity: ``list.remove`` would call gs ``Node.__eq__`` (which compares
    # names, attrs, inputs and outputs) on every node before it, making a pass that
    # removes many nodes quadratic with a large constant.
    for i, n in enumerate(graph.nodes):
        if n is node:
            del graph.nodes[i]
            return


def remove_nodes(graph: gs.Graph, nodes: list[gs.Node]) -> None:
    """Remove nodes from ``graph`` and disconnect them."""
    drop = {id(n) for n in nodes}
    for n in nodes:
        n.inputs.clear()
        n.outputs.clear()
    graph.nodes = [n for n in graph.nodes if id(n) not in drop]


def detach_graph(graph: gs.Graph) -> None:
    """Disconnect every node of ``graph`` and of its subgraphs (any depth) from the
    tensors it reads and writes.

    For a subgraph that is going away (an untaken If branch, the body of a removed
    node): its nodes would otherwise stay in ``tensor.outputs`` of the outer values
    they capture, as phantom readers that make later rewrites refuse ("has other
    readers") until the model is exported and reloaded.
    """
    stack = [graph]
    while stack:
        g = stack.pop()
        for n in g.nodes:
            stack.extend(_node_subgraphs(n))
            n.inputs.clear()
            n.outputs.clear()


def detach_subgraphs(node: gs.Node) -> None:
    """:func:`detach_graph` on every subgraph of ``node`` (a node being removed)."""
    for g in _node_subgraphs(node):
        detach_graph(g)


def _node_subgraphs(node: gs.Node) -> list[gs.Graph]:
    out: list[gs.Graph] = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out.extend(v for v in value if isinstance(v, gs.Graph))
    return out
