"""Unstructured weight pruning: pass ``prune-weights``.

Zeroes the least important weights of Conv, Gemm and MatMul layers (see
:mod:`onnxpress.prune._layers` for what counts as a layer). Importance:

* ``magnitude``: ``|W_ij|``;
* ``wanda`` (Sun et al., "A Simple and Effective Pruning Approach for Large
  Language Models", 2023): ``|W_ij| * ||x_j||_2``, where ``||x_j||`` is the L2
  norm of input channel ``j`` of the layer's activation over the calibration
  data (streamed with :class:`~onnxpress.calibration.PerChannel`; a Conv weight
  of channel ``j`` at any kernel position gets that channel's norm).

Which weights compete (``group``):

* ``row``: each output channel loses the same fraction (Wanda's comparison
  group, the default for ``wanda``);
* ``layer``: one threshold per layer (the default for ``magnitude``);
* with ``scope="global"`` one threshold over every pruned layer (magnitude
  scores as they are, Wanda scores divided by their layer mean so that layers
  of different activation scale compare).

``n_m="2:4"`` keeps the ``N`` most important of every ``M`` consecutive weights
along the input dimension (input channels for Conv, at each kernel position and
output channel; ``K`` for Gemm/MatMul), the pattern sparse tensor cores run; a
layer whose input dimension is not a multiple of ``M`` is left dense (reported).

The zeros are stored densely: the file does not shrink, but it compresses
(``onnxpress inspect`` prints the gzip size). Ties are broken by ``|W|`` then
position, and weights already zero rank first, so a second run at the same
sparsity changes nothing (``modified=False``). A weight read by several
layers is copied for the layer pruned. The pass records the pruned layers in
``ctx.options["sparse_layers"]`` for ``distill`` (which keeps the zeros).

Stats: ``layers_pruned``, ``weights`` (of the pruned layers), ``zeros``,
``weights_zeroed`` (new zeros), ``sparsity``, and ``sparsity:<node>`` per layer;
``excluded:<node>`` (1) for layers left out on request or refused.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import InputError
from ..graph import Model
from ..passes.base import Context, Pass, PassResult, register
from ._layers import Layer, find_layers, limited

__all__ = ["PruneWeights", "importance", "nm_mask", "topk_mask"]

logger = logging.getLogger(__name__)


def parse_nm(text: str) -> tuple[int, int] | None:
    """``"2:4"`` -> ``(2, 4)``; ``""`` -> None.

    Raises:
        InputError: not ``N:M`` with ``0 < N < M``.
    """
    if not text:
        return None
    try:
        n, m = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise InputError(f"prune-weights: n_m {text!r} is not 'N:M' (e.g. '2:4')") from None
    if not 0 < n < m:
        raise InputError(f"prune-weights: n_m {text!r} needs 0 < N < M")
    return n, m


def importance(layer: Layer, norms: np.ndarray | None) -> np.ndarray:
    """Scores ``[groups, Mg, D]`` of ``layer``'s weights: ``|W|`` or ``|W| * ||x_j||``."""
    score = np.abs(layer.rows())
    if norms is not None:
        score = score * norms[layer.feature_channels()][:, None, :]
    return score


def topk_mask(score: np.ndarray, weight: np.ndarray, k: np.ndarray | int, axis_groups: int) -> np.ndarray:
    """Boolean "prune" mask of the ``k`` lowest scores in each of the leading
    ``axis_groups``-flattened groups (ties: lower ``|W|`` first, then position).

    Args:
        score, weight: same shape; the last ``score.ndim - axis_groups`` axes
            form one comparison group.
        k: how many to prune per group (int or one per group).
    """
    lead = score.shape[:axis_groups]
    s = score.reshape(int(np.prod(lead)) if lead else 1, -1)
    w = np.abs(weight).reshape(s.shape)
    # lexsort: last key is primary.
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), w, s), axis=1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(s.shape[1])[None].repeat(s.shape[0], 0), axis=1)
    kk = np.broadcast_to(np.asarray(k).reshape(-1, 1) if np.ndim(k) else np.asarray(k), (s.shape[0], 1))
    return (ranks < kk).reshape(score.shape)


