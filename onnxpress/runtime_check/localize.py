"""Per-layer localization: where does the candidate depart from the reference?

When an output fails, every intermediate float tensor the two models share is
exposed as an extra output (with :mod:`onnxpress.calibration.capture`'s
machinery, which also threads tensors out of ``If`` branches, e.g. Silero VAD's
LSTM), both models run with onnxruntime's graph optimizations *disabled* (so
every tensor keeps its name and value) on the same feeds, and each shared
tensor is compared. The idea is Polygraphy's ``debug reduce``, without the
bisection: one run shows every layer at once.

Matching: a reference tensor is matched with the candidate tensor of the same
name. In a QDQ model the float tensor a consumer reads may have been replaced by
a ``DequantizeLinear`` output; such an output is matched to the float tensor it
stands for by following ``DequantizeLinear <- QuantizeLinear <- x`` chains back
to a name the reference has (or by stripping the quantizer's name suffixes:
``_dequantized``, ``_DequantizeLinear_Output``, ``_prequant``). Tensors that only
exist in one model (fused, folded) are skipped; weights (initializers,
``Constant`` outputs and tensors computed from constants only) are not
activations and are skipped too; ``Loop``/``Scan`` bodies are not capturable.

A tensor *departs* when its shape differs, when it has NaN/Inf the reference
has not, or when its SNR falls below a threshold: intermediate tensors have no
tolerance of their own, so the threshold is relative: 60 dB (0.1 % relative
error) for fp32 candidates, 30 dB for fp16, and the output criterion's
``min_snr_db`` for quantized ones (default 20 dB for int8, 7 dB for weight-only
int4, whose 4-bit noise alone takes a deep model's tensors below 20 dB; see
:mod:`onnxpress.runtime_check.compare`).

``int8`` candidates may have been through cross-layer equalization (Nagel et
al. 2019; ``quantize-int8`` does it for Conv pairs): the tensor between two
equalized Convs is the reference's scaled per channel, a legitimate change
(weight-only ``int4`` is never equalized and is compared as is). For them each
tensor is also compared after the best scale per channel (axis 1) is
applied; when that rescaled SNR is clearly better (by more than 3 dB), the
tensor counts as ``rescaled``: it is judged by its rescaled SNR, and its
rescaled error is the one carried along the graph.

Error contribution of a layer: the relative error of its output,
``||a - b|| / ||a||``, minus the largest relative error among its inputs (the
error it *adds*; the nearest compared ancestor stands for an input that was not
compared). The layer that introduced a fault ranks first; the layers after it,
which only carry the error along, rank low.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import onnx

from ..errors import CheckError
from .compare import _dot

__all__ = ["LayerError", "Localization", "localize", "match_tensors"]

logger = logging.getLogger(__name__)

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
_DQ_SUFFIXES = ("_DequantizeLinear_Output", "_dequantized", "_prequant", "_QuantizeLinear_Output", "_quantized")
_THRESHOLDS = {"fp32": 60.0, "fp16": 30.0, "int8": 20.0, "int4": 7.0}


@dataclass
class LayerError:
    """One compared tensor (the output of one reference node).

    Attributes:
        index: position in the reference's topological order (``If`` branch nodes
            come before their ``If`` node).
        tensor: the reference tensor name; ``candidate_tensor`` its match.
        node, op_type: the reference node that produces it.
        where: ``"main"`` or ``"if-branch"``.
        shape: shape in the first feed that computed it.
        max_abs, mean_abs, cosine, snr_db: as for outputs.
        rel_err: ``||a - b|| / ||a||`` over all feeds.
        contribution: ``rel_err`` minus the largest ``rel_err`` of its inputs (>= 0).
        snr_in_db: the SNR of its worst input (``inf`` when its inputs are exact).
        departs: beyond the threshold (see the module docstring).
        source: departs while every input is within the threshold: the error
            starts here.
        snr_rescaled_db: SNR after the best per-channel scale (quantized
            candidates, rank >= 2), else None.
        rescaled: differs from the reference mostly by a per-channel scale
            (cross-layer equalization); judged by ``snr_rescaled_db``.
        nonfinite: new NaN/Inf.
        shape_mismatch: the shapes differ.
    """

    index: int
    tensor: str
    candidate_tensor: str
    node: str
    op_type: str
    where: str
    shape: list[int] = field(default_factory=list)
    max_abs: float = 0.0
    mean_abs: float = 0.0
    cosine: float = 1.0
    snr_db: float = math.inf
    rel_err: float = 0.0
    contribution: float = 0.0
    snr_in_db: float = math.inf
    departs: bool = False
    source: bool = False
    snr_rescaled_db: float | None = None
    rescaled: bool = False

    @property
    def snr_judged_db(self) -> float:
        """The SNR the tensor is judged by: rescaled when ``rescaled``."""
        return self.snr_rescaled_db if self.rescaled and self.snr_rescaled_db is not None else self.snr_db
    nonfinite: int = 0
    shape_mismatch: bool = False


@dataclass
class Localization:
    """Result of :func:`localize`.

    Attributes:
        target, level: where the models ran (``level`` is always ``disabled``).
        feeds: feeds compared.
        threshold_db: SNR below which a tensor departs.
        layers: every compared tensor, in topological order.
        first: the first departing tensor, or None.
        unmatched: reference activations with no match in the candidate.
        skipped: why some tensors were not compared (Loop/Scan bodies, ...).
    """

    target: str
    level: str
    feeds: int
    threshold_db: float
    layers: list[LayerError] = field(default_factory=list)
    first: LayerError | None = None
    unmatched: int = 0
    skipped: list[str] = field(default_factory=list)

    def worst(self, k: int = 10) -> list[LayerError]:
        """The ``k`` layers that add the most error: the sources (layers where the
        SNR crosses the threshold) first, then by added relative error."""
        ranked = sorted(
            (l for l in self.layers if l.contribution > 0 or l.source),
            key=lambda l: (not l.source, -(l.contribution if math.isfinite(l.contribution) else 1e300), l.index),
        )
        out, seen = [], set()
        for l in ranked:  # one row per node (an LSTM has three outputs)
            key = (l.node, l.op_type, l.where) if l.node else (l.tensor,)
            if key not in seen:
                seen.add(key)
                out.append(l)
        return out[:k]

    def summary(self) -> str:
        if self.first is None:
            return (
                f"no intermediate tensor departs (SNR >= {self.threshold_db:g} dB on {len(self.layers)} compared); "
                "the difference builds up at the outputs"
            )
        f = self.first
        rescaled = f" (after per-channel rescaling; {_db(f.snr_db)} as is)" if f.rescaled else ""
        return (
            f"first departing tensor: {f.tensor!r} = {f.op_type} node {f.node!r} ({f.where}), "
            f"SNR {_db(f.snr_judged_db)}{rescaled}, cosine {f.cosine:.6f}, max abs {f.max_abs:.3g}"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["summary"] = self.summary()
        d["worst"] = [asdict(l) for l in self.worst()]
        return d


def _db(x: float) -> str:
    return "inf dB" if math.isinf(x) else f"{x:.1f} dB"


# ------------------------------------------------------------------ graph walking
def _branches(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]


def _is_if(node: onnx.NodeProto) -> bool:
    return node.op_type == "If" and node.domain in ("", "ai.onnx")


def _ordered_nodes(graph: onnx.GraphProto, where: str = "main", skipped: list | None = None):
    """(node, where) in execution order; ``If`` branch nodes before their ``If``."""
    for node in graph.node:
        if _is_if(node):
            for g in _branches(node):
                yield from _ordered_nodes(g, "if-branch", skipped)
        elif any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            if skipped is not None:
                skipped.append(f"{node.op_type} node {node.name!r}: its body is not capturable")
        yield node, where


def _constant_names(model: onnx.ModelProto) -> set[str]:
    """Initializers, Constant outputs and tensors computed from those only (all graphs)."""
    const: set[str] = set()

    def walk(graph: onnx.GraphProto) -> None:
        const.update(t.name for t in graph.initializer)
        for node in graph.node:
            if _is_if(node):
                for g in _branches(node):
                    walk(g)
                continue
            if node.op_type == "Constant" or (
                node.input
                and all((not i) or i in const for i in node.input)
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)
                and node.op_type not in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli")
            ):
                const.update(o for o in node.output if o)

    walk(model.graph)
    return const - {i.name for i in model.graph.input}


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    out = {}
    for node, _ in _ordered_nodes(model.graph):
        for o in node.output:
            if o:
                out[o] = node
    return out


def match_tensors(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> dict[str, str]:
    """``{reference tensor: candidate tensor}`` for the node outputs both have.

    Same names first; then ``DequantizeLinear`` outputs of the candidate are
    matched to the float tensor they replace (see the module docstring).
    """
    from ..calibration.capture import _locate

    ref_loc = {n: w for n, w in _locate(reference.graph).items() if w.kind != "loop-body" and w.source == "node"}
    cand_loc = {n: w for n, w in _locate(candidate.graph).items() if w.kind != "loop-body" and w.source == "node"}
    matched = {n: n for n in ref_loc if n in cand_loc}
    producers = _producers(candidate)
    for name in cand_loc:
        if name in ref_loc:
            continue
        node = producers.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            continue
        src, seen = name, set()
        while src not in ref_loc and src not in seen:
            seen.add(src)
            p = producers.get(src)
            if p is None or p.op_type not in ("DequantizeLinear", "QuantizeLinear") or not p.input:
                break
            src = p.input[0]
        if src not in ref_loc:
            base = name
            for suffix in _DQ_SUFFIXES:
                if base.endswith(suffix):
                    base = base[: -len(suffix)]
            src = base
        if src in ref_loc and src not in matched:
            matched[src] = name
    return matched


# ------------------------------------------------------------------ exposing
def _exposed(model: onnx.ModelProto, tensors: Sequence[str]) -> tuple[bytes, list[str]]:
    """``model`` with ``tensors`` as extra outputs; returns its bytes and the
    session output name carrying each tensor."""
    from ..calibration.capture import _element_types, _expose_in_if, _locate, _Names

    located = _locate(model.graph)
    in_branch = [t for t in tensors if located[t].kind == "if-branch"]
    types = _element_types(model, in_branch) if in_branch else {}
    work = onnx.ModelProto()
    work.CopyFrom(model)
    names = _Names(model)
    existing = {o.name for o in model.graph.output}
    carriers = []
    for t in tensors:
        if located[t].kind == "main":
            if t not in existing:
                work.graph.output.add().name = t  # untyped: onnxruntime accepts it
                existing.add(t)
            carriers.append(t)
        else:
            et = types.get(t, 0)
            carriers.append(_expose_in_if(work, t, located[t], et, names) if et else "")
    data = work.SerializeToString()
    return data, carriers


class _Stats:
    __slots__ = (
        "shape", "max_abs", "sum_abs", "count", "dot", "ref_sq", "got_sq", "err_sq", "nonfinite", "mismatch", "seen",
        "per_channel", "chan",
    )

    def __init__(self, per_channel: bool = False) -> None:
        self.per_channel = per_channel
        self.chan: list | None = None  # [dot_c, ref_sq_c, got_sq_c] over axis 1
        self.shape: list[int] = []
        self.max_abs = self.sum_abs = self.dot = self.ref_sq = self.got_sq = self.err_sq = 0.0
        self.count = self.nonfinite = 0
        self.mismatch = False
        self.seen = False

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        a, b = np.asarray(a), np.asarray(b)
        if a.size == 0 and b.size == 0:
            return  # a branch not taken
        if not self.seen:
            self.shape = list(a.shape)
        self.seen = True
        if a.shape != b.shape:
            self.mismatch = True
            return
        r = a.astype(np.float64).ravel()
        g = b.astype(np.float64).ravel()
        self.nonfinite += int(np.count_nonzero(~np.isfinite(g) & np.isfinite(r)))
        both = np.isfinite(r) & np.isfinite(g)
        r, g = r[both], g[both]
        d = np.abs(r - g)
        if d.size:
            self.max_abs = max(self.max_abs, float(d.max()))
        self.sum_abs += float(d.sum())
        self.count += int(d.size)
        self.dot += _dot(r, g)
        self.ref_sq += _dot(r, r)
        self.got_sq += _dot(g, g)
        self.err_sq += _dot(d, d)
        if self.per_channel and a.ndim >= 2 and not self.nonfinite:
            c = a.shape[1]
            ac = np.moveaxis(a, 1, 0).reshape(c, -1).astype(np.float64)
            bc = np.moveaxis(b, 1, 0).reshape(c, -1).astype(np.float64)
            sums = [np.multiply(ac, bc).sum(1), np.multiply(ac, ac).sum(1), np.multiply(bc, bc).sum(1)]
            if self.chan is None:
                self.chan = sums
            elif len(self.chan[0]) == c:
                self.chan = [x + y for x, y in zip(self.chan, sums)]

    def snr_rescaled(self) -> float | None:
        """SNR after scaling each channel of the candidate by its least-squares factor."""
        if self.chan is None or self.mismatch or self.nonfinite:
            return None
        dot, ref, got = self.chan
        resid = ref - np.where(got > 0, dot * dot / np.maximum(got, 1e-300), 0.0)
        err = float(np.maximum(resid, 0.0).sum())
        total = float(ref.sum())
        return math.inf if err <= total * 1e-30 else 10 * math.log10(max(total, 1e-300) / err)

    def snr(self) -> float:
        return math.inf if self.err_sq == 0 else 10 * math.log10(max(self.ref_sq, 1e-300) / self.err_sq)

    def cosine(self) -> float:
        den = math.sqrt(self.ref_sq * self.got_sq)
        return self.dot / den if den > 0 else (1.0 if self.err_sq == 0 else 0.0)

    def rel(self) -> float:
        if self.mismatch or self.nonfinite:
            return math.inf
        if self.err_sq == 0:
            return 0.0
        return math.sqrt(self.err_sq / self.ref_sq) if self.ref_sq > 0 else math.inf


def localize(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feeds: Iterable[dict],
    *,
    kind: str | None = None,
    tolerance: Any = None,
    target: Any = None,
    threshold_db: float | None = None,
) -> Localization:
    """Compare every shared intermediate tensor of the two models on ``feeds``.

    Args:
        reference, candidate: the models (ModelProto with weights loaded).
        feeds: a few feed dicts (each is run once; all activations of one call
            are held in memory, so keep it to one or two feeds for big models).
        kind: the candidate's kind (:func:`~onnxpress.runtime_check.compare.model_kind`
            when None); picks the threshold.
        tolerance: the failing output's :class:`~onnxpress.runtime_check.compare.Tolerance`
            (its ``min_snr_db``, when set, is the threshold).
        target: where to run (a Target); this machine's CPU when None.
        threshold_db: SNR threshold, overriding the above.

    Returns:
        A :class:`Localization`.

    Raises:
        CheckError: a model fails to load or run with the exposed tensors.
    """
    from .compare import model_kind, resolve_targets
    from .targets import Job

    feeds = list(feeds)
    kind = kind or model_kind(candidate)
    if threshold_db is None:
        threshold_db = (
            tolerance.min_snr_db if tolerance is not None and getattr(tolerance, "min_snr_db", None) is not None
            else _THRESHOLDS.get(kind, 60.0)
        )
    target = target if target is not None else resolve_targets(["cpu"])[0]
    skipped: list[str] = []
    order = list(_ordered_nodes(reference.graph, skipped=skipped))
    const = _constant_names(reference)
    matches = match_tensors(reference, candidate)
    from ..calibration.capture import _element_types

    ref_types = _element_types(reference, [o for n, _ in order for o in n.output if o])
    wanted: list[tuple[str, onnx.NodeProto, str]] = []
    unmatched = 0
    for node, where in order:
        if node.op_type == "Constant":
            continue
        for o in node.output:
            if not o or o in const:
                continue
            et = ref_types.get(o, 0)
            if et and et not in _FLOAT_TYPES:
                continue
            if o not in matches:
                unmatched += 1
                continue
            wanted.append((o, node, where))
    loc = Localization(getattr(target, "name", "cpu"), "disabled", len(feeds), float(threshold_db), unmatched=unmatched, skipped=skipped)
    if not wanted:
        return loc
    ref_names = [t for t, _, _ in wanted]
    cand_names = [matches[t] for t in ref_names]
    ref_bytes, ref_carriers = _exposed(reference, ref_names)
    cand_bytes, cand_carriers = _exposed(candidate, cand_names)
    cand_inputs = {i.name for i in candidate.graph.input}
    results = target.run(
        [
            Job(model=ref_bytes, feeds=feeds, level="disabled"),
            Job(model=cand_bytes, feeds=[{k: v for k, v in f.items() if k in cand_inputs} for f in feeds], level="disabled"),
        ]
    )
    for which, res in zip(("reference", "candidate"), results):
        if res.error:
            raise CheckError(f"localization: the {which} with exposed tensors fails on {loc.target}: {res.error.strip().splitlines()[0]}")
    r_res, c_res = results
    r_idx = {n: i for i, n in enumerate(r_res.output_names)}
    c_idx = {n: i for i, n in enumerate(c_res.output_names)}
    stats = {t: _Stats(per_channel=kind == "int8") for t in ref_names}
    for r_out, c_out in zip(r_res.outputs, c_res.outputs):
        for t, rc, cc in zip(ref_names, ref_carriers, cand_carriers):
            if rc not in r_idx or cc not in c_idx:
                continue
            a, b = r_out[r_idx[rc]], c_out[c_idx[cc]]
            if np.asarray(a).dtype.kind != "f":
                continue
            stats[t].add(a, b)
    del results, r_res, c_res

    # Relative error per tensor along the topological order; uncompared tensors
    # inherit the largest error of their inputs.
    err: dict[str, float] = {}
    index = 0
    by_name = {t: (node, where) for t, node, where in wanted}
    branch_outputs: dict[int, list[str]] = {}
    for node, where in order:
        if _is_if(node):
            branch_outputs[id(node)] = [o.name for g in _branches(node) for o in g.output]
        inputs = [i for i in node.input if i] + branch_outputs.get(id(node), [])
        e_in = max((err.get(i, 0.0) for i in inputs), default=0.0)
        for o in node.output:
            if not o:
                continue
            s = stats.get(o)
            if s is None or not s.seen:
                err[o] = e_in
                continue
            e = s.rel()
            snr = s.snr()
            snr_rescaled = s.snr_rescaled()
            # A per-channel scale explains the difference (3 dB better than the plain SNR: least
            # squares always gains a little): cross-layer equalization, judged after rescaling.
            rescaled = bool(snr_rescaled is not None and snr_rescaled > snr + 3.0)
            if rescaled:
                snr_eff = snr_rescaled
                e = 0.0 if math.isinf(snr_rescaled) else 10 ** (-snr_rescaled / 20)
            else:
                snr_eff = snr
            err[o] = e
            contribution = (math.inf if math.isinf(e) and not math.isinf(e_in) else max(0.0, e - e_in)) if not math.isinf(e_in) else 0.0
            snr_in = math.inf if e_in == 0 else (-math.inf if math.isinf(e_in) else -20 * math.log10(e_in))
            departs = bool(s.mismatch or s.nonfinite or snr_eff < threshold_db)
            nd, wh = by_name[o]
            layer = LayerError(
                index=index,
                tensor=o,
                candidate_tensor=matches[o],
                node=nd.name,
                op_type=nd.op_type,
                where=wh,
                shape=s.shape,
                max_abs=s.max_abs,
                mean_abs=s.sum_abs / s.count if s.count else 0.0,
                cosine=s.cosine(),
                snr_db=snr,
                rel_err=e,
                contribution=contribution,
                snr_in_db=snr_in,
                departs=departs,
                source=departs and snr_in >= threshold_db,
                snr_rescaled_db=snr_rescaled,
                rescaled=rescaled,
                nonfinite=s.nonfinite,
                shape_mismatch=s.mismatch,
            )
            loc.layers.append(layer)
            index += 1
            if layer.departs and loc.first is None:
                loc.first = layer
    logger.info("localize: %d tensors compared on %s; %s", len(loc.layers), loc.target, loc.summary())
    return loc
