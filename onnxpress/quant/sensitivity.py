"""Sensitivity analysis of static int8 quantization, and the error budget.

Which quantized layers hurt the model's *output*, measured on calibration data
(never on evaluation data), and which to keep in float so the model meets a
budget. Used by ``quantize-int8`` (options ``sensitivity``, ``max_error``,
``metric``/``min_metric``); see :class:`~onnxpress.quant.qdq.QuantizeInt8`.

**Ranking: "quantize only this layer", all layers in one session.** The unit is
a compute QNode (Conv, ConvTranspose, Gemm, MatMul: what ``exclude_nodes`` keeps
float). Its *group* is what quantizing it adds: the int8 weight, the
quantize-dequantize of its activation inputs, and that of its output. Tensors
quantized only for optional QNodes (a residual ``Add``, a ``Concat``, a pool) are
on when any QNode that reads or writes them is (the same fixed point by which the
quantizer prunes optional QNodes). :func:`gated_model` turns the QDQ model into
one float model in which every quantize-dequantize ``d`` of a float tensor ``x``
becomes ``x + g * (d - x)``, with one scalar graph input ``g`` per tensor (and per
weight): gates at 0 give the float model, gates at 1 the simulated int8 model
(onnxruntime with graph optimizations off runs Q/DQ in float). One session then
measures, for every unit, the output error with only its group on. The unit's
*contribution* is that error's noise power minus the noise with every gate off
(what is quantized regardless: ``DynamicQuantizeLSTM``, int32 biases). Noise
powers of independent rounding errors add, so the ranking also predicts what
keeping a set of layers float buys.

**Budget: greedy, most sensitive first.** With every gate on except the groups
of the units kept float, the gated model is re-measured after each unit is added
to the kept set, until the output meets the budget; the quantizer then writes the
real QDQ model with those units excluded, measures *that* in onnxruntime (fused
int8 kernels), and keeps adding units while it misses (the achieved numbers in
the pass stats are those of the written model).

**Weight-only int8 for the kept layers** (``float_layer_weights="int8"``): a
unit kept float keeps its int8 weight (in the simulation its weight gate stays
on while its activation gates are off), unless its weight has at most 4096
elements (fp32 there costs nothing). The ranking is unchanged (each unit's whole
group). If the written model misses the budget at the cap, and would meet it
with fp32 weights for every kept unit, the fewest kept units go back to fp32
weights: ordered by their weight-only error (the output noise of that weight
alone in int8) per weight element, the prefix is bisected on the written model.
Otherwise they keep int8 weights and the budget is reported missed.
With ``weight_only_rounding="gptq"`` the written trials' weight-only int8 weights
of Gemm, 2-D MatMul and 1x1 Conv layers are GPTQ-rounded (Frantar et al. 2022,
error compensation through the layer input's ``X^T X``), so the decision sees
those weights (the simulation's weight gates stay round-to-nearest).

Output error (:func:`output_error`): per model output, SNR in dB
``10 log10(sum ref^2 / sum (ref - got)^2)`` and cosine over all samples; the
model's value is the worst output's.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import InputError
from ..graph import iter_proto_graphs

__all__ = [
    "Budget",
    "parse_budget",
    "load_metric",
    "output_error",
    "gated_model",
    "GateSpec",
    "format_table",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ budget
@dataclass(frozen=True)
class Budget:
    """What the quantized model must reach on calibration data.

    Attributes:
        snr_db: minimum output SNR (dB), or None.
        cosine: minimum output cosine, or None.
        metric: a user function ``(fp32_outputs, int8_outputs) -> float``
            (higher is better; each argument a list per sample of the list of
            output arrays), or None.
        min_metric: the value ``metric`` must reach.
    """

    snr_db: float | None = None
    cosine: float | None = None
    metric: Callable[[list, list], float] | None = None
    min_metric: float | None = None

    @property
    def active(self) -> bool:
        return self.snr_db is not None or self.cosine is not None or self.metric is not None

    def met(self, snr: float, cos: float, metric_value: float | None) -> bool:
        if self.snr_db is not None and not snr >= self.snr_db:
            return False
        if self.cosine is not None and not cos >= self.cosine:
            return False
        if self.metric is not None and self.min_metric is not None:
            if metric_value is None or not metric_value >= self.min_metric:
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.snr_db is not None:
            parts.append(f"SNR >= {self.snr_db:g} dB")
        if self.cosine is not None:
            parts.append(f"cosine >= {self.cosine:g}")
        if self.metric is not None:
            parts.append(f"metric >= {self.min_metric:g}")
        return ", ".join(parts) or "none"


def parse_budget(max_error: str | None, metric: str | Callable | None = None, min_metric: float | None = None) -> Budget:
    """A :class:`Budget` from the pass options.

    Args:
        max_error: ``"snr:DB"`` (e.g. ``"snr:30"``) or ``"cosine:C"`` (e.g.
            ``"cosine:0.999"``); several joined by ``,``; empty for none.
        metric: ``"module:function"`` or ``"file.py:function"``, or a callable.
        min_metric: the value ``metric`` must reach (required with ``metric``).

    Raises:
        InputError: malformed ``max_error``, ``metric`` without ``min_metric``,
            or a metric that cannot be imported.
    """
    snr = cos = None
    for part in (max_error or "").split(","):
        part = part.strip()
        if not part:
            continue
        kind, _, value = part.partition(":")
        kind = kind.strip().lower()
        try:
            v = float(value)
        except ValueError:
            raise InputError(f"max_error {part!r}: expected 'snr:DB' or 'cosine:C'") from None
        if kind == "snr":
            snr = v
        elif kind in ("cos", "cosine"):
            if not -1.0 <= v <= 1.0:
                raise InputError(f"max_error {part!r}: a cosine lies in [-1, 1]")
            cos = v
        else:
            raise InputError(f"max_error {part!r}: expected 'snr:DB' or 'cosine:C'")
    fn = None
    if metric:
        fn = load_metric(metric) if isinstance(metric, str) else metric
        if min_metric is None:
            raise InputError("metric needs min_metric (the value the quantized model must reach)")
    return Budget(snr, cos, fn, None if min_metric is None else float(min_metric))


def load_metric(spec: str) -> Callable[[list, list], float]:
    """Import ``module:function`` or ``path/to/file.py:function``."""
    where, _, attr = spec.rpartition(":")
    if not where or not attr:
        raise InputError(f"metric {spec!r}: expected 'module:function' or 'file.py:function'")
    try:
        if where.endswith(".py") or os.sep in where or "/" in where:
            path = Path(where)
            if not path.is_file():
                raise InputError(f"metric {spec!r}: no such file {where}")
            module_spec = importlib.util.spec_from_file_location(f"_onnxpress_metric_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(where)
        fn = getattr(module, attr)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"metric {spec!r}: cannot import it: {exc}") from exc
    if not callable(fn):
        raise InputError(f"metric {spec!r} is not callable")
    return fn


# ------------------------------------------------------------------ metrics
def output_error(ref: Sequence[Sequence[np.ndarray]], got: Sequence[Sequence[np.ndarray]]) -> tuple[float, float]:
    """``(snr_db, cosine)`` of ``got`` against ``ref`` (per sample, the list of
    outputs): per output over all samples, then the worst output. Non-float
    outputs are skipped; a shape mismatch or a non-finite value gives
    ``(-inf, -1)``."""
    if not ref:
        return math.inf, 1.0
    snr, cos = math.inf, 1.0
    for k in range(len(ref[0])):
        num = den = dot = na = nb = 0.0
        for r, g in zip(ref, got):
            a, b = np.asarray(r[k]), np.asarray(g[k])
            if a.dtype.kind != "f":
                continue
            if a.shape != b.shape or not np.all(np.isfinite(b)):
                return -math.inf, -1.0
            a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
            num += float(a64 @ a64)
            den += float(np.sum((a64 - b64) ** 2))
            dot += float(a64 @ b64)
            na += float(a64 @ a64)
            nb += float(b64 @ b64)
        if num == 0 and den == 0:
            continue
        s = math.inf if den == 0 else (10 * math.log10(num / den) if num > 0 else -math.inf)
        c = 1.0 if (na == 0 and nb == 0) else dot / (math.sqrt(na * nb) + 1e-300)
        snr, cos = min(snr, s), min(cos, c)
    return snr, cos


def noise_ratio(snr_db: float) -> float:
    """Noise power over signal power of an SNR in dB."""
    if snr_db == math.inf:
        return 0.0
    if snr_db == -math.inf:
        return math.inf
    return 10 ** (-snr_db / 10)


def snr_of(noise: float) -> float:
    return math.inf if noise <= 0 else -10 * math.log10(noise)


# -------------------------------------------------------------- gated model
@dataclass
class GateSpec:
    """How a QDQ model's quantization is grouped.

    Attributes:
        act_dq: DequantizeLinear node name -> the activation tensor it quantizes.
        weight_dq: DequantizeLinear node name -> (compute node name, fp32 weight).
        units: compute QNode names (the ranking's rows), in graph order.
        ops: unit name -> op type.
        touch: activation tensor name -> names of the QNodes reading or writing it.
        optional: names of the non-compute QNodes (Add, Concat, pools, ...), with
            their quantized activation inputs.
    """

    act_dq: dict[str, str]
    weight_dq: dict[str, tuple[str, np.ndarray]]
    units: list[str]
    ops: dict[str, str]
    touch: dict[str, list[str]]
    optional: dict[str, list[str]]

    def gates(self, on: Iterable[str], weights_on: Iterable[str] = ()) -> dict[str, bool]:
        """Gate name -> on, for the units ``on`` quantized (their groups on, and the
        optional QNodes reachable from them), and the units ``weights_on`` with
        only their int8 weight on (weight-only int8, activations float)."""
        on = set(on)
        weights_on = set(weights_on)
        node_on = {u: (u in on) for u in self.units}
        for n in self.optional:
            node_on[n] = False
        tensor_on: dict[str, bool] = {}
        changed = True
        while changed:
            changed = False
            for t, readers in self.touch.items():
                v = any(node_on.get(r, False) for r in readers)
                if tensor_on.get(t) != v:
                    tensor_on[t] = v
                    changed = True
            for n, ins in self.optional.items():
                v = any(tensor_on.get(t, False) for t in ins)
                if node_on[n] != v:
                    node_on[n] = v
                    changed = True
        gates = {_act_gate(t): v for t, v in tensor_on.items()}
        for u in self.units:
            gates[_weight_gate(u)] = u in on or u in weights_on
        return gates


def _act_gate(tensor: str) -> str:
    return f"__onnxpress_gate_a__{tensor}"


def _weight_gate(node: str) -> str:
    return f"__onnxpress_gate_w__{node}"


def gated_model(qdq: onnx.ModelProto, spec: GateSpec) -> tuple[onnx.ModelProto, list[str]]:
    """The float model in which each quantize-dequantize can be switched on and off
    (see the module docstring).

    Returns:
        ``(model, gate_names)``: the model (run it with graph optimizations off)
        and its scalar float gate inputs.
    """
    m = onnx.ModelProto()
    m.CopyFrom(qdq)
    gate_names: dict[str, None] = {}
    counter = [0]

    def fresh(base: str) -> str:
        counter[0] += 1
        return f"{base}__g{counter[0]}"

    main = m.graph
    for g in iter_proto_graphs(main):
        producers = {o: n for n in g.node for o in n.output}
        new_nodes: list[onnx.NodeProto] = []
        for node in g.node:
            new_nodes.append(node)
            if node.op_type != "DequantizeLinear":
                continue
            if node.name in spec.act_dq:
                q = producers.get(node.input[0])
                if q is None or q.op_type != "QuantizeLinear":
                    continue
                x = q.input[0]
                gate = _act_gate(spec.act_dq[node.name])
            elif node.name in spec.weight_dq:
                owner, w = spec.weight_dq[node.name]
                x = fresh(f"{node.name}_fp32")
                main.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w, dtype=np.float32), x))
                gate = _weight_gate(owner)
            else:
                continue
            gate_names[gate] = None
            d = node.output[0]
            raw = fresh(f"{d}_raw")
            node.output[0] = raw
            diff, scaled = fresh(f"{d}_diff"), fresh(f"{d}_gated")
            new_nodes.append(helper.make_node("Sub", [raw, x], [diff], name=fresh("gate_sub")))
            new_nodes.append(helper.make_node("Mul", [diff, gate], [scaled], name=fresh("gate_mul")))
            new_nodes.append(helper.make_node("Add", [x, scaled], [d], name=fresh("gate_add")))
        del g.node[:]
        g.node.extend(new_nodes)
    for name in gate_names:
        main.input.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, []))
    return m, list(gate_names)


def run_gated(session, feeds: Sequence[Mapping[str, np.ndarray]], gate_names: Sequence[str], gates: Mapping[str, bool]) -> list[list[np.ndarray]]:
    g = {n: np.array(1.0 if gates.get(n, False) else 0.0, dtype=np.float32) for n in gate_names}
    return [session.run(None, {**f, **g}) for f in feeds]


# ------------------------------------------------------------------- report
def format_table(rows: Sequence[Mapping[str, Any]], limit: int | None = 20) -> str:
    """A fixed-width table of the ranking (most sensitive first)."""
    head = f"{'rank':>4}  {'node':<48} {'op':<14} {'SNR alone dB':>12} {'noise share':>11}"
    lines = [head, "-" * len(head)]
    for i, r in enumerate(rows[: limit or None]):
        snr = "inf" if math.isinf(r["snr_db"]) else f"{r['snr_db']:.1f}"
        lines.append(f"{i + 1:>4}  {r['node'][:48]:<48} {r['op']:<14} {snr:>12} {r['share']:>10.1%}")
    if limit and len(rows) > limit:
        lines.append(f"  ... {len(rows) - limit} more")
    return "\n".join(lines)