def nm_mask(layer: Layer, score: np.ndarray, n: int, m: int) -> np.ndarray | None:
    """Prune mask ``[groups, Mg, D]`` keeping ``n`` of every ``m`` consecutive
    input-channel weights; None when the input dimension is not a multiple of ``m``."""
    rows = layer.rows()
    if layer.op == "Conv":
        cg = layer.w.shape[1]
        kpos = int(np.prod(layer.w.shape[2:]))
        if cg % m:
            return None
        g, mg, _ = rows.shape
        # [g, Mg, C, k] -> [g, Mg, k, C/m, m]
        s = score.reshape(g, mg, cg, kpos).transpose(0, 1, 3, 2).reshape(g, mg, kpos, cg // m, m)
        w = rows.reshape(g, mg, cg, kpos).transpose(0, 1, 3, 2).reshape(s.shape)
        mask = topk_mask(s, w, m - n, 4)
        return mask.reshape(g, mg, kpos, cg).transpose(0, 1, 3, 2).reshape(rows.shape)
    d = rows.shape[-1]
    if d % m:
        return None
    s = score.reshape(rows.shape[0], rows.shape[1], d // m, m)
    mask = topk_mask(s, rows.reshape(s.shape), m - n, 3)
    return mask.reshape(rows.shape)


def _first_last(layers: list[Layer]) -> tuple[set[str], set[str]]:
    """Names of layers with no other layer upstream (first) / downstream (last)."""
    by_node = {id(l.node): l for l in layers}
    add_nodes = {id(l.add[0]): l for l in layers if l.add is not None}

    def reach(layer: Layer, up: bool) -> bool:
        seen: set[int] = set()
        stack: list[gs.Tensor] = [layer.x] if up else [layer.out]
        while stack:
            t = stack.pop()
            nodes = t.inputs if up else t.outputs
            for nd in nodes:
                if id(nd) in seen:
                    continue
                seen.add(id(nd))
                other = by_node.get(id(nd)) or add_nodes.get(id(nd))
                if other is not None and other is not layer:
                    return True
                stack.extend(nd.inputs if up else nd.outputs)
        return False

    first = {l.name for l in layers if not reach(l, True)}
    last = {l.name for l in layers if not reach(l, False)}
    return first, last


@register
@dataclass
class PruneWeights(Pass):
    """Unstructured (or N:M) weight pruning by magnitude or Wanda importance
    (see the module docstring).

    Options:
        sparsity: fraction of each layer's weights set to zero (ignored with ``n_m``).
        method: ``"wanda"`` (needs calibration data) or ``"magnitude"``.
        scope: ``"layer"`` (every layer at ``sparsity``) or ``"global"`` (one
            threshold over all pruned layers).
        group: ``"row"``, ``"layer"`` or ``"auto"`` (row for wanda, layer for
            magnitude); the comparison group inside a layer when ``scope="layer"``.
        n_m: ``"N:M"`` pattern along the input dimension, e.g. ``"2:4"``.
        layer_sparsity: per-layer sparsity by node or weight name (overrides ``sparsity``).
        exclude_first, exclude_last: leave the first / last layers dense.
        exclude_nodes: node names left dense.
        op_types: which of Conv, Gemm, MatMul to prune.
        min_elements: leave weights with fewer elements dense.
        calibration_limit: samples read for the Wanda norms (0: all).
    """

    name = "prune-weights"
    lossless = False
    summary = "unstructured or N:M weight pruning by magnitude or activation-aware (Wanda) importance"

    sparsity: float = 0.5
    method: str = "wanda"
    scope: str = "layer"
    group: str = "auto"
    n_m: str = ""
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    exclude_first: bool = False
    exclude_last: bool = False
    exclude_nodes: list[str] = field(default_factory=list)
    op_types: list[str] = field(default_factory=lambda: ["Conv", "Gemm", "MatMul"])
    min_elements: int = 0
    calibration_limit: int = 32

    def _check_options(self) -> None:
        if self.method not in ("wanda", "magnitude"):
            raise InputError(f"prune-weights: method {self.method!r} is not 'wanda' or 'magnitude'")
        if self.scope not in ("layer", "global"):
            raise InputError(f"prune-weights: scope {self.scope!r} is not 'layer' or 'global'")
        if self.group not in ("auto", "row", "layer"):
            raise InputError(f"prune-weights: group {self.group!r} is not 'auto', 'row' or 'layer'")
        for name, s in [("sparsity", self.sparsity), *self.layer_sparsity.items()]:
            if not 0.0 <= float(s) < 1.0:
                raise InputError(f"prune-weights: sparsity of {name!r} must be in [0, 1), got {s}")

    def run(self, model: Model, ctx: Context) -> PassResult:
        self._check_options()
        nm = parse_nm(self.n_m)
        layers, refused = find_layers(model, tuple(self.op_types), quantized=False)
        stats: dict[str, int | float] = {}
        for name, why in refused.items():
            logger.debug("prune-weights: %s not a prunable layer: %s", name, why)
        excluded: dict[str, str] = {}
        first, last = _first_last(layers)
        chosen: list[Layer] = []
        for layer in layers:
            why = None
            if layer.name in self.exclude_nodes:
                why = "excluded by name"
            elif self.exclude_first and layer.name in first:
                why = "first layer"
            elif self.exclude_last and layer.name in last:
                why = "last layer"
            elif layer.w.size < self.min_elements:
                why = f"fewer than {self.min_elements} weights"
            elif self._target(layer) <= 0.0 and nm is None:
                why = "sparsity 0"
            if why:
                excluded[layer.name] = why
            else:
                chosen.append(layer)
        norms = self._norms(model, ctx, chosen) if (self.method == "wanda" and chosen) else {}

        masks: dict[str, np.ndarray] = {}
        scores = {l.name: importance(l, norms.get(l.name)) for l in chosen}
        if nm is not None:
            for layer in chosen:
                mask = nm_mask(layer, scores[layer.name], *nm)
                if mask is None:
                    excluded[layer.name] = f"input dimension not a multiple of {nm[1]}"
                else:
                    masks[layer.name] = mask
        elif self.scope == "global":
            masks = self._global_masks(chosen, scores)
        else:
            row = self.group == "row" or (self.group == "auto" and self.method == "wanda")
            for layer in chosen:
                s, w = scores[layer.name], layer.rows()
                target = self._target(layer)
                if row:
                    k = int(np.floor(target * s.shape[-1] + 1e-9))
                    masks[layer.name] = topk_mask(s, w, k, 2)
                else:
                    k = int(np.floor(target * s.size + 1e-9))
                    masks[layer.name] = topk_mask(s[None], w[None], k, 1)[0]

        names = self.names(model)
        total = zeros = newly = 0
        sparse = ctx.options.setdefault("sparse_layers", [])
        for layer in chosen:
            mask = masks.get(layer.name)
            if mask is None:
                continue
            rows = layer.rows()
            new_zero = int(np.count_nonzero(mask & (rows != 0)))
            if new_zero:
                w_t = layer.node.inputs[1]
                pruned = layer.from_rows(np.where(mask, 0.0, rows))
                if layer.op == "Gemm":
                    pruned = pruned / layer.attrs.get("alpha", 1.0)  # alpha stays on the node
                dtype = w_t.dtype if w_t.dtype is not None else np.float32
                layer.node.inputs[1] = gs.Constant(names.new(f"{w_t.name}_pruned"), np.ascontiguousarray(pruned.astype(dtype)))
            n_zero = int(np.count_nonzero(mask | (rows == 0)))
            total += rows.size
            zeros += n_zero
            newly += new_zero
            stats[f"sparsity:{layer.name}"] = round(n_zero / rows.size, 4)
            if layer.name not in sparse:
                sparse.append(layer.name)
            logger.debug("prune-weights: %s sparsity %.3f (%d new zeros)", layer.name, n_zero / rows.size, new_zero)
        for name, why in excluded.items():
            stats[f"excluded:{name}"] = 1
            logger.debug("prune-weights: %s left dense: %s", name, why)
        head: dict[str, int | float] = {
            "layers_pruned": len([l for l in chosen if l.name in masks]),
            "weights": total,
            "zeros": zeros,
            "weights_zeroed": newly,
            "sparsity": round(zeros / total, 4) if total else 0.0,
        }
        if newly:
            logger.info(
                "prune-weights: %d layers, %d of %d weights zero (%.1f%%), %d new (%s%s)",
                head["layers_pruned"], zeros, total, 100.0 * zeros / max(total, 1), newly, self.method,
                f", {self.n_m}" if nm else "",
            )
        return PassResult(modified=newly > 0, stats={**head, **stats})

    # ------------------------------------------------------------ helpers
    def _target(self, layer: Layer) -> float:
        w_name = layer.node.inputs[1].name
        for key in (layer.name, w_name):
            if key in self.layer_sparsity:
                return float(self.layer_sparsity[key])
        return float(self.sparsity)

    def _global_masks(self, chosen: list[Layer], scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        flat_s, flat_w, sizes = [], [], []
        for layer in chosen:
            s = scores[layer.name]
            if self.method == "wanda":
                mean = float(s.mean()) if s.size else 1.0
                s = s / (mean if mean > 0 else 1.0)
            flat_s.append(s.ravel())
            flat_w.append(layer.rows().ravel())
            sizes.append(s.size)
        if not flat_s:
            return {}
        s_all, w_all = np.concatenate(flat_s), np.concatenate(flat_w)
        k = int(np.floor(self.sparsity * s_all.size + 1e-9))
        mask_all = topk_mask(s_all[None], w_all[None], k, 1)[0]
        out, start = {}, 0
        for layer, n in zip(chosen, sizes):
            out[layer.name] = mask_all[start : start + n].reshape(scores[layer.name].shape)
            start += n
        return out

    def _norms(self, model: Model, ctx: Context, layers: list[Layer]) -> dict[str, np.ndarray]:
        """Per input channel L2 norm of each layer's activation over the calibration data."""
        from ..calibration import PerChannel, capture

        if ctx.calibration is None:
            raise InputError("prune-weights with method='wanda' needs calibration data (--calib); or use method='magnitude'")
        data = limited(ctx.calibration, self.calibration_limit)
        wanted: dict[str, int] = {}
        for layer in layers:
            wanted.setdefault(layer.x.name, layer.channel_axis)
        proto = model.to_proto(external=True)
        got = capture(proto, list(wanted), data, lambda t: [PerChannel(axis=wanted[t])], progress=False, desc="prune-weights")
        norms = {}
        for layer in layers:
            c = got[layer.x.name][0]
            if c.sumsq is None:
                raise InputError(f"prune-weights: the calibration data never reached {layer.x.name!r} (input of {layer.name})")
            norms[layer.name] = np.sqrt(c.sumsq)
        return norms
