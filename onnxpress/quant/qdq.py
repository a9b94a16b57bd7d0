"""The static int8 QDQ quantizer: pass ``quantize-int8``.

Calibrate activation ranges in one onnxruntime run, then insert
``QuantizeLinear``/``DequantizeLinear`` (QDQ) so that onnxruntime fuses every group
``DQ -> op -> Q`` into an integer kernel, and store the weights as int8.

Placement rules (a node that is quantized is a *QNode*; it reads its activations
through a DequantizeLinear and, unless said otherwise, its output goes through
``Q -> DQ``):

* ``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul``: always (when their activation
  input is a calibrated float tensor). Weights (constant inputs) become int8
  initializers, symmetric, per output channel: Conv axis 0, ConvTranspose axis 1,
  Gemm axis 1 (``transB=0``, B is ``[K, N]``) or 0 (``transB=1``), MatMul the last
  axis of a 2-D weight (per tensor for N-D weights). Biases become int32 with
  ``scale = input_scale * weight_scale`` and zero point 0; when ``|bias / scale|``
  would exceed ``2**30`` (a channel of tiny weights, e.g. pruned to zero) the
  weight scale of that channel is *raised* until the bias fits (the channel's
  weights lose precision they do not have anyway). Gemm ``alpha``/``beta`` are
  folded into B and C first; a ``[1, N]`` or scalar C becomes an int32 ``[N]``.
  ``MatMul``/``Gemm`` whose output no QNode reads keep a float output (onnxruntime
  runs them as ``MatMulIntegerToFloat``/``QGemm`` with float output, no output
  rounding).
* A ``Relu`` (or ``Clip`` with a constant lower bound >= 0) that is the only
  reader of a QNode's output joins the group: the Q goes after it, and
  onnxruntime removes it (the zero point is the type minimum).
* ``Add``, ``Mul``: only when both operands are activations that are already
  quantized (outputs of QNodes): the residual ``Add``. A binary op with a float
  operand from a float op (normalization, GELU, HardSwish, SE gates) stays float.
* ``Concat``: when every input is quantized; inputs and output share one scale
  (the union of their ranges), so the concatenation is exact on int8.
* ``MaxPool``, ``Resize``: input and output share the input's scale;
  ``AveragePool``, ``GlobalAveragePool``: their own output scale.
* ``Transpose``, ``Reshape``, ``Slice``, ``Gather`` (data), ``Squeeze``,
  ``Unsqueeze``, ``Flatten``: pass-through; the output reuses the input's scale,
  so onnxruntime drops the ``DQ -> op -> Q`` around them.
* The optional QNodes (everything but Conv/ConvTranspose/Gemm/MatMul) are kept
  only when a QNode reads their output; otherwise they would only add Q/DQ.
* Everything else stays float: Softmax, LayerNormalization, the decomposed
  normalization ops (ReduceMean, Pow, Sqrt, Div, Erf, ...), activations other than
  Relu. This default keeps magika, PP-OCR rec and Silero accurate (PEERS.md).
* ``LSTM`` with constant 3-D W and R: replaced by com.microsoft
  ``DynamicQuantizeLSTM`` (int8 per-channel weights, transposed as the kernel
  wants; activations quantized on the fly).
* Nodes inside ``If``/``Loop``/``Scan`` bodies are quantized the same way with the
  statistics captured inside the branch (Silero keeps its network there); a
  branch the calibration data never reached stays float.
* A weight read by several QNodes is quantized once per (axis, scales) and read
  through one DequantizeLinear (onnxruntime duplicates shared DQs for fusion).
  A weight also read by a float node keeps its fp32 copy for that reader only.
* ``float_layer_weights="int8"``: a compute layer left float (kept by the
  sensitivity budget, or not reached by the calibration data) still stores its
  weight as int8: symmetric ``[-127, 127]``, per output channel (Conv axis 0,
  ConvTranspose 1, Gemm 0/1 by ``transB``, MatMul the last axis of a constant B
  or the second to last of a constant A), read through ``Mul(Cast(int8), scale)``
  feeding the *float* op; its activations get no Q/DQ. onnxruntime folds that
  Cast/Mul when it loads the model (it never folds a DequantizeLinear of a QDQ
  model), so the float kernels stay as fast as with fp32 weights. Layers the
  user excluded (``exclude_nodes``, ``exclude_op_types``, not in ``op_types``)
  keep fp32 weights; those the target rules keep float for speed (``depthwise``,
  ``conv_transpose``) get int8 weights unless the budget then needs more fp32
  weights elsewhere.
* ``embedding_tables="int8"``: a float initializer of at least
  ``embedding_min_elements`` elements read only as the data of ``Gather`` nodes
  (a word-embedding table) becomes int8, and only the gathered rows are
  dequantized, with one scale per row (``embedding_scale="per-row"``:
  ``Gather -> Cast -> Mul(Gather(scales))``) or one per table (``"per-tensor"``:
  ``Gather -> DequantizeLinear``).

Opset: per-channel QDQ (``axis``) needs opset >= 13; an older model is converted
with ``onnx.version_converter`` first (and checked). int16 activations use the
default domain at opset >= 21, else ``com.microsoft`` Q/DQ.

A model that already contains quantization ops is left unchanged with a WARNING
(stat ``already_quantized=1``).
"""
from __future__ import annotations

import collections
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import InputError, PassError
from ..graph import Model, constant_array, infer_shapes, iter_graphs
from ..passes.base import Context, Pass, PassResult, register
from .config import (
    COMPUTE_OPS,
    DEFAULT_OP_TYPES,
    ELEMENTWISE_OPS,
    OWN_SCALE_OPS,
    PASS_THROUGH_OPS,
    SAME_SCALE_OPS,
    QuantConfig,
)
from .sensitivity import parse_budget
from .ranges import (
    MIN_SCALE,
    activation_qparams,
    qrange,
    quantize_bias,
    quantize_weight,
    range_from_histogram,
    weight_scales,
)

__all__ = ["QuantizeInt8", "QUANTIZED_OPS", "is_quantized", "weight_axis", "weight_only_axis"]

logger = logging.getLogger(__name__)

#: Ops whose presence means the model is already quantized.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "QGemm",
        "QAttention",
        "MatMulNBits",
    }
)

_DEFAULT_DOMAINS = (None, "", "ai.onnx")
_FLOAT = (np.dtype(np.float32),)
_BIAS_LIMIT = float(1 << 30)  # |int32 bias| cap, with headroom for the accumulation
_MS = "com.microsoft"
#: A layer kept float by the budget keeps fp32 weights when they have at most this
#: many elements (int8 would save nothing worth a DequantizeLinear).
_SMALL_WEIGHT = 4096
# GPTQ damping of the weight-only rounding (damp * mean(diag(X^T X)) on the diagonal):
# the paper's default. PP-OCRv4 rec (24 calibration lines): written-model SNR on the
# calibration samples 21.2 dB at 0.01 (20.6 at 0.001); exact strings on 240 held-out
# lines 0.9625 at 0.01 and 0.001 alike (fp32 0.9708, nearest rounding 0.9625).
_GPTQ_DAMP = 0.01


def is_quantized(model: Model) -> bool:
    """True when any node (subgraphs included) is a quantization op."""
    for g in iter_graphs(model.graph):
        for node in g.nodes:
            op = node.op
            if op in QUANTIZED_OPS or op.startswith("QLinear") or op.startswith("DynamicQuantize"):
                return True
    return False


def weight_axis(node: gs.Node, w: np.ndarray) -> int | None:
    """The output-channel axis of ``node``'s weight ``w`` (None: per tensor)."""
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        return 0 if int(node.attrs.get("transB", 0)) else 1
    if node.op == "MatMul":
        return 1 if w.ndim == 2 else None
    return None


def weight_only_axis(node: gs.Node, index: int, w: np.ndarray) -> int | None:
    """The per-channel axis of the weight-only int8 weight ``w`` read as input
    ``index`` of the float compute ``node`` (None: per tensor).

    The output channels: ``Conv`` axis 0 (``W`` is ``[M, C/group, k...]``),
    ``ConvTranspose`` axis 1 (``[C, M/group, k...]``), ``Gemm`` axis 0 with
    ``transB=1`` (``B`` is ``[N, K]``) else 1 (``[K, N]``), ``MatMul``: the last
    axis of a constant ``B`` (``[..., K, N]``), the second to last of a constant
    ``A`` (``[..., M, K]``); a 1-D MatMul operand is per tensor.
    """
    if node.op == "Conv":
        return 0
    if node.op == "ConvTranspose":
        return 1
    if node.op == "Gemm":
        if index != 1:
            return None
        return 0 if int(node.attrs.get("transB", 0)) else 1
    if node.op == "MatMul":
        if w.ndim < 2:
            return None
        return w.ndim - 1 if index == 1 else w.ndim - 2
    return None


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


@dataclass
class _Plan:
    """Which nodes are QNodes, which tensors are quantized."""

    qnodes: dict[int, str] = field(default_factory=dict)  # id(node) -> kind
    out: dict[int, gs.Tensor] = field(default_factory=dict)  # id(qnode) -> quantized output tensor
    absorbed: dict[int, gs.Node] = field(default_factory=dict)  # id(qnode) -> absorbed Relu/Clip
    qtensors: dict[str, gs.Tensor] = field(default_factory=dict)  # name -> tensor read through DQ
    produced: set[str] = field(default_factory=set)  # tensors quantized at their producer
    touch: dict[str, list[int]] = field(default_factory=dict)  # tensor -> QNodes reading/writing it


