"""Structured channel pruning (pass ``prune-channels``): remove whole output
channels of Conv, ConvTranspose, Gemm and MatMul (whole neurons of MLPs), and
everything that depends on them, so the graph really shrinks.

The dependency groups come from :mod:`onnxpress.prune.depgraph` (DepGraph,
Fang et al. 2023, on ONNX). In each group the channel classes are ranked by
importance and the least important ``ratio`` of them are removed:

* ``importance="l1"`` / ``"l2"``: the L1 / L2 norm of each channel's filter
  (weight slice of its producing layer), normalized by the layer's mean norm and
  summed over the layers of the group (Li et al. 2017, "Pruning Filters for
  Efficient ConvNets");
* ``importance="activation"``: from calibration data (``ctx.calibration``); the
  per-channel L2 norm of every input of the group's consuming layers, captured
  with :func:`onnxpress.calibration.capture` and
  :class:`~onnxpress.calibration.PerChannel`, times the norm of the weights that
  read the channel (the channel's contribution to the next layer's output),
  normalized per consumer and summed; classes that reach no consumer fall back
  to the filter norm.

``ratio`` applies to every group; ``layer_ratios`` (by the producing node's name)
overrides it for the groups holding that layer (the smallest ratio of the group
wins). The kept count is rounded up to a multiple of ``round_to`` and is never 0:
a layer with one channel keeps it, and so does every tensor.

Stats (numbers only): ``groups``, ``groups_pruned``, ``groups_skipped``,
``groups_partially_pinned``, ``channels_removed``, ``macs_before``,
``macs_after``, ``params_before``, ``params_after``, ``pruned_layers``,
``removed.<group>`` (channels removed per group) and ``skipped.<reason>``
(groups left whole, per reason). The pass's ``report`` attribute (and
``ctx.options["prune_report"]``) lists ``(group, reason)`` for every group kept
whole or partly pinned, and for every not-understood dependency that touched no
group (group ``"-"``).

For distillation, ``ctx.options["pruned_layers"]`` receives a list of
:class:`PrunedLayer` ``(node, kept_inputs, weight)``: every layer whose *input*
channels were removed (the consumer to refit), the indices (int64, into the
original input channels) it still reads, and the name of its weight before
pruning. ``ctx.options["pruned_channels"]`` maps every layer whose *output*
channels were removed to the kept output channel indices (so a teacher's output
of that layer can be sliced to the student's). Tensor names are unchanged by
pruning: a teacher activation and its student counterpart share a name.

The pass runs once per model and context: a second run in the same pipeline
(the pass manager's fixed point) changes nothing.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..errors import InputError
from ..graph import Model, NameGenerator, infer_shapes, model_stats
from ..passes.base import Context, Pass, PassResult, register
from .depgraph import DepGraph, Group, build_depgraph

__all__ = ["PruneChannels", "PrunedLayer", "channel_importance"]

logger = logging.getLogger(__name__)

_IMPORTANCE = ("l1", "l2", "activation")


class PrunedLayer(NamedTuple):
    """A layer whose input channels were removed (for distillation).

    Attributes:
        node: the node's name in the pruned model.
        kept_inputs: int64 indices of the input channels it still reads, into
            the original input channels (for a grouped Conv, into the full
            input; ``Flatten -> Gemm``: into the flattened features).
        weight: the name of the node's weight tensor before pruning.
    """

    node: str
    kept_inputs: np.ndarray
    weight: str


def _key(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.:/-]+", "_", text)[:80]


def channel_importance(
    dg: DepGraph,
    method: str = "l1",
    model: Model | None = None,
    calibration: Any = None,
    limit: int = 32,
) -> dict[int, float]:
    """Importance of every channel class of ``dg`` (union-find root -> score).

    Args:
        dg: the dependency graph.
        method: ``"l1"``, ``"l2"`` or ``"activation"``.
        model: the model ``dg`` was built from (for ``"activation"``).
        calibration: an iterable of feed dicts (for ``"activation"``).
        limit: at most this many calibration samples.

    Raises:
        InputError: unknown method, or ``"activation"`` without calibration data.
    """
    if method not in _IMPORTANCE:
        raise InputError(f"prune-channels: importance must be one of {_IMPORTANCE}, got {method!r}")
    p = 1 if method == "l1" else 2
    score: dict[int, float] = {}
    for src in dg.sources:
        norms = src.filter_norms(p)
        mean = float(norms.mean()) if norms.size else 0.0
        norms = norms / mean if mean > 0 else norms
        for r, v in zip(dg.roots(src.ids).tolist(), norms.tolist()):
            score[r] = score.get(r, 0.0) + v
    if method != "activation":
        return score
    if calibration is None:
        raise InputError("prune-channels: importance='activation' needs calibration data (--calib)")
    from ..calibration import PerChannel, capture

    sinks = [s for s in dg.sinks if s.input in dg.ann]
    tensors = list(dict.fromkeys(s.input for s in sinks))
    if not tensors:
        return score
    proto = model.to_proto(external=True)
    data = _limited(calibration, limit)
    captured = capture(
        proto, tensors, data, lambda t: [PerChannel(axis=dg.ann[t].axis)], progress=False, desc="prune-channels"
    )
    act: dict[int, float] = {}
    for sink in sinks:
        stat = captured[sink.input][0]
        if stat.sumsq is None:
            continue
        contrib = np.sqrt(stat.sumsq / max(stat.count, 1)) * sink.column_norms()
        mean = float(contrib.mean())
        if mean > 0:
            contrib = contrib / mean
        for r, v in zip(dg.roots(dg.ann[sink.input].ids).tolist(), contrib.tolist()):
            act[r] = act.get(r, 0.0) + v
    for r in score:
        if r in act:
            score[r] = act[r]
    return score


class _limited:
    """The first ``n`` samples of a re-iterable calibration source."""

    def __init__(self, data, n: int) -> None:
        self.data, self.n = data, n

    def __iter__(self):
        for i, feed in enumerate(self.data):
            if self.n and i >= self.n:
                return
            yield feed


@register
@dataclass
class PruneChannels(Pass):
    """Remove the least important output channels of every dependency group
    (see the module docstring).

    Options:
        ratio: fraction of the channels of each group to remove, in [0, 1).
        layer_ratios: ratio per producing node name (overrides ``ratio`` for
            its group; the smallest ratio in a group wins).
        importance: ``"l1"``, ``"l2"`` (filter norms) or ``"activation"``
            (needs calibration data).
        round_to: the kept channel count of a group is a multiple of this
            (e.g. 4, 8, 16), rounded up.
        calibration_limit: calibration samples used by ``"activation"``.
    """

    name = "prune-channels"
    lossless = False
    summary = "structured pruning: remove whole channels/neurons of Conv, Gemm, MatMul over dependency groups"

    ratio: float = 0.3
    layer_ratios: dict[str, float] = field(default_factory=dict)
    importance: str = "l1"
    round_to: int = 1
    calibration_limit: int = 32

    def __post_init__(self) -> None:
        self.report: list[tuple[str, str]] = []

    def _check_options(self) -> None:
        ratios = [self.ratio, *self.layer_ratios.values()]
        if any(not (0.0 <= float(r) < 1.0) for r in ratios):
            raise InputError(f"prune-channels: ratios must be in [0, 1), got {ratios}")
        if int(self.round_to) < 1:
            raise InputError(f"prune-channels: round_to must be >= 1, got {self.round_to}")
        if self.importance not in _IMPORTANCE:
            raise InputError(f"prune-channels: importance must be one of {_IMPORTANCE}, got {self.importance!r}")

    def _group_ratio(self, group: Group) -> float:
        given = [float(self.layer_ratios[s.node.name]) for s in group.sources if s.node.name in self.layer_ratios]
        return min(given) if given else float(self.ratio)

    def run(self, model: Model, ctx: Context) -> PassResult:
        self._check_options()
        done = ctx.options.setdefault("_prune_channels_done", set())
        if id(model) in done:
            return PassResult(False, {})
        done.add(id(model))
        self.report = []
        shapes = infer_shapes(model)
        before = model_stats(model, shapes)
        dg = build_depgraph(model, shapes)
        score = channel_importance(dg, self.importance, model, ctx.calibration, self.calibration_limit)
        removed = self._select(dg, score)
        removed = dg.restore_empty(removed, score)
        stats: dict[str, int | float] = {}
        skipped: dict[str, int] = {}
        pruned_groups = partial = 0
        total_removed = 0
        for group in dg.groups:
            n_removed = sum(1 for r in group.classes.tolist() if r in removed)
            if n_removed:
                pruned_groups += 1
                total_removed += n_removed
                stats[f"removed.{_key(group.name)}"] = n_removed
            if group.pinned:
                why = group.reasons[0]
                if len(group.pinned) == len(group.classes):
                    self.report.append((group.name, why))
                    skipped[why] = skipped.get(why, 0) + 1
                else:
                    partial += 1
                    self.report.append((group.name, f"{len(group.pinned)} of {len(group.classes)} channels kept: {why}"))
            elif not n_removed:
                why = "too few channels for the ratio" if len(group.classes) > 1 else "a single channel"
                self.report.append((group.name, why))
                skipped[why] = skipped.get(why, 0) + 1
        for why in dg.unattached:
            self.report.append(("-", why))
        if removed:
            names = NameGenerator(model)
            for node in [s.node for s in dg.sources] + [s.node for s in dg.sinks]:
                if not node.name:  # distillation finds layers by name
                    node.name = names.new(f"{node.op}_pruned")
        masks = dg.apply(removed) if removed else {}
        pruned_layers = self._record(dg, masks, model) if removed else []
        ctx.options["pruned_layers"] = list(ctx.options.get("pruned_layers", [])) + pruned_layers
        channels = dict(ctx.options.get("pruned_channels", {}))
        for src in dg.sources:
            m = masks.get(src.output)
            if m is not None and not m.all():
                channels[src.node.name] = np.flatnonzero(m).astype(np.int64)
        ctx.options["pruned_channels"] = channels
        ctx.options["prune_report"] = list(self.report)
        after = model_stats(model) if removed else before
        stats.update(
            groups=len(dg.groups),
            groups_pruned=pruned_groups,
            groups_skipped=sum(skipped.values()),
            groups_partially_pinned=partial,
            channels_removed=total_removed,
            macs_before=before.macs,
            macs_after=after.macs,
            params_before=before.params,
            params_after=after.params,
            pruned_layers=len(pruned_layers),
        )
        for why, n in sorted(skipped.items()):
            k = f"skipped.{_key(why)}"
            stats[k] = stats.get(k, 0) + n
        logger.info(
            "prune-channels: %d of %d groups pruned, %d channels removed, MACs %d -> %d, params %d -> %d",
            pruned_groups, len(dg.groups), total_removed, before.macs, after.macs, before.params, after.params,
        )  # fmt: skip
        for name, why in self.report:
            logger.debug("prune-channels: kept %s: %s", name, why)
        return PassResult(modified=bool(removed), stats=stats)

    # ------------------------------------------------------------ policy
    def _select(self, dg: DepGraph, score: dict[int, float]) -> set[int]:
        removed: set[int] = set()
        step = int(self.round_to)
        for group in dg.groups:
            n = len(group.classes)
            ratio = self._group_ratio(group)
            keep = n - int(math.floor(ratio * n + 1e-9))
            if step > 1:
                keep = int(math.ceil(keep / step) * step)
            keep = max(keep, 1)
            if keep >= n:
                continue
            prunable = group.prunable.tolist()
            order = sorted(prunable, key=lambda r: (score.get(r, 0.0), r))
            removed.update(order[: min(n - keep, len(prunable))])
        return removed

    def _record(self, dg: DepGraph, masks: dict[str, np.ndarray], model: Model) -> list[PrunedLayer]:
        out = []
        for sink in dg.sinks:
            m = masks.get(sink.input)
            if m is None or m.all():
                continue
            out.append(PrunedLayer(sink.node.name, np.flatnonzero(m).astype(np.int64), sink.weight.name))
        return out
