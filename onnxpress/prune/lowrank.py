"""Low-rank factorization of large MatMul/Gemm weights: pass ``factorize-lowrank``.

A weight ``W [K, N]`` (MatMul input 1, or Gemm ``B`` with ``transA=0``, either
``transB``) is replaced by its truncated SVD ``W ~ U_r S_r V_r^T`` split as
``A = U_r sqrt(S_r)`` ``[K, r]`` and ``B = sqrt(S_r) V_r^T`` ``[r, N]``:

* ``MatMul(x, W)`` becomes ``MatMul(MatMul(x, A), B)``;
* ``Gemm(x, W, C)`` becomes ``Gemm(MatMul(x, A), B, C)`` (``alpha`` folded into
  ``B``, ``transB`` kept).

The original node keeps its name and output and becomes the second factor, so
``distill`` (after this pass in a recipe) refits it to the teacher's output of
that tensor; the pass lists the second factors in
``ctx.options["lowrank_layers"]``.

The rank is the smallest that keeps ``energy`` of the squared singular values
(when ``energy > 0``), else ``ceil(ratio * min(K, N))``. A layer is factorized
only when ``r (K + N) <= max_param_ratio * K N`` (parameters and MACs both
scale so), its weight has at least ``min_elements`` elements and it was not
factorized before (a factor is never factorized again).

Stats: ``layers_factorized``, ``params_before``, ``params_after`` (of the
factorized layers), ``rank:<node>`` and ``energy:<node>`` (kept fraction).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import InputError
from ..graph import Model
from ..passes.base import Context, Pass, PassResult, register
from ._layers import find_layers

__all__ = ["FactorizeLowRank", "choose_rank"]

logger = logging.getLogger(__name__)


def choose_rank(s: np.ndarray, energy: float, ratio: float) -> int:
    """Rank keeping ``energy`` of ``sum(s**2)`` (if > 0), else ``ceil(ratio * len(s))``."""
    if energy > 0:
        e = np.cumsum(s.astype(np.float64) ** 2)
        if e[-1] <= 0:
            return 1
        return int(min(len(s), np.searchsorted(e / e[-1], energy - 1e-12) + 1))
    return int(max(1, min(len(s), math.ceil(ratio * len(s)))))


@register
@dataclass
class FactorizeLowRank(Pass):
    """Replace large MatMul/Gemm weights by two low-rank factors (see the module docstring).

    Options:
        energy: retained fraction of the squared singular values (0: use ``ratio``).
        ratio: rank as a fraction of ``min(K, N)`` when ``energy`` is 0.
        max_param_ratio: factorize only when the factors have at most this
            fraction of the original parameters.
        min_elements: leave smaller weights alone.
        exclude_nodes: node names left alone.
    """

    name = "factorize-lowrank"
    lossless = False
    summary = "SVD low-rank factorization of large MatMul/Gemm weights into two MatMuls"

    energy: float = 0.0
    ratio: float = 0.25
    max_param_ratio: float = 0.8
    min_elements: int = 16384
    exclude_nodes: list[str] = field(default_factory=list)

    def run(self, model: Model, ctx: Context) -> PassResult:
        if not (0.0 <= self.energy <= 1.0) or not (0.0 < self.ratio <= 1.0):
            raise InputError("factorize-lowrank: energy must be in [0, 1] and ratio in (0, 1]")
        seconds = ctx.options.setdefault("lowrank_layers", [])
        firsts = ctx.options.setdefault("_lowrank_factors", [])
        layers, _ = find_layers(model, ("Gemm", "MatMul"), quantized=False)
        names = self.names(model)
        stats: dict[str, int | float] = {}
        done = before = after = 0
        for layer in layers:
            if layer.name in self.exclude_nodes or layer.name in seconds or layer.name in firsts:
                continue
            if layer.w.size < self.min_elements:
                continue
            w_kn = layer.rows()[0].T  # [K, N], alpha folded
            k, n = w_kn.shape
            u, s, vt = np.linalg.svd(w_kn, full_matrices=False)
            r = choose_rank(s, self.energy, self.ratio)
            if r * (k + n) > self.max_param_ratio * k * n:
                logger.debug("factorize-lowrank: %s: rank %d of [%d, %d] saves too little", layer.name, r, k, n)
                continue
            root = np.sqrt(s[:r])
            a = (u[:, :r] * root).astype(np.float32)
            b = (root[:, None] * vt[:r]).astype(np.float32)
            node = layer.node
            w_t = node.inputs[1]
            h = gs.Variable(names.new(f"{node.outputs[0].name}_lowrank"), dtype=np.float32)
            first = gs.Node(
                "MatMul", names.new(f"{node.name}_lowrank_u"),
                inputs=[node.inputs[0], gs.Constant(names.new(f"{w_t.name}_lowrank_u"), np.ascontiguousarray(a))],
                outputs=[h],
            )
            if node.op == "Gemm":
                b_node = b.T if layer.attrs.get("transB", 0) else b
                node.attrs["alpha"] = 1.0
            else:
                b_node = b
            node.inputs[0] = h
            node.inputs[1] = gs.Constant(names.new(f"{w_t.name}_lowrank_v"), np.ascontiguousarray(b_node))
            g = layer.graph
            pos = next(i for i, nd in enumerate(g.nodes) if nd is node)
            g.nodes.insert(pos, first)
            seconds.append(node.name)
            firsts.append(first.name)
            kept = float(np.sum(s[:r] ** 2) / max(np.sum(s**2), 1e-300))
            stats[f"rank:{node.name}"] = r
            stats[f"energy:{node.name}"] = round(kept, 4)
            done += 1
            before += k * n
            after += r * (k + n)
            logger.debug("factorize-lowrank: %s [%d, %d] -> rank %d (energy %.4f)", node.name, k, n, r, kept)
        if done:
            logger.info("factorize-lowrank: %d layers, %d -> %d parameters", done, before, after)
        return PassResult(done > 0, {"layers_factorized": done, "params_before": before, "params_after": after, **stats})