@register
@dataclass
class QuantizeInt8(Pass):
    """Static int8 QDQ quantization (see the module docstring).

    Options mirror :class:`~onnxpress.quant.config.QuantConfig`; ``"auto"``
    activation dtype and ``weight_bits=0`` choose per ``ctx.target``
    (:meth:`QuantConfig.for_target`). ``calibration_limit`` caps the calibration
    samples read.

    Target rules (``"auto"``, the default, per ``ctx.target``; ``"int8"``; ``"float"``):
    ``depthwise`` (depthwise Convs: auto is float on x86, where int8 depthwise is
    slower than onnxruntime's fp32 NCHWc kernel, int8 on arm64) and
    ``conv_transpose`` (auto is float: the CPU EP has no int8 ConvTranspose
    kernel). The report and the ``float_*`` stats give the reason; with
    ``float_layer_weights="int8"`` their weights are int8 too (see below).

    Sensitivity (:mod:`onnxpress.quant.sensitivity`), on the first
    ``sensitivity_samples`` calibration samples:

    * ``sensitivity``: rank the quantized compute layers by their contribution to
      the output error and log the table (INFO); also done whenever a budget is set.
    * ``max_error``: ``"snr:DB"`` and/or ``"cosine:C"`` the model's outputs must
      reach against fp32; ``metric`` (``"module:function"`` taking
      ``(fp32_outputs, int8_outputs)``, higher is better) with ``min_metric``.
      The most sensitive layers are kept float, greedily, until the written model
      meets the budget, at most ``max_float_fraction`` of the compute layers
      (a WARNING when that is not enough).
    * The analysis holds about four copies of the weights at once (the float model,
      the gated analysis model with fp32 and int8 weights, its session); above
      ``sensitivity_max_mb`` MB of weights it is skipped with a WARNING (stat
      ``sensitivity_skipped``) and every layer is quantized.

    Weight-only int8 and tables (see the module docstring):

    * ``float_layer_weights``: ``"int8"`` or ``"fp32"`` (default), the weights of
      the compute layers left float. With ``"int8"`` the budget is judged with
      them: the kept layers keep int8 weights in the simulation and in the
      written model (those with at most 4096 weights keep fp32 ones), and if
      the written model misses the budget at ``max_float_fraction``, the fewest
      kept layers go back to fp32 weights (largest weight-only error per weight
      first, bisected on the written model) so that it meets it, when fp32
      weights can (stat ``sensitivity_fp32_weights``: kept layers with fp32
      weights).
    * ``weight_only_rounding``: ``"nearest"`` (default) or ``"gptq"``: how those
      weight-only int8 weights are rounded. ``"gptq"`` is GPTQ (Frantar et al.
      2022, "GPTQ: Accurate Post-Training Quantization for Generative
      Pre-trained Transformers"): for a layer whose weight is a matrix against
      its input features (Gemm, MatMul with a constant 2-D ``B``, 1x1 Conv with
      group 1) the features are rounded one at a time (largest ``diag(H)``
      first), each rounding error compensated on the features not yet rounded
      through ``H = X^T X`` of the layer's float input over the first
      ``calibration_limit`` calibration samples (one capture run, one Gram per
      layer), so the layer's *output* error shrinks; the per-channel max-abs
      scales stay. Other layers, and weights read by several nodes, round to
      nearest. Used in the budget's trials and in the written model.
    * ``embedding_tables``: ``"int8"`` or ``"fp32"`` (default);
      ``embedding_min_elements`` (default 65536) is the smallest table made int8;
      ``embedding_scale``: ``"per-tensor"`` (default) or ``"per-row"`` (a table
      with outlier rows; on MiniLM per-row gave embedding cosine 0.9914 vs 0.9906
      per tensor, for 0.12 MB more).
      ``sensitivity_max_mb`` is judged on the weights before the tables shrink.

    Raises:
        InputError: no calibration data, or an invalid option value.

    Stats: ``weight_only_int8`` (float layers given int8 weights, and per op
    type), ``embedding_tables_int8``, ``embedding_bytes_saved``;
    ``sensitivity_layers`` (ranked), ``sensitivity_kept_float``,
    ``sensitivity_snr_db``/``sensitivity_cosine`` (and ``sensitivity_metric``) of
    the written model on those samples, ``sensitivity_budget_met``. The ranking is
    kept in :attr:`sensitivity_table` and the kept layers in :attr:`report`.
    """

    name = "quantize-int8"
    lossless = False
    summary = "static int8 QDQ quantization: calibrated activations, int8 per-channel weights, int32 biases"

    activation_dtype: str = "auto"
    activation_symmetric: bool | None = None
    per_channel: bool = True
    weight_bits: int = 0
    method: str = "minmax"
    percentile: float = 99.99
    op_types: list[str] = field(default_factory=lambda: list(DEFAULT_OP_TYPES))
    exclude_nodes: list[str] = field(default_factory=list)
    exclude_op_types: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    quantize_lstm: bool = True
    quantize_activation_matmul: bool = True
    equalize: bool = True
    calibration_limit: int = 64
    histogram_bins: int = 2048
    sensitivity: bool = False
    max_error: str = ""
    metric: str = ""
    min_metric: float | None = None
    sensitivity_samples: int = 8
    max_float_fraction: float = 0.25
    sensitivity_max_mb: float = 64.0
    float_layer_weights: str = "fp32"
    weight_only_rounding: str = "nearest"
    embedding_tables: str = "fp32"
    embedding_min_elements: int = 65536
    embedding_scale: str = "per-tensor"
    depthwise: str = "auto"
    conv_transpose: str = "auto"

    # ------------------------------------------------------------ config
    def config(self, target: str = "cpu") -> QuantConfig:
        """The :class:`QuantConfig` these options mean for ``target``."""
        base = QuantConfig.for_target(target)
        return QuantConfig(
            activation_dtype=base.activation_dtype if self.activation_dtype == "auto" else self.activation_dtype,
            activation_symmetric=self.activation_symmetric,
            per_channel=self.per_channel,
            weight_bits=base.weight_bits if not self.weight_bits else int(self.weight_bits),
            method=self.method,
            percentile=self.percentile,
            op_types=tuple(self.op_types),
            exclude_nodes=tuple(self.exclude_nodes),
            exclude_op_types=tuple(self.exclude_op_types),
            overrides=dict(self.overrides),
            quantize_lstm=self.quantize_lstm,
            depthwise=base.depthwise if self.depthwise == "auto" else self.depthwise,
            conv_transpose=base.conv_transpose if self.conv_transpose == "auto" else self.conv_transpose,
        )

    # --------------------------------------------------------------- run
    def run(self, model: Model, ctx: Context) -> PassResult:
        done = ctx.model_state("_quantize_int8_done", model)
        if done:
            return PassResult(False, {})
        if is_quantized(model):
            logger.warning("quantize-int8: the model is already quantized; left unchanged")
            return PassResult(False, {"already_quantized": 1})
        if ctx.calibration is None:
            raise InputError("quantize-int8 needs calibration data (--calib)")
        self._validate_options()
        cfg = self.config(ctx.target or "cpu")
        self._cfg = cfg
        self.report: list[tuple[str, str, str]] = []  # (node, op, why kept float)
        self.sensitivity_table: list[dict[str, Any]] = []
        self._act_dq: dict[str, str] = {}
        self._weight_dq: dict[str, tuple[str, np.ndarray]] = {}
        bytes_before = _weight_bytes(model)
        converted = 0
        if model.opset < 13:
            _convert_opset(model, 13)
            converted = 1
        try:
            stats = self._quantize(model, ctx)
        finally:
            del self._cfg
            self._act_dq, self._weight_dq = {}, {}
            self._grams, self._gptq_memo = {}, {}
        stats["opset_converted"] = converted
        stats["bytes_before"] = bytes_before
        stats["bytes_after"] = _weight_bytes(model)
        done.add(True)
        modified = bool(stats.get("quantized", 0) or converted)
        logger.info(
            "quantize-int8: %d nodes quantized %s, %d kept float, weights %.2f -> %.2f MB",
            stats.get("quantized", 0),
            {k[10:]: v for k, v in stats.items() if k.startswith("quantized_")},
            stats.get("kept_float", 0),
            bytes_before / 1e6,
            stats["bytes_after"] / 1e6,
        )
        return PassResult(modified, stats)

    # ----------------------------------------------------------- planning
    def _quantize(self, model: Model, ctx: Context) -> dict[str, int | float]:
        from ..calibration import Histogram, MinMax, capturable_tensors, capture

        cfg = self._cfg
        self._model = model
        self._types = infer_shapes(model)
        graphs = list(iter_graphs(model.graph, functions=False))
        self._graph_of: dict[int, gs.Graph] = {}
        for g in graphs:
            for node in g.nodes:
                self._graph_of[id(node)] = g
        self._graph_outputs = {id(t) for g in graphs for t in g.outputs}
        fused = self._matmul_add_to_gemm(graphs)
        equalized = self._equalize(graphs) if self.equalize else 0
        # The analysis' size limit is judged on the float weights as they entered the pass.
        float_bytes = _weight_bytes(model)
        embeddings = self._quantize_embeddings(graphs) if self.embedding_tables == "int8" else {}
        if fused or embeddings:
            self._types = infer_shapes(model)
        self._fp32_layers: set[str] = set()
        budget = parse_budget(self.max_error, self.metric or None, self.min_metric)
        analyse = bool(self.sensitivity or budget.active)
        skipped = 0
        if analyse and self.sensitivity_max_mb and float_bytes > self.sensitivity_max_mb * 1e6:
            logger.warning(
                "quantize-int8: sensitivity analysis skipped: %.0f MB of weights > sensitivity_max_mb=%g "
                "(it holds about four copies); every layer is quantized",
                float_bytes / 1e6, self.sensitivity_max_mb,
            )
            analyse, skipped = False, 1
        # The float weights are kept for the gated sensitivity model only.
        self._keep_float_weights = analyse
        if analyse:
            _name_compute_nodes(model, graphs, self.names(model))
        proto = model.to_proto(external=True)
        self._capturable = set(capturable_tensors(proto))
        excluded: dict[int, str] = {}
        plan = self._classify(graphs, excluded)

        # One capture run over every tensor any plan could need.
        wanted = sorted(set(plan.qtensors))
        stats_by_name: dict[str, Any] = {}
        if wanted:
            hist = cfg.method != "minmax"

            def collectors(name: str):
                return [Histogram(bins=self.histogram_bins)] if hist else [MinMax()]

            data = ctx.calibration
            if self.calibration_limit:
                data = _Limited(data, self.calibration_limit)
            captured = capture(proto, wanted, data, collectors, progress=False, desc="quantize-int8")
            stats_by_name = {k: v[0] for k, v in captured.items()}
        # GPTQ rounding of weight-only int8 weights: one Gram X^T X per eligible layer.
        self._grams: dict[str, np.ndarray] = {}
        # (Only kept layers can use them: not without the sensitivity analysis.)
        if analyse and self.weight_only_rounding == "gptq" and self.float_layer_weights == "int8":
            self._grams = self._capture_grams(proto, graphs, ctx)
        # Tensors the data never reached (an If branch not taken) keep their nodes float.
        empty = {n for n in wanted if _empty(stats_by_name.get(n))}
        plan = self._drop_unreached(graphs, plan, excluded, empty)

        sens_stats: dict[str, int | float] = {"sensitivity_skipped": 1} if skipped else {}
        # Layers the target rules keep float (depthwise, ConvTranspose) store int8
        # weights too, unless that costs the budget more fp32 weights elsewhere.
        self._target_int8_weights = self.float_layer_weights == "int8"
        if analyse and plan.qnodes:
            kept, sens_stats = self._sensitivity(proto, stats_by_name, empty, ctx, budget)
            target_nodes = [n for g in graphs for n in g.nodes if self._target_reason(n)]
            if self._target_int8_weights and self._sens_fp32_layers and target_nodes:
                kept, sens_stats = self._choose_target_weights(
                    proto, stats_by_name, empty, ctx, budget, graphs, target_nodes, kept, sens_stats
                )
            self._fp32_layers = set(self._sens_fp32_layers)
            if kept:
                self._cfg = cfg = cfg.replace(exclude_nodes=tuple(cfg.exclude_nodes) + tuple(kept))
                plan = self._drop_unreached(graphs, self._classify(graphs, excluded), excluded, empty)
                by_name = {n.name: n for g in graphs for n in g.nodes}
                for name in kept:
                    excluded[id(by_name[name])] = "kept float by sensitivity"
        del proto

        qparams = self._qparams(plan, stats_by_name)
        stats = self._rewrite(graphs, plan, qparams, excluded)
        stats.update(sens_stats)
        stats["matmul_add_to_gemm"] = fused
        stats["equalized_pairs"] = equalized
        stats["embedding_tables_int8"] = len(embeddings)
        stats["embedding_bytes_saved"] = sum(embeddings.values())
        return stats

    def _drop_unreached(self, graphs, plan: _Plan, excluded: dict[int, str], empty: set[str]) -> _Plan:
        while empty & set(plan.qtensors):
            for name in empty & set(plan.qtensors):
                for nid in plan.touch.get(name, ()):
                    excluded[nid] = "no calibration data reached it"
            plan = self._classify(graphs, excluded)
        return plan

    # -------------------------------------------------------- sensitivity
    def _trial(self, base: onnx.ModelProto, stats_by_name, empty: set[str], exclude: Iterable[str], fp32_layers: Iterable[str] = ()):
        """Quantize a copy of ``base`` (the float model after the pre-quantization
        rewrites) with ``exclude`` kept float, from the captured statistics; with
        ``float_layer_weights="int8"`` those layers get weight-only int8 weights,
        except ``fp32_layers``.

        Returns:
            ``(qdq proto, GateSpec)``.
        """
        from .sensitivity import GateSpec

        saved = (self._cfg, self._model, self._graph_of, self._graph_outputs, self.report, self._act_dq, self._weight_dq, getattr(self, "_excluded_final", None))
        saved_fp32 = getattr(self, "_fp32_layers", set())
        try:
            self._fp32_layers = set(fp32_layers)
            m = Model.from_proto(base)
            self._cfg = self._cfg.replace(exclude_nodes=tuple(self._cfg.exclude_nodes) + tuple(exclude))
            self._model, self.report, self._act_dq, self._weight_dq = m, [], {}, {}
            graphs = list(iter_graphs(m.graph, functions=False))
            self._graph_of = {id(n): g for g in graphs for n in g.nodes}
            self._graph_outputs = {id(t) for g in graphs for t in g.outputs}
            excluded: dict[int, str] = {}
            plan = self._drop_unreached(graphs, self._classify(graphs, excluded), excluded, empty)
            qparams = self._qparams(plan, stats_by_name)
            key: dict[int, str] = {}
            units, ops, optional = [], {}, {}
            for g in graphs:
                for node in g.nodes:
                    kind = plan.qnodes.get(id(node))
                    if kind is None:
                        continue
                    if kind == "compute":
                        key[id(node)] = node.name
                        units.append(node.name)
                        ops[node.name] = node.op
                    else:
                        key[id(node)] = f"#optional{len(optional)}"
                        optional[key[id(node)]] = [t.name for t in self._act_inputs(node, kind)]
            touch = {t: [key[i] for i in ids if i in key] for t, ids in plan.touch.items() if t in plan.qtensors}
            self._rewrite(graphs, plan, qparams, excluded)
            spec = GateSpec(dict(self._act_dq), dict(self._weight_dq), units, ops, touch, optional)
            return m.to_proto(external=True), spec
        finally:
            (self._cfg, self._model, self._graph_of, self._graph_outputs, self.report, self._act_dq, self._weight_dq, ef) = saved
            self._fp32_layers = saved_fp32
            if ef is not None:
                self._excluded_final = ef

    def _sensitivity(self, base: onnx.ModelProto, stats_by_name, empty: set[str], ctx: Context, budget) -> tuple[list[str], dict[str, int | float]]:
        """Rank the compute QNodes, and choose those to keep float for ``budget``
        (see :mod:`onnxpress.quant.sensitivity`)."""
        import time

        from ..runtime_check import make_session
        from .sensitivity import format_table, gated_model, noise_ratio, output_error

        start = time.perf_counter()
        self._sens_fp32_layers: list[str] = []
        feeds = [dict(f) for f in itertools.islice(iter(ctx.calibration), max(1, int(self.sensitivity_samples)))]
        outputs = [o.name for o in base.graph.output]
        points = _measure_points(base)
        n_out = len(outputs)

        def session(m: onnx.ModelProto, level: str):
            m = _with_outputs(m, points)
            sess = make_session(m, level)
            return lambda f: sess.run(outputs + points, f)

        run_ref = session(base, "enabled")
        ref_all = [run_ref(f) for f in feeds]
        ref, ref_out = [r[n_out:] for r in ref_all], [r[:n_out] for r in ref_all]
        del run_ref
        q_full, spec = self._trial(base, stats_by_name, empty, ())
        units = spec.units
        wo = self.float_layer_weights == "int8"
        gm, gate_names = gated_model(q_full, spec)
        sess = session(gm, "enabled")  # no fusion crosses a gate; enabled is 2-3x faster
        del gm

        def run_gated(_sess, feeds, gate_names, gates):
            g = {n: np.array(1.0 if gates.get(n, False) else 0.0, dtype=np.float32) for n in gate_names}
            return [sess({**f, **g})[n_out:] for f in feeds]
        t_setup = time.perf_counter() - start
        base_snr = output_error(ref, run_gated(sess, feeds, gate_names, spec.gates(())))[0]
        all_snr, all_cos = output_error(ref, run_gated(sess, feeds, gate_names, spec.gates(units)))
        base_noise = noise_ratio(base_snr)
        logger.info(
            "quantize-int8: simulated output SNR %.1f dB with nothing quantized (what is quantized anyway), "
            "%.1f dB (cosine %.5f) with every layer quantized; setup %.1f s",
            base_snr, all_snr, all_cos, t_setup,
        )
        rows = []
        for u in units:
            snr_u, cos_u = output_error(ref, run_gated(sess, feeds, gate_names, spec.gates([u])))
            contrib = max(noise_ratio(snr_u) - base_noise, 0.0)
            rows.append({"node": u, "op": spec.ops[u], "snr_db": snr_u, "cosine": cos_u, "noise": contrib})
        rows.sort(key=lambda r: -r["noise"])
        total = sum(r["noise"] for r in rows if np.isfinite(r["noise"])) or 1.0
        for r in rows:
            r["share"] = r["noise"] / total if np.isfinite(r["noise"]) else 1.0
        self.sensitivity_table = rows
        logger.info(
            "quantize-int8: sensitivity of %d quantized layers on %d calibration samples "
            "(output SNR with only that layer quantized, share of the summed noise):\n%s",
            len(rows), len(feeds), format_table(rows),
        )
        stats: dict[str, int | float] = {"sensitivity_layers": len(rows)}
        kept: list[str] = []
        if budget.active:
            order = [r["node"] for r in rows]
            cap = max(0, min(len(order), int(np.floor(self.max_float_fraction * len(order)))))
            all_units = set(units)

            def judge(outs, model_outs=None) -> tuple[bool, float, float, float | None]:
                snr, cos = output_error(ref, outs)
                mv = None
                if budget.metric is not None and model_outs is not None:
                    mv = float(budget.metric(ref_out, model_outs))
                return budget.met(snr, cos, mv), snr, cos, mv

            # A kept layer is float with weight-only int8 weights ("W") unless
            # float_layer_weights="fp32" or its weights are small (fp32 costs nothing
            # there): fp32 weights ("F").
            w_size: collections.Counter[str] = collections.Counter()
            for owner, w in spec.weight_dq.values():
                w_size[owner] += int(np.size(w))
            w_noise: dict[str, float] = {}

            def weight_noise(u: str) -> float:
                if u not in w_noise:
                    snr_w = output_error(ref, run_gated(sess, feeds, gate_names, spec.gates((), [u])))[0]
                    w_noise[u] = max(noise_ratio(snr_w) - base_noise, 0.0)
                return w_noise[u]

            fp32_w: list[str] = []  # kept units with fp32 weights

            def state(u: str) -> str:
                return "F" if (not wo or w_size[u] <= _SMALL_WEIGHT or u in fp32_w) else "W"

            def weights_on(kept: list[str]) -> list[str]:
                return [u for u in kept if state(u) == "W"]

            def fp32_of(kept: list[str]) -> list[str]:
                return [u for u in kept if state(u) == "F"] if wo else []

            # Greedy on the simulated (gated) model: cheap, one run per sample and step
            # (the user metric, which needs the model's outputs, is judged on the written model).
            # When even the additive prediction misses the budget at the cap, go straight there.
            predicted = noise_ratio(all_snr) - sum(r["noise"] for r in rows[:cap] if np.isfinite(r["noise"]))
            if budget.snr_db is not None and predicted > noise_ratio(budget.snr_db):
                kept = order[:cap]
            while len(kept) < cap:
                ok_sim, snr_sim, _, _ = judge(run_gated(sess, feeds, gate_names, spec.gates(all_units - set(kept), weights_on(kept))))
                if ok_sim and (budget.snr_db is not None or budget.cosine is not None):
                    break
                if budget.snr_db is None and budget.cosine is None:
                    break
                kept.append(order[len(kept)])
            def judge_written(kept: list[str]) -> tuple[bool, float, float, float | None]:
                """The budget on the written model, in onnxruntime with its int8 kernels."""
                q, _ = self._trial(base, stats_by_name, empty, kept, fp32_of(kept)) if kept else (q_full, spec)
                run_q = session(q, "enabled")
                got = [run_q(f) for f in feeds]
                return judge([g[n_out:] for g in got], [g[:n_out] for g in got])

            # Then the written model.
            while True:
                ok, snr, cos, mv = judge_written(kept)
                if ok or len(kept) >= cap:
                    break
                kept.append(order[len(kept)])
            if not ok and wo and weights_on(kept):
                # Still missed at the cap: the kept layers' int8 weights cost too much.
                # If fp32 weights for all of them meet the budget (the written model),
                # revert the fewest, the largest weight-only error per weight first
                # (what fp32 buys per byte; a bisection on the written model);
                # otherwise they keep int8 weights.
                w_order = sorted(weights_on(kept), key=lambda u: -weight_noise(u) / max(w_size[u], 1))
                missed = (ok, snr, cos, mv)
                tried: dict[int, tuple] = {0: missed}

                def written(n: int) -> tuple:
                    if n not in tried:
                        fp32_w[:] = w_order[:n]
                        tried[n] = judge_written(kept)
                    return tried[n]

                if written(len(w_order))[0]:
                    lo, hi = 0, len(w_order)
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if written(mid)[0]:
                            hi = mid
                        else:
                            lo = mid + 1
                    ok, snr, cos, mv = written(hi)
                    fp32_w[:] = w_order[:hi]
                else:
                    logger.info("quantize-int8: fp32 weights for the kept layers would not meet the budget either; they keep int8 weights")
                    del fp32_w[:]
                    ok, snr, cos, mv = missed
            fp32_w = fp32_of(kept)
            if wo:
                logger.info(
                    "quantize-int8: kept layers with int8 weights: %s; with fp32 weights: %s",
                    weights_on(kept), fp32_w,
                )
            self._sens_fp32_layers = fp32_w
            if not ok:
                logger.warning(
                    "quantize-int8: the budget (%s) is not met with %d of %d layers kept float "
                    "(max_float_fraction=%g): output SNR %.1f dB, cosine %.5f%s",
                    budget.describe(), len(kept), len(order), self.max_float_fraction, snr, cos,
                    "" if mv is None else f", metric {mv:.4g}",
                )
            logger.info(
                "quantize-int8: budget %s: %d layer(s) kept float %s; output SNR %.1f dB, cosine %.6f%s on calibration data",
                budget.describe(), len(kept), kept, snr, cos, "" if mv is None else f", metric {mv:.4g}",
            )
            stats.update(
                sensitivity_kept_float=len(kept),
                sensitivity_fp32_weights=len(fp32_w),
                sensitivity_snr_db=float(min(snr, 999.0)),
                sensitivity_cosine=float(cos),
                sensitivity_budget_met=int(ok),
            )
            if mv is not None:
                stats["sensitivity_metric"] = mv
        stats["sensitivity_seconds"] = time.perf_counter() - start
        return kept, stats

    def _choose_target_weights(self, proto, stats_by_name, empty, ctx, budget, graphs, target_nodes, kept, sens_stats):
        """The budget was met (or tried) with int8 weights for the target-rule layers
        but had to give other kept layers fp32 weights: try again with fp32 weights
        for the target-rule layers, and keep whichever meets the budget with fewer
        fp32 weight elements (int8 weights first on a tie)."""
        by_name = {n.name: n for g in graphs for n in g.nodes}

        def fp32_elements(fp32_layers, target_fp32: bool) -> int:
            nodes = [by_name[u] for u in fp32_layers if u in by_name] + (target_nodes if target_fp32 else [])
            return sum(self._weight_elements(n) for n in nodes)

        first = (kept, sens_stats, list(self._sens_fp32_layers), getattr(self, "sensitivity_table", None))
        self._target_int8_weights = False
        kept2, stats2 = self._sensitivity(proto, stats_by_name, empty, ctx, budget)
        second = (kept2, stats2, list(self._sens_fp32_layers), getattr(self, "sensitivity_table", None))
        met1, met2 = sens_stats.get("sensitivity_budget_met", 0), stats2.get("sensitivity_budget_met", 0)
        cost1, cost2 = fp32_elements(first[2], False), fp32_elements(second[2], True)
        use_second = (met2 and not met1) or (met2 == met1 and cost2 < cost1)
        logger.info(
            "quantize-int8: depthwise/ConvTranspose layers with int8 weights: budget %s, %d fp32 weight elements; "
            "with fp32 weights: budget %s, %d; using %s",
            "met" if met1 else "missed", cost1, "met" if met2 else "missed", cost2,
            "fp32 weights" if use_second else "int8 weights",
        )
        chosen = second if use_second else first
        self._target_int8_weights = not use_second
        self._sens_fp32_layers, self.sensitivity_table = chosen[2], chosen[3]
        stats = dict(chosen[1])
        stats["sensitivity_seconds"] = sens_stats.get("sensitivity_seconds", 0) + stats2.get("sensitivity_seconds", 0)
        stats["sensitivity_target_fp32_weights"] = len(target_nodes) if use_second else 0
        return chosen[0], stats

    def _weight_indices(self, node: gs.Node) -> list[int]:
        """The inputs of a compute node that are constant float weights: either
        MatMul operand, the weight (input 1) of Conv/ConvTranspose/Gemm."""
        if node.op == "MatMul":
            idx = [0, 1]
        elif node.op in ("Conv", "ConvTranspose", "Gemm"):
            idx = [1]
        else:
            return []
        return [i for i in idx if len(node.inputs) > i and self._is_weight(node.inputs[i]) and node.inputs[i].shape]

    def _weight_elements(self, node: gs.Node) -> int:
        """Number of constant float weight elements a compute node reads."""
        return sum(int(np.prod(node.inputs[i].shape)) for i in self._weight_indices(node))

    def _matmul_add_to_gemm(self, graphs: list[gs.Graph]) -> int:
        """``MatMul(x [M, K], W [K, N])`` + ``Add(bias [N] or [1, N])`` -> ``Gemm``.

        onnxruntime's MatMulAddFusion turns that pair into a float Gemm *before*
        its QDQ fusions, leaving the quantized MatMul in float; a Gemm with an
        int32 bias becomes QGemm instead. Only for a 2-D ``x`` (known rank), a
        MatMul output read by that Add alone, and quantizable MatMuls.
        """
        cfg = self._cfg
        if not (cfg.quantizes("MatMul") and cfg.quantizes("Gemm")):
            return 0
        fused = 0
        for g in graphs:
            dead: set[int] = set()
            for node in g.nodes:
                if node.op != "MatMul" or node.domain not in _DEFAULT_DOMAINS or not cfg.quantizes("MatMul", node.name):
                    continue
                x, w = node.inputs[0], node.inputs[1]
                y = node.outputs[0]
                tx = self._types.get(x.name)
                if not self._is_weight(w) or self._model.is_constant(x) or tx is None or tx.shape is None or len(tx.shape) != 2:
                    continue
                if len(w.shape) != 2 or len(y.outputs) != 1 or id(y) in self._graph_outputs:
                    continue
                add = y.outputs[0]
                if add.op != "Add" or add.domain not in _DEFAULT_DOMAINS or self._graph_of.get(id(add)) is not g:
                    continue
                other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
                if other is y or not self._is_weight(other):
                    continue
                n = int(w.shape[1])
                b = constant_array(other)
                if b.size not in (1, n) or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1):
                    continue
                bias = np.broadcast_to(b.reshape(-1), (n,)).astype(np.float32)
                out = add.outputs[0]
                c = gs.Constant(self.names(self._model).new(f"{other.name}_gemm_bias"), np.ascontiguousarray(bias))
                add.inputs.clear()
                add.outputs.clear()
                dead.add(id(add))
                node.op = "Gemm"
                node.inputs.append(c)
                node.outputs[0] = out
                fused += 1
            if dead:
                g.nodes = [n for n in g.nodes if id(n) not in dead]
        if fused:
            logger.debug("quantize-int8: %d MatMul+Add pairs became Gemm", fused)
        return fused

    def _equalize(self, graphs: list[gs.Graph]) -> int:
        """Cross-layer equalization (Nagel et al., "Data-Free Quantization Through
        Weight Equalization and Bias Correction", ICCV 2019) of ``Conv -> [Relu] -> Conv``.

        Output channel ``c`` of the first Conv is divided by
        ``s_c = sqrt(r1_c * r2_c) / r2_c`` and input channel ``c`` of the second
        multiplied by it (``r1``/``r2``: the channel's weight ranges), which is exact
        in fp32 because Relu is positively homogeneous. Both weight ranges become
        ``sqrt(r1_c * r2_c)``, and so do the channel ranges of the tensor between
        them: a per-tensor activation scale no longer wipes out channels that the
        next layer amplifies (PP-OCR det's first Conv -> depthwise Conv: IoU
        0.66 -> see benchmarks/quant.py). Only for a first-Conv output read by the
        pair alone, constant weights and group 1 (first) and 1 or depthwise (second).
        """
        model = self._model
        names = self.names(model)
        pairs = 0
        for g in graphs:
            for a in list(g.nodes):
                if a.op != "Conv" or a.domain not in _DEFAULT_DOMAINS or len(a.inputs) < 2:
                    continue
                if not self._is_weight(a.inputs[1]) or int(a.attrs.get("group", 1)) != 1:
                    continue
                t = a.outputs[0]
                if len(t.outputs) != 1 or id(t) in self._graph_outputs:
                    continue
                mid = t.outputs[0]
                relu = None
                if mid.op == "Relu" and mid.domain in _DEFAULT_DOMAINS:
                    relu = mid
                    t2 = mid.outputs[0]
                    if len(t2.outputs) != 1 or id(t2) in self._graph_outputs:
                        continue
                    b = t2.outputs[0]
                else:
                    b = mid
                if b.op != "Conv" or b.domain not in _DEFAULT_DOMAINS or len(b.inputs) < 2 or not self._is_weight(b.inputs[1]):
                    continue
                if self._graph_of.get(id(b)) is not g:
                    continue
                w1 = constant_array(a.inputs[1]).astype(np.float64)
                w2 = constant_array(b.inputs[1]).astype(np.float64)
                c = w1.shape[0]
                group = int(b.attrs.get("group", 1))
                if group == 1 and w2.shape[1] == c:
                    r2 = np.abs(w2).swapaxes(0, 1).reshape(c, -1).max(axis=1)
                elif group == c and w2.shape[0] == c and w2.shape[1] == 1:
                    r2 = np.abs(w2).reshape(c, -1).max(axis=1)
                else:
                    continue
                r1 = np.abs(w1).reshape(c, -1).max(axis=1)
                ok = (r1 > 0) & (r2 > 0)
                s = np.ones(c)
                s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
                s = np.clip(s, 1e-4, 1e4)
                if np.allclose(s, 1.0, rtol=0.05):
                    continue
                k = (1,) * (w1.ndim - 1)
                a.inputs[1] = gs.Constant(names.new(f"{a.inputs[1].name}_equalized"), (w1 / s.reshape((c,) + k)).astype(np.float32))
                if len(a.inputs) > 2 and a.inputs[2].name:
                    if not self._is_weight(a.inputs[2]):
                        continue
                    b1 = constant_array(a.inputs[2]).astype(np.float64)
                    a.inputs[2] = gs.Constant(names.new(f"{a.inputs[2].name}_equalized"), (b1 / s).astype(np.float32))
                if group == 1:
                    w2n = w2 * s.reshape((1, c) + (1,) * (w2.ndim - 2))
                else:
                    w2n = w2 * s.reshape((c,) + (1,) * (w2.ndim - 1))
                b.inputs[1] = gs.Constant(names.new(f"{b.inputs[1].name}_equalized"), w2n.astype(np.float32))
                pairs += 1
                del relu
        if pairs:
            logger.debug("quantize-int8: equalized %d Conv pairs", pairs)
        return pairs

    def _is_act(self, t: gs.Tensor) -> bool:
        """A float32 activation that can be calibrated."""
        if not isinstance(t, gs.Variable) or not t.name or t.name not in self._capturable:
            return False
        tt = self._types.get(t.name)
        dtype = tt.dtype if tt is not None and tt.dtype is not None else t.dtype
        try:
            return dtype is not None and np.dtype(dtype) in _FLOAT
        except TypeError:
            return False

    def _is_weight(self, t: gs.Tensor) -> bool:
        return self._model.is_constant(t) and np.dtype(t.dtype) in _FLOAT

    def _absorbable(self, node: gs.Node) -> gs.Node | None:
        """The Relu/Clip(min >= 0) that is the only reader of ``node``'s output."""
        t = node.outputs[0]
        if len(t.outputs) != 1 or id(t) in self._graph_outputs:
            return None
        r = t.outputs[0]
        if r.domain not in _DEFAULT_DOMAINS or self._graph_of.get(id(r)) is not self._graph_of.get(id(node)):
            return None
        if r.op == "Relu":
            return r
        if r.op == "Clip":
            lo = None
            if len(r.inputs) > 1 and r.inputs[1].name:
                if self._model.is_constant(r.inputs[1]):
                    lo = float(constant_array(r.inputs[1]))
            elif "min" in r.attrs:
                lo = float(r.attrs["min"])
            if lo is not None and lo >= 0:
                return r
        return None

    def _classify(self, graphs: list[gs.Graph], excluded: dict[int, str]) -> _Plan:
        """QNodes and quantized tensors, pruning optional QNodes whose output no
        QNode reads until nothing changes."""
        cfg = self._cfg
        excluded_local = dict(excluded)
        while True:
            plan = _Plan()
            avail: set[str] = set()  # tensors whose quantized value is available
            for g in graphs:
                for node in g.nodes:
                    if id(node) in excluded_local or node.domain not in _DEFAULT_DOMAINS:
                        continue
                    if not node.outputs or not cfg.quantizes(node.op, node.name):
                        continue
                    why = self._target_reason(node)
                    if why:  # depthwise / ConvTranspose rules of the target
                        excluded_local[id(node)] = why
                        continue
                    kind = self._kind(node, avail)
                    if kind is None:
                        continue
                    out = node.outputs[0]
                    absorbed = self._absorbable(node) if kind in ("compute", "binary") else None
                    if absorbed is not None and self._is_act(absorbed.outputs[0]):
                        out = absorbed.outputs[0]
                    else:
                        absorbed = None
                    if not self._is_act(out):
                        continue
                    plan.qnodes[id(node)] = kind
                    if absorbed is not None:
                        plan.absorbed[id(node)] = absorbed
                    plan.out[id(node)] = out
                    plan.touch.setdefault(out.name, []).append(id(node))
                    for t in self._act_inputs(node, kind):
                        plan.qtensors[t.name] = t
                        plan.touch.setdefault(t.name, []).append(id(node))
                    avail.add(out.name)
            # Prune optional QNodes that no QNode reads.
            readers_q = self._readers_are_q(plan)
            pruned = False
            for g in graphs:
                for node in g.nodes:
                    kind = plan.qnodes.get(id(node))
                    if kind is None or kind == "compute":
                        continue
                    if not readers_q(plan.out[id(node)]):
                        excluded_local[id(node)] = "no quantized reader"
                        pruned = True
            if not pruned:
                break
        # Outputs quantized at the producer: every QNode but float-output MatMul/Gemm.
        for g in graphs:
            for node in g.nodes:
                kind = plan.qnodes.get(id(node))
                if kind is None:
                    continue
                out = plan.out[id(node)]
                if kind == "compute" and node.op in ("MatMul", "Gemm") and not readers_q(out):
                    continue
                plan.produced.add(out.name)
                plan.qtensors[out.name] = out
        self._excluded_final = excluded_local
        return plan

    def _readers_are_q(self, plan: _Plan):
        def any_q_reader(t: gs.Tensor) -> bool:
            return any(id(r) in plan.qnodes for r in t.outputs)

        return any_q_reader

    def _kind(self, node: gs.Node, avail: set[str]) -> str | None:
        """The QNode kind of ``node`` given the quantized tensors so far, or None."""
        op = node.op
        ins = [t for t in node.inputs]
        if op in COMPUTE_OPS:
            if len(ins) < 2:
                return None
            x, w = ins[0], ins[1]
            if op == "MatMul":
                acts = [t for t in (x, w) if not self._model.is_constant(t)]
                consts = [t for t in (x, w) if self._model.is_constant(t)]
                if not acts or not all(self._is_act(t) for t in acts):
                    return None
                if consts and not all(self._is_weight(t) for t in consts):
                    return None
                if not consts and not self.quantize_activation_matmul:
                    return None
                return "compute"
            if not self._is_act(x):
                return None
            if op == "Gemm":
                if not (self._is_weight(w) or self._is_act(w)):
                    return None
                return "compute"
            if not self._is_weight(w):
                return None
            return "compute"
        if op in ELEMENTWISE_OPS:
            if len(ins) == 2 and all(self._is_act(t) and t.name in avail for t in ins) and ins[0] is not ins[1]:
                return "binary"
            return None
        if op == "Concat":
            if ins and all(self._is_act(t) and t.name in avail for t in ins):
                return "concat"
            return None
        if op in SAME_SCALE_OPS or op in OWN_SCALE_OPS or op in PASS_THROUGH_OPS:
            if ins and self._is_act(ins[0]) and ins[0].name in avail and self._is_act(node.outputs[0]):
                if op in OWN_SCALE_OPS:
                    return "own"
                return "same"
            return None
        return None

    def _act_inputs(self, node: gs.Node, kind: str) -> list[gs.Tensor]:
        if kind == "compute":
            if node.op == "MatMul" or node.op == "Gemm":
                return [t for t in node.inputs[:2] if not self._model.is_constant(t)]
            return [node.inputs[0]]
        if kind in ("binary", "concat"):
            return list(node.inputs)
        return [node.inputs[0]]

    # ------------------------------------------------------------ qparams
    def _qparams(self, plan: _Plan, stats: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Scale and zero point (numpy scalars) per quantized tensor name."""
        cfg = self._cfg
        uf = _UnionFind()
        for name in plan.qtensors:
            uf.find(name)
        for t in list(plan.qtensors.values()):
            for node in t.inputs:  # the producer
                kind = plan.qnodes.get(id(node))
                if kind == "same":
                    uf.union(node.inputs[0].name, plan.out[id(node)].name)
                elif kind == "concat":
                    for i in node.inputs:
                        uf.union(i.name, plan.out[id(node)].name)
        groups: dict[str, list[str]] = collections.defaultdict(list)
        for name in plan.qtensors:
            groups[uf.find(name)].append(name)
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for members in groups.values():
            dtype, symmetric = cfg.activation_dtype, cfg.symmetric_activations
            lo, hi = np.inf, -np.inf
            fixed = None
            for name in members:
                o = cfg.overrides.get(name, {})
                if int(o.get("bits", 8)) == 16:
                    dtype = "int16" if (o.get("symmetric", dtype == "int16")) else "uint16"
                if "symmetric" in o:
                    symmetric = bool(o["symmetric"])
                if "min" in o or "max" in o:
                    fixed = (float(o.get("min", 0.0)), float(o.get("max", 0.0)))
            qmin, qmax = qrange(dtype, symmetric and dtype.startswith("int"))
            for name in members:
                c = stats.get(name)
                if c is None or _empty(c):
                    continue
                a, b = _collector_range(c, cfg.method, cfg.percentile, qmin, qmax, symmetric)
                lo, hi = min(lo, a), max(hi, b)
            if fixed is not None:
                lo, hi = fixed
            if not np.isfinite(lo) or not np.isfinite(hi):
                lo, hi = 0.0, 0.0
            scale, zp = activation_qparams(lo, hi, qmin, qmax, symmetric)
            zpa = np.array(zp, dtype=_np_dtype(dtype))
            for name in members:
                out[name] = (np.array(scale, dtype=np.float32), zpa)
        return out

    # ------------------------------------------------------------ rewrite
    def _rewrite(self, graphs, plan: _Plan, qparams, excluded: dict[int, str]) -> dict[str, int | float]:
        cfg = self._cfg
        model = self._model
        names = self.names(model)
        counts: collections.Counter[str] = collections.Counter()
        counts_wo: collections.Counter[str] = collections.Counter()
        kept: collections.Counter[str] = collections.Counter()
        wqmin, wqmax = qrange("int8", True, cfg.weight_bits)
        qp_consts: dict[tuple[str, ...], tuple[gs.Constant, gs.Constant]] = {}
        weight_cache: dict[tuple, gs.Variable] = {}
        use_ms = any(zp.dtype.itemsize == 2 for _, zp in qparams.values()) and model.opset < 21

        def qp_const(name: str) -> tuple[gs.Constant, gs.Constant]:
            scale, zp = qparams[name]
            key = (scale.tobytes(), zp.tobytes(), str(zp.dtype))
            if key not in qp_consts:
                qp_consts[key] = (
                    gs.Constant(names.new(f"{name}_scale"), scale),
                    gs.Constant(names.new(f"{name}_zero_point"), zp),
                )
            return qp_consts[key]

        def qdq_nodes(src: gs.Tensor, dst: gs.Tensor, name: str) -> list[gs.Node]:
            s, z = qp_const(name)
            dom = _MS if (z.values.dtype.itemsize == 2 and use_ms) else None
            q_out = gs.Variable(names.new(f"{name}_quantized"), dtype=z.values.dtype, shape=src.shape)
            qn = gs.Node("QuantizeLinear", names.new(f"{name}_QuantizeLinear"), inputs=[src, s, z], outputs=[q_out])
            dqn = gs.Node("DequantizeLinear", names.new(f"{name}_DequantizeLinear"), inputs=[q_out, s, z], outputs=[dst])
            self._act_dq[dqn.name] = name
            if dom:
                qn.domain = dqn.domain = dom
            return [qn, dqn]

        for g in graphs:
            head: list[gs.Node] = []
            after: dict[int, list[gs.Node]] = collections.defaultdict(list)
            producer_in_g = {id(n) for n in g.nodes}
            dq_cache: dict[str, gs.Tensor] = {}

            def place(t: gs.Tensor, nodes: list[gs.Node]) -> None:
                prod = t.inputs[0] if t.inputs else None
                if prod is not None and id(prod) in producer_in_g:
                    after[id(prod)].extend(nodes)
                else:
                    head.extend(nodes)

            def dq_input(t: gs.Tensor) -> gs.Tensor:
                """The tensor a QNode of ``g`` reads for activation ``t``."""
                if t.name in plan.produced:
                    return t  # already the output of its DequantizeLinear
                if t.name not in dq_cache:
                    dst = gs.Variable(names.new(f"{t.name}_dequantized"), dtype=t.dtype, shape=t.shape)
                    place(t, qdq_nodes(t, dst, t.name))
                    dq_cache[t.name] = dst
                return dq_cache[t.name]

            for node in list(g.nodes):
                kind = plan.qnodes.get(id(node))
                if kind is None:
                    why = self._excluded_final.get(id(node)) or excluded.get(id(node))
                    if node.op == "LSTM" and node.domain in _DEFAULT_DOMAINS:
                        why = self._quantize_lstm(g, node, names, head, wqmin, wqmax) if cfg.quantize_lstm else "quantize_lstm is off"
                        if why is None:
                            counts["LSTM"] += 1
                            continue
                    if node.op in COMPUTE_OPS or node.op == "LSTM":
                        why = why or (
                            "excluded" if not cfg.quantizes(node.op, node.name) else "input is not a calibrated float activation or weight"
                        )
                        if node.op in COMPUTE_OPS and self._weight_only_applies(node):
                            if self._weight_only(node, names, head, weight_cache):
                                counts_wo[node.op] += 1
                                why = f"{why}; int8 weights"
                        kept[why] += 1
                        self.report.append((node.name, node.op, why))
                        logger.debug("quantize-int8: %s (%s) kept float: %s", node.name, node.op, why)
                    continue
                # Inputs.
                x_name = node.inputs[0].name
                acts = {id(t) for t in self._act_inputs(node, kind)}
                for i, t in enumerate(list(node.inputs)):
                    if id(t) in acts and t.name in plan.qtensors:
                        node.inputs[i] = dq_input(t)
                if kind == "compute":
                    x_scale = float(qparams[x_name][0]) if x_name in qparams else None
                    self._quantize_weights(node, x_scale, names, head, weight_cache, wqmin, wqmax)
                # Output.
                out = plan.out[id(node)]
                if out.name in plan.produced:
                    src_node = plan.absorbed.get(id(node), node)
                    pre = gs.Variable(names.new(f"{out.name}_prequant"), dtype=out.dtype, shape=out.shape)
                    idx = next(i for i, o in enumerate(src_node.outputs) if o is out)
                    src_node.outputs[idx] = pre
                    after[id(src_node)].extend(qdq_nodes(pre, out, out.name))
                counts[node.op] += 1

            # Rebuild the node list in topological order.
            nodes = list(head)
            for node in g.nodes:
                nodes.append(node)
                nodes.extend(after.get(id(node), ()))
            g.nodes = nodes

        stats: dict[str, int | float] = {"quantized": sum(counts.values()), "kept_float": sum(kept.values())}
        stats.update({f"quantized_{k}": v for k, v in sorted(counts.items())})
        stats.update({f"float_{_slug(k)}": v for k, v in sorted(kept.items())})
        stats["weight_only_int8"] = sum(counts_wo.values())
        stats.update({f"weight_only_int8_{k}": v for k, v in sorted(counts_wo.items())})
        return stats

    def _quantize_weights(self, node, x_scale, names, head, cache, wqmin, wqmax) -> None:
        """int8 weight (+ int32 bias) for a compute QNode."""
        cfg = self._cfg
        model = self._model
        op = node.op
        if op == "MatMul":
            for i in (0, 1):
                w_t = node.inputs[i]
                if model.is_constant(w_t):
                    w = constant_array(w_t)
                    axis = weight_axis(node, w) if (i == 1 and cfg.per_channel) else None
                    node.inputs[i] = self._dq_weight(w_t, w, axis, None, names, head, cache, wqmin, wqmax, node.name)
            return
        w_t = node.inputs[1]
        if not model.is_constant(w_t):
            return  # Gemm with an activation B (quantized as an activation)
        w = constant_array(w_t)
        bias_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if op == "Gemm":
            alpha = float(node.attrs.get("alpha", 1.0))
            beta = float(node.attrs.get("beta", 1.0))
            if alpha != 1.0:
                w = (w.astype(np.float64) * alpha).astype(w.dtype)
                node.attrs["alpha"] = 1.0
            bias = None
            if bias_t is not None and model.is_constant(bias_t):
                c = constant_array(bias_t).astype(np.float64) * beta
                n = w.shape[0] if int(node.attrs.get("transB", 0)) else w.shape[1]
                if c.size in (1, n) and (c.ndim <= 1 or (c.ndim == 2 and c.shape[0] == 1)):
                    bias = np.broadcast_to(c.reshape(-1), (n,)).copy()
                elif beta != 1.0:
                    node.inputs[2] = gs.Constant(names.new(f"{bias_t.name}_beta"), c.astype(np.float32))
                node.attrs["beta"] = 1.0
        else:
            bias = constant_array(bias_t).astype(np.float64) if bias_t is not None and model.is_constant(bias_t) else None
        axis = weight_axis(node, w) if cfg.per_channel else None
        scale = weight_scales(w, axis, wqmax)
        group = int(node.attrs.get("group", 1)) if op == "ConvTranspose" else 1
        if bias is not None and x_scale is not None:
            # Overflow guard: raise the weight scale of channels whose bias would not fit.
            per_out = np.tile(scale, group) if (axis is not None and group > 1) else scale
            need = np.abs(bias) / (x_scale * _BIAS_LIMIT)
            if axis is None:
                need_s = float(need.max()) if need.size else 0.0
                if need_s > float(scale):
                    scale = np.array(need_s * 1.001, dtype=np.float32)
            else:
                need_c = need.reshape(group, -1).max(axis=0) if group > 1 else need
                if np.any(need_c > scale):
                    logger.debug("quantize-int8: %s: raising %d weight scales for the int32 bias", node.name, int(np.sum(need_c > scale)))
                    scale = np.maximum(scale, (need_c * 1.001).astype(np.float32))
            del per_out
        node.inputs[1] = self._dq_weight(w_t, w, axis, scale, names, head, cache, wqmin, wqmax, node.name)
        if bias is not None and x_scale is not None:
            bscale = (np.tile(scale, group) if group > 1 and axis is not None else scale).astype(np.float64) * x_scale
            if axis is None:
                bscale = np.full(bias.shape, float(scale) * x_scale)
            bq = quantize_bias(bias, bscale)
            base = bias_t.name
            bq_t = gs.Constant(names.new(f"{base}_quantized"), bq)
            bs_t = gs.Constant(names.new(f"{base}_scale"), bscale.astype(np.float32))
            bz_t = gs.Constant(names.new(f"{base}_zero_point"), np.zeros(bq.shape, np.int32))
            out = gs.Variable(names.new(f"{base}_dequantized"), dtype=np.float32, shape=list(bq.shape))
            head.append(
                gs.Node("DequantizeLinear", names.new(f"{base}_DequantizeLinear"), attrs={"axis": 0}, inputs=[bq_t, bs_t, bz_t], outputs=[out])
            )
            node.inputs[2] = out

    def _dq_weight(self, w_t, w, axis, scale, names, head, cache, wqmin, wqmax, owner: str = "") -> gs.Variable:
        if scale is None:
            scale = weight_scales(w, axis, wqmax)
        key = (id(w_t), axis, np.asarray(scale).tobytes(), id(head))
        if key in cache:
            return cache[key]
        q, scale = quantize_weight(w, axis, wqmin, wqmax, scale)
        q_t = gs.Constant(names.new(f"{w_t.name}_quantized"), q)
        s_t = gs.Constant(names.new(f"{w_t.name}_scale"), np.asarray(scale, np.float32))
        z_t = gs.Constant(names.new(f"{w_t.name}_zero_point"), np.zeros(np.shape(scale), np.int8))
        out = gs.Variable(names.new(f"{w_t.name}_dequantized"), dtype=np.float32, shape=list(w.shape))
        attrs = {"axis": int(axis)} if axis is not None else {}
        dq = gs.Node("DequantizeLinear", names.new(f"{w_t.name}_DequantizeLinear"), attrs=attrs, inputs=[q_t, s_t, z_t], outputs=[out])
        head.append(dq)
        if getattr(self, "_keep_float_weights", True):
            self._weight_dq[dq.name] = (owner, w)
        cache[key] = out
        return out

    # ------------------------------------------------- weight-only, tables
    def _validate_options(self) -> None:
        """Raise :class:`InputError` on an invalid weight-only or embedding option."""
        if self.float_layer_weights not in ("int8", "fp32"):
            raise InputError(f"float_layer_weights {self.float_layer_weights!r}; valid: int8, fp32")
        if self.weight_only_rounding not in ("nearest", "gptq"):
            raise InputError(f"weight_only_rounding {self.weight_only_rounding!r}; valid: nearest, gptq")
        if self.embedding_tables not in ("int8", "fp32"):
            raise InputError(f"embedding_tables {self.embedding_tables!r}; valid: int8, fp32")
        if self.embedding_scale not in ("per-row", "per-tensor"):
            raise InputError(f"embedding_scale {self.embedding_scale!r}; valid: per-row, per-tensor")
        if int(self.embedding_min_elements) < 1:
            raise InputError(f"embedding_min_elements {self.embedding_min_elements} must be >= 1")

    def _weight_only_applies(self, node: gs.Node) -> bool:
        """Whether the float compute ``node`` gets weight-only int8 weights: the
        option is on, the user did not exclude the node (``exclude_nodes``,
        ``exclude_op_types``, ``op_types``), and the sensitivity budget did not
        revert it to fp32 weights. Layers the target rules keep float for speed
        (``depthwise``, ``conv_transpose``) get them too (the Cast/Mul form is
        folded when onnxruntime loads the model, so their fast float kernels
        stay), unless their int8 weights would make the sensitivity budget give
        more weight elements fp32 elsewhere (:meth:`_choose_target_weights`)."""
        if self.float_layer_weights != "int8":
            return False
        if node.name in self.exclude_nodes or node.op in self.exclude_op_types or node.op not in self.op_types:
            return False
        if self._target_reason(node) and not getattr(self, "_target_int8_weights", True):
            return False
        return node.name not in getattr(self, "_fp32_layers", ())

    def _target_reason(self, node: gs.Node) -> str | None:
        """Why ``node`` stays float by the target rules ``depthwise``/``conv_transpose``
        (:meth:`QuantConfig.target_float_reason`), or None."""
        if node.op not in ("Conv", "ConvTranspose") or node.domain not in _DEFAULT_DOMAINS or len(node.inputs) < 2:
            return None
        return self._cfg.target_float_reason(node.op, int(node.attrs.get("group", 1)), node.inputs[1].shape)

    def _weight_only(self, node: gs.Node, names, head: list[gs.Node], cache) -> bool:
        """Weight-only int8 for a compute node that stays float.

        Each constant float weight input ``W`` (float32, any rank) becomes a
        symmetric int8 initializer ``Q`` of the same shape (range ``[-127, 127]``:
        no integer kernel reads it, so the 7-bit restriction against
        ``vpmaddubsw`` saturation does not apply) with float32 scales ``S`` per
        output channel (:func:`weight_only_axis`; per tensor without
        ``per_channel``), stored with that axis kept and the others 1, and the
        float node reads ``Mul(Cast(Q, to=FLOAT), S)``, which equals
        ``DequantizeLinear(Q, S, 0)`` along the axis (ONNX DequantizeLinear-13:
        ``y = (x - zero_point) * scale``) bit for bit. Activations get no
        QuantizeLinear/DequantizeLinear and the bias stays float.

        Why Cast and Mul rather than DequantizeLinear: onnxruntime folds an
        all-constant Cast/Mul at session creation, so the float node sees a
        constant fp32 weight again and keeps its fast kernels (NCHWc Conv with
        fused activation, prepacked GEMM) at no per-run cost, whereas it never
        folds DequantizeLinear in a QDQ model (the weight would be dequantized on
        every run, and a Conv reading it loses NCHWc: PP-OCRv4 rec/det 7-18 %
        slower). The file keeps the int8 weights; ``fold-constants`` does not fold
        such a Cast (a Cast of a constant int8/int4 tensor to float is never folded).

        Returns:
            True when a weight was replaced.
        """
        replaced = False
        for i in self._weight_indices(node):
            w_t = node.inputs[i]
            if int(np.prod(w_t.shape)) < 2:
                continue
            w = constant_array(w_t)
            axis = weight_only_axis(node, i, w) if self.per_channel else None
            h = self._gram_for(node, i, w_t, axis)
            node.inputs[i] = self._decompressed_weight(w_t, w, axis, names, head, cache, h=h, owner=node)
            replaced = True
        return replaced

    def _decompressed_weight(self, w_t, w: np.ndarray, axis: int | None, names, head: list[gs.Node], cache, h: np.ndarray | None = None, owner: gs.Node | None = None) -> gs.Variable:
        """``Mul(Cast(Q, to=FLOAT), S)`` for the float weight ``w`` (see :meth:`_weight_only`),
        shared by every reader of the same weight. With the Gram ``h`` of
        ``owner``'s input features, ``Q`` is GPTQ-rounded (:meth:`_gptq_weight`)."""
        key = ("weight-only", id(w_t), axis, id(head))
        if key in cache:
            return cache[key]
        scale = weight_scales(w, axis, 127)
        if h is not None and owner is not None:
            q = self._gptq_weight(owner, w, h, np.asarray(scale, np.float64))
        else:
            q, scale = quantize_weight(w, axis, -127, 127, scale)
        shape = [1] * w.ndim
        if axis is not None:
            shape[axis] = w.shape[axis]
        q_t = gs.Constant(names.new(f"{w_t.name}_int8"), q)
        s_t = gs.Constant(names.new(f"{w_t.name}_scale"), np.asarray(scale, np.float32).reshape(shape))
        cast = gs.Variable(names.new(f"{w_t.name}_int8_float"), dtype=np.float32, shape=list(w.shape))
        out = gs.Variable(names.new(f"{w_t.name}_decompressed"), dtype=np.float32, shape=list(w.shape))
        head.append(gs.Node("Cast", names.new(f"{w_t.name}_Cast"), attrs={"to": int(onnx.TensorProto.FLOAT)}, inputs=[q_t], outputs=[cast]))
        head.append(gs.Node("Mul", names.new(f"{w_t.name}_scale_Mul"), inputs=[cast, s_t], outputs=[out]))
        cache[key] = out
        return out

    # ------------------------------------------------ GPTQ (weight-only)
    def _gptq_layout(self, node: gs.Node, w_shape: tuple) -> tuple[int, bool] | None:
        """For a node whose constant weight (input 1) is a matrix against its input
        features: ``(feature axis of input 0, weight is [out, in])``; else None."""
        if node.domain not in _DEFAULT_DOMAINS or len(node.inputs) < 2:
            return None
        if node.op == "Conv":
            if int(node.attrs.get("group", 1)) != 1 or len(w_shape) < 3 or any(int(k) != 1 for k in w_shape[2:]):
                return None
            return 1, True  # every input pixel a row (zero padding adds nothing to X^T X)
        if node.op == "Gemm":
            if len(w_shape) != 2:
                return None
            return (0 if int(node.attrs.get("transA", 0)) else -1), bool(int(node.attrs.get("transB", 0)))
        if node.op == "MatMul":
            return (-1, False) if len(w_shape) == 2 else None
        return None

    def _capture_grams(self, proto: onnx.ModelProto, graphs: list[gs.Graph], ctx: Context) -> dict[str, np.ndarray]:
        """``{node name: X^T X}`` of the input features of every layer GPTQ could
        round (:meth:`_gptq_layout`, more than 4096 weights, weight read by that
        node only), over the first ``calibration_limit`` calibration samples."""
        from ..calibration import Gram, capture

        avail = set(getattr(self, "_capturable", ()))
        want: dict[tuple[str, int], list[str]] = collections.defaultdict(list)
        for g in graphs:
            for node in g.nodes:
                if node.op not in ("Conv", "Gemm", "MatMul") or not node.name or len(node.inputs) < 2:
                    continue
                w_t, x_t = node.inputs[1], node.inputs[0]
                if not self._is_weight(w_t) or self._is_weight(x_t) or not w_t.shape or len(w_t.outputs) != 1:
                    continue
                if int(np.prod(w_t.shape)) <= _SMALL_WEIGHT or x_t.name not in avail:
                    continue
                lay = self._gptq_layout(node, tuple(w_t.shape))
                if lay is not None:
                    want[(x_t.name, lay[0])].append(node.name)
        if not want:
            return {}
        data = ctx.calibration
        if self.calibration_limit:
            data = _Limited(data, self.calibration_limit)
        keys = list(want)
        # A tensor read along two feature axes gets a Gram per axis: capture by tensor, one collector per axis.
        axes_of: dict[str, list[int]] = collections.defaultdict(list)
        for t, ax in keys:
            axes_of[t].append(ax)
        captured = capture(proto, sorted(axes_of), data, lambda t: [Gram(axis=a) for a in axes_of[t]], progress=False, desc="quantize-int8 gptq")
        grams: dict[str, np.ndarray] = {}
        for t, cols in captured.items():
            for ax, c in zip(axes_of[t], cols):
                if c.xtx is None:
                    continue
                for name in want[(t, ax)]:
                    grams[name] = c.xtx
        logger.info("quantize-int8: GPTQ Grams for %d layer(s)", len(grams))
        return grams

    def _gram_for(self, node: gs.Node, index: int, w_t, axis: int | None) -> np.ndarray | None:
        """The captured Gram for GPTQ-rounding ``node``'s weight input ``index``, or None (nearest)."""
        grams = getattr(self, "_grams", None)
        if not grams or index != 1 or axis is None or node.name not in grams or len(w_t.outputs) != 1:
            return None
        if self._gptq_layout(node, tuple(w_t.shape)) is None:
            return None
        return grams[node.name]

    def _gptq_weight(self, node: gs.Node, w: np.ndarray, h: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """GPTQ (Frantar et al. 2022) int8 ``Q`` (the shape of ``w``) for ``node``'s
        weight with the per-output-channel ``scale`` (symmetric, ``[-127, 127]``),
        features in descending ``diag(h)`` order (:func:`onnxpress.prune.distill.gptq_round`)."""
        from ..prune.distill import gptq_round

        memo = self.__dict__.setdefault("_gptq_memo", {})
        key = (node.name, w.shape, hash(w.tobytes()), scale.tobytes())
        if key in memo:
            return memo[key]
        _, out_in = self._gptq_layout(node, tuple(w.shape))
        m = w.shape[0] if out_in else w.shape[1]
        wm = w.reshape(m, -1).T if out_in else w  # [D, M]
        order = np.argsort(-np.diag(h), kind="stable")
        q, _ = gptq_round(h[np.ix_(order, order)], wm[order].astype(np.float64), scale.reshape(-1), np.zeros(m), -127, 127, n_quant=wm.shape[0], damp=_GPTQ_DAMP)
        qd = np.empty_like(q)
        qd[order] = q
        memo[key] = (qd.T.reshape(w.shape) if out_in else qd).astype(np.int8)
        return memo[key]

    def _quantize_embeddings(self, graphs: list[gs.Graph]) -> dict[str, int]:
        """Store large float ``Gather`` tables as int8 (option ``embedding_tables``).

        A float32 initializer of at least ``embedding_min_elements`` elements
        whose every reader is a ``Gather`` reading it as ``data`` (input 0), such
        as a word-embedding table ``[V, D]``, becomes a symmetric int8 table
        (range ``[-127, 127]``, zero point 0); each ``Gather`` reads the int8
        table and dequantizes only the gathered rows:

        * ``embedding_scale="per-tensor"`` (the default): ``Gather(q, idx) ->
          DequantizeLinear`` with one float32 scale (ONNX DequantizeLinear, per tensor).
        * ``embedding_scale="per-row"``: one scale per index of the
          gathered axis, float32 of shape ``[1, ..., V, ..., 1]`` (``V`` on the
          Gather's axis); ``Gather(q, idx) -> Cast(float) -> Mul(Gather(scale, idx))``.
          An outlier row then costs only its own precision.

        Runs before calibration, so the activations are calibrated on what the
        int8 tables give; the sensitivity analysis counts the tables' error among
        what is quantized regardless.

        Returns:
            initializer name -> bytes saved.
        """
        model = self._model
        names = self.names(model)
        saved: dict[str, int] = {}
        seen: set[int] = set()
        per_row = self.embedding_scale == "per-row"
        for g in graphs:
            for node in list(g.nodes):
                if node.op != "Gather" or node.domain not in _DEFAULT_DOMAINS or not node.inputs:
                    continue
                t = node.inputs[0]
                if id(t) in seen or not self._is_weight(t) or t.shape is None:
                    continue
                size = int(np.prod(t.shape, dtype=np.int64))
                if size < int(self.embedding_min_elements) or len(t.shape) < 1:
                    continue
                readers = [n for gg in graphs for n in gg.nodes if any(i is t for i in n.inputs)]
                if not readers or any(r.op != "Gather" or r.domain not in _DEFAULT_DOMAINS or r.inputs[0] is not t or any(i is t for i in r.inputs[1:]) for r in readers):
                    continue
                if id(t) in self._graph_outputs or any(t is i for i in g.inputs):
                    continue
                seen.add(id(t))
                w = constant_array(t)
                rank = w.ndim
                q_consts: dict[int, tuple[gs.Constant, gs.Constant]] = {}
                zero_point: gs.Constant | None = None  # per tensor: one int8 zero point for every reader
                for r in readers:
                    rg = self._graph_of.get(id(r), g)
                    axis = int(r.attrs.get("axis", 0))
                    axis = axis + rank if axis < 0 else axis
                    if axis not in q_consts:
                        if per_row:
                            scale = weight_scales(w, axis, 127)
                            shape = [1] * rank
                            shape[axis] = -1
                            q, scale = quantize_weight(w, axis, -127, 127, scale)
                            s_t = gs.Constant(names.new(f"{t.name}_row_scale"), np.ascontiguousarray(scale.reshape(shape)))
                        else:
                            q, scale = quantize_weight(w, None, -127, 127)
                            s_t = gs.Constant(names.new(f"{t.name}_scale"), np.asarray(scale, np.float32))
                        q_consts[axis] = (gs.Constant(names.new(f"{t.name}_quantized"), q), s_t)
                    q_t, s_t = q_consts[axis]
                    out = r.outputs[0]
                    gathered = gs.Variable(names.new(f"{out.name}_int8"), dtype=np.int8, shape=out.shape)
                    r.inputs[0] = q_t
                    r.outputs[0] = gathered
                    idx_t = r.inputs[1]
                    if per_row:
                        as_float = gs.Variable(names.new(f"{out.name}_cast"), dtype=np.float32, shape=out.shape)
                        row_s = gs.Variable(names.new(f"{out.name}_row_scale"), dtype=np.float32, shape=None)
                        new_nodes = [
                            gs.Node("Cast", names.new(f"{r.name or out.name}_Cast"), attrs={"to": onnx.TensorProto.FLOAT}, inputs=[gathered], outputs=[as_float]),
                            gs.Node("Gather", names.new(f"{r.name or out.name}_scale_Gather"), attrs={"axis": axis}, inputs=[s_t, idx_t], outputs=[row_s]),
                            gs.Node("Mul", names.new(f"{r.name or out.name}_dequantize"), inputs=[as_float, row_s], outputs=[out]),
                        ]
                    else:
                        if zero_point is None:
                            zero_point = gs.Constant(names.new(f"{t.name}_zero_point"), np.zeros((), np.int8))
                        z_t = zero_point
                        new_nodes = [
                            gs.Node("DequantizeLinear", names.new(f"{r.name or out.name}_DequantizeLinear"), inputs=[gathered, s_t, z_t], outputs=[out]),
                        ]
                    pos = next(k for k, n in enumerate(rg.nodes) if n is r)
                    rg.nodes[pos + 1 : pos + 1] = new_nodes
                    for n in new_nodes:
                        self._graph_of[id(n)] = rg
                new_bytes = sum(int(q.values.nbytes) + int(np.asarray(sc.values).nbytes) for q, sc in q_consts.values())
                saved[t.name] = int(w.nbytes) - new_bytes
                logger.debug("quantize-int8: Gather table %s %s -> int8 (%s scales)", t.name, list(w.shape), self.embedding_scale)
        if saved:
            logger.info(
                "quantize-int8: %d Gather table(s) stored as int8 (%s), %.2f MB saved",
                len(saved), self.embedding_scale, sum(saved.values()) / 1e6,
            )
        return saved

    def _quantize_lstm(self, g, node, names, head, wqmin, wqmax) -> str | None:
        """Replace ``node`` by com.microsoft DynamicQuantizeLSTM; None on success,
        else the reason it stays float."""
        model = self._model
        if len(node.inputs) < 3:
            return "LSTM without W and R"
        w_t, r_t = node.inputs[1], node.inputs[2]
        if not (self._is_weight(w_t) and self._is_weight(r_t)):
            return "LSTM weights are not constant float tensors"
        if int(node.attrs.get("layout", 0)) != 0:
            return "LSTM layout=1"
        w, r = constant_array(w_t), constant_array(r_t)
        if w.ndim != 3 or r.ndim != 3:
            return "LSTM weights are not 3-D"
        d, h4, _ = w.shape
        new_inputs = []
        for t, a in ((w_t, w), (r_t, r)):
            flat = a.reshape(d * h4, -1)
            q, s = quantize_weight(flat, 0, wqmin, wqmax)
            q = q.reshape(a.shape).transpose(0, 2, 1).copy()  # [D, in, 4H], as the kernel wants
            new_inputs.append(
                (
                    gs.Constant(names.new(f"{t.name}_quantized"), q),
                    gs.Constant(names.new(f"{t.name}_scale"), s.reshape(d, h4)),
                    gs.Constant(names.new(f"{t.name}_zero_point"), np.zeros((d, h4), np.int8)),
                )
            )
        empty = gs.Variable.empty
        rest = list(node.inputs[3:8]) + [empty()] * (8 - len(node.inputs))
        rest = [t if t.name else empty() for t in rest]
        (wq, ws, wz), (rq, rs, rz) = new_inputs
        inputs = [node.inputs[0], wq, rq, *rest, ws, wz, rs, rz]
        node.inputs.clear()
        node.inputs.extend(inputs)
        node.op = "DynamicQuantizeLSTM"
        node.domain = _MS
        node.attrs.pop("layout", None)
        # onnx has no schema for com.microsoft ops: declare the output types, or
        # type inference stops at this node (and the checker fails downstream).
        for o in node.outputs:
            if o.name:
                tt = self._types.get(o.name)
                o.dtype = np.float32
                if o.shape is None and tt is not None and tt.shape is not None:
                    o.shape = [d if isinstance(d, (int, str)) else None for d in tt.shape]
        return None


# --------------------------------------------------------------------- helpers
class _Limited:
    """Re-iterable view of at most ``n`` feeds of ``data``."""

    def __init__(self, data: Iterable, n: int) -> None:
        self.data, self.n = data, n

    def __iter__(self):
        return itertools.islice(iter(self.data), self.n)


def _empty(c: Any) -> bool:
    if c is None:
        return True
    if hasattr(c, "count"):
        try:
            return int(c.count) == 0
        except TypeError:
            pass
    return not (np.isfinite(getattr(c, "min", np.inf)) and np.isfinite(getattr(c, "max", -np.inf)))


def _collector_range(c: Any, method: str, percentile: float, qmin: int, qmax: int, symmetric: bool) -> tuple[float, float]:
    """``(lo, hi)`` of one tensor from its MinMax or Histogram collector."""
    lo, hi = float(c.min), float(c.max)
    if method == "minmax" or not hasattr(c, "counts"):
        return min(lo, 0.0), max(hi, 0.0)
    counts = np.asarray(c.counts, dtype=np.float64)
    edges = np.asarray(c.edges, dtype=np.float64)
    nz = np.nonzero(counts)[0]
    if not len(nz):
        return min(lo, 0.0), max(hi, 0.0)
    counts = counts[nz[0] : nz[-1] + 1]
    edges = edges[nz[0] : nz[-1] + 2].copy()
    edges[0], edges[-1] = max(edges[0], lo), min(edges[-1], hi)
    if edges[-1] <= edges[0]:
        return min(lo, 0.0), max(hi, 0.0)
    return range_from_histogram(method, edges, counts, percentile=percentile, qmin=qmin, qmax=qmax, symmetric=symmetric)


def _measure_points(proto: onnx.ModelProto) -> list[str]:
    """The tensors whose error the sensitivity analysis measures: each output of the
    main graph, or the input of the ``Softmax`` that produces it (the logits: a
    probability near a tie swings with any noise, so its SNR says little)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    moves = ("Reshape", "Flatten", "Transpose", "Identity", "Squeeze", "Unsqueeze")
    points = []
    for o in proto.graph.output:
        point, name = o.name, o.name
        for _ in range(8):  # through the reshapes opset conversion puts around Softmax
            n = producer.get(name)
            if n is None or n.domain not in ("", "ai.onnx"):
                break
            if n.op_type == "Softmax":
                point = n.input[0]
                break
            if n.op_type not in moves:
                break
            name = n.input[0]
        points.append(point)
    return list(dict.fromkeys(points))


def _with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    have = {o.name for o in proto.graph.output}
    extra = [n for n in names if n not in have]
    if not extra:
        return proto
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for n in extra:
        m.graph.output.add().name = n
    return m


def _name_compute_nodes(model: Model, graphs: list[gs.Graph], names) -> None:
    """Give every compute node a unique name (``exclude_nodes`` works by name)."""
    seen: set[str] = set()
    for g in graphs:
        for node in g.nodes:
            if node.op in COMPUTE_OPS and (not node.name or node.name in seen):
                node.name = names.new(node.name or node.op)
            seen.add(node.name)


def _np_dtype(name: str) -> type:
    return {"uint8": np.uint8, "int8": np.int8, "uint16": np.uint16, "int16": np.int16}[name]


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text.lower()).strip("_")


def _weight_bytes(model: Model) -> int:
    """Bytes of every constant tensor (subgraphs included, each counted once)."""
    seen: set[int] = set()
    total = 0
    for g in iter_graphs(model.graph):
        for node in g.nodes:
            for t in node.inputs:
                if isinstance(t, gs.Constant) and id(t) not in seen:
                    seen.add(id(t))
                    total += int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
    for t in model.orphan_initializers:
        if id(t) not in seen:
            total += int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize
    return total


def _convert_opset(model: Model, version: int) -> None:
    """Convert ``model`` in place to ``version`` of the default domain with
    ``onnx.version_converter`` and check the result.

    Raises:
        PassError: the converter or the checker fails.
    """
    proto = model.to_proto()
    try:
        converted = onnx.version_converter.convert_version(proto, version)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        raise PassError("quantize-int8", f"cannot convert the model from opset {model.opset} to {version}: {exc}") from exc
    new = Model.from_proto(converted)
    logger.info("quantize-int8: converted the model from opset %d to %d", model.opset, version)
    model.graph = new.graph
    model.opset_imports = new.opset_imports
    model.ir_version = max(model.ir_version, new.ir_version)
    model.orphan_initializers = new.orphan_initializers
    model.overridable = new.overridable
