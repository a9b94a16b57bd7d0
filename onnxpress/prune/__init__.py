"""Pruning and distillation: unstructured weight pruning (pass ``prune-weights``),
dependency groups of channels (:mod:`.depgraph`) and structured channel pruning
(pass ``prune-channels``), teacher-student refit (pass ``distill``), low-rank
factorization (pass ``factorize-lowrank``).

Importing this package registers its passes."""
from __future__ import annotations

from .channels import PrunedLayer, PruneChannels, channel_importance
from .depgraph import Ann, DepGraph, Group, Sink, Source, build_depgraph
from .distill import Distill
from .lowrank import FactorizeLowRank
from .weights import PruneWeights

__all__ = [
    "Ann",
    "DepGraph",
    "Distill",
    "FactorizeLowRank",
    "Group",
    "PruneChannels",
    "PruneWeights",
    "PrunedLayer",
    "Sink",
    "Source",
    "build_depgraph",
    "channel_importance",
]
