"""Unique name generation for tensors and nodes.

Names are checked against every tensor and node name of the model, its subgraphs
and its local functions, so a new name never collides, including when onnxpress
runs again over a model it wrote itself (the counter skips names already taken).
"""
from __future__ import annotations

import re

from .model import Model, iter_graphs

__all__ = ["NameGenerator"]

_SAFE = re.compile(r"[^0-9A-Za-z_.:/-]+")


class NameGenerator:
    """Hands out names that no tensor or node of ``model`` has.

    Args:
        model: the model; its names are read once, and every name handed out is
            remembered, so keep one generator per pass run.
    """

    def __init__(self, model: Model) -> None:
        taken: set[str] = set()
        for g in iter_graphs(model.graph):
            taken.update(t.name for t in g.inputs)
            taken.update(t.name for t in g.outputs)
            for node in g.nodes:
                taken.add(node.name)
                taken.update(t.name for t in node.inputs)
                taken.update(t.name for t in node.outputs)
        taken.update(t.name for t in model.orphan_initializers)
        taken.discard("")
        self._taken = taken

    def __contains__(self, name: str) -> bool:
        return name in self._taken

    def new(self, base: str) -> str:
        """Return ``base`` if free, else ``base__1``, ``base__2``, ... (the first free)."""
        base = _SAFE.sub("_", base) or "t"
        name, k = base, 0
        while name in self._taken:
            k += 1
            name = f"{base}__{k}"
        self._taken.add(name)
        return name
