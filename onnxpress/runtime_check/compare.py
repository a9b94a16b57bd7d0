"""Differential check of two models in onnxruntime on the same inputs, on one or
more targets.

Both models run on each target (``cpu``: this machine's onnxruntime; ``arm64``:
onnxruntime's aarch64 build, natively, under emulation or through a runner;
``ep:A,B``: other execution providers; see :mod:`onnxpress.runtime_check.targets`),
once with every onnxruntime graph optimization disabled (so a broken rewrite
cannot be hidden by onnxruntime's own fusions) and once with all enabled (so a
rewrite that trips onnxruntime shows). Outputs are matched by position; shapes and
dtypes must match exactly.

Onnxruntime's own fusions (Conv+BatchNorm, Conv+Mul/Add, ...) reassociate float
arithmetic, and on deep models that alone moves outputs by more than a tight
tolerance (PP-OCRv4 det: up to 5e-5 between the *original* model at the two
levels). A lossless rewrite of the same kind (onnxpress folds BatchNorm too) may
differ from the original by as much as those fusions do, and no more: at each
level each element's tolerance is widened by ``|reference_enabled -
reference_disabled|``, the noise onnxruntime shows on the original itself (on the
same target), plus that noise's maximum over the output; the maximum is reported
as ``ort_noise``. Where onnxruntime's rewrites change nothing (noise 0) the
judgement stays exact, and a broken rewrite still fails: its error exceeds that
noise.

Criterion (a :class:`Tolerance` per output, stated in every report). The default
depends on what the candidate is (:func:`model_kind`):

- ``fp32`` (no reduced-precision weights): elementwise
  ``|a - b| <= atol + rtol * |a|`` with ``atol=1e-5, rtol=1e-4`` (numpy
  ``allclose`` semantics);
- ``fp16`` (float16/bfloat16 initializers): elementwise, loose
  (``atol=5e-2, rtol=1e-2``; float16 has an 11-bit mantissa, compounded over
  layers), and cosine >= 0.999;
- ``int8`` (QuantizeLinear/DequantizeLinear, integer kernels, int8 weights; any
  activation quantization, whatever the weights' bits): no elementwise bound (a
  quantized output is off by up to a few quantization steps everywhere), but
  SNR >= 20 dB and cosine >= 0.99; top-1 agreement is reported and judged only
  when ``min_top1`` is set;
- ``int4`` (weight-only 4-bit: ``com.microsoft.MatMulNBits`` with ``bits`` <= 4,
  ``MatMulBnb4``, ``GatherBlockQuantized`` with ``bits`` <= 4, or INT4/UINT4
  weights, and no activation quantization): no elementwise bound, SNR >= 7 dB
  and cosine >= 0.9; top-1 as for ``int8``. A 4-bit weight is off by ~10 %
  (relative Frobenius error 0.09-0.11 with blocks of 32, i.e. ~20 dB per layer)
  and that noise compounds over depth. Measured with ``int4-weights`` (blocks of
  32, symmetric; onnxruntime 1.32; 16 real inputs, three seeds): magika
  27.7-33 dB (cosine >= 0.999), ddddocr 27.6 dB (0.9991), PP-OCRv4 rec
  28.4-29.6 dB (0.9993), MiniLM (36 int4 MatMuls in 6 layers) 10.7-11.5 dB
  (cosine 0.957-0.964); blocks of 64-256 or asymmetric weights: down to
  8.5 dB and 0.93 (MiniLM, blocks of 256). So the ``int8`` criterion (20 dB,
  0.99) fails MiniLM's int4 however well it is quantized. A broken layout
  (nibble order, zero point, sign, K and N swapped) in every layer gives
  <= 4.7 dB and cosine <= 0.82 on all four models. Milder faults look like more
  noise and can pass (scales transposed across blocks: 12.8 dB on magika, 10.4 dB
  on PP-OCR rec), and so can a single broken layer of a deep model (MiniLM: 3.5-7.8
  dB, within reach of honest int4 noise): past the gross faults this check
  catches, judge an int4 model by its task metric (``--data``, ``min_top1``).

Integer and bool outputs (class labels, indices, token ids) of an ``fp16``,
``int4`` or ``int8`` candidate are judged by agreement instead: the fraction of
elements equal to the reference must be >= ``min_agreement`` (default 0.99; 0.9
for ``int4``, whose argmax moves more: top-1 agreement of the real classifier
outputs >= 0.985 with blocks of 32 and down to 0.94 with blocks of 128, while
the broken layouts above give <= 0.77); a label is right or wrong, its numeric
distance means nothing. For ``fp32`` they must be equal.

Any field can be overridden globally (``--atol/--rtol``, a recipe's ``[check]``
table) or per output name (``--atol NAME=V``, a recipe's ``[check.outputs.NAME]``
table); the overrides are laid over the default, field by field.

Metrics per output, aggregated over all feeds (the idea of Polygraphy's
comparator: per-output results that are truthy when they pass):

- ``max_abs``, ``mean_abs``: absolute error;
- ``max_rel``: max ``|a - b| / max(|a|, 1e-12)``;
- ``cosine``: cosine similarity of the flattened outputs;
- ``snr_db``: ``10 log10(sum a^2 / sum (a - b)^2)`` (``inf`` when equal);
- ``nonfinite``: NaN/Inf in the candidate where the reference is finite;
- ``top1``, ``top5`` for classifier-like outputs (``[N, C]`` or ``[N, T, C]``
  float scores, ``C >= 2``; rank-4+ maps such as segmentation or detection
  heads are not classifier scores and get none): over every row of the last axis, the fraction where the candidate's argmax
  equals the reference's, and where the reference's argmax is among the
  candidate's five largest (``top5`` only when the last dim is > 5).

Cross-target: on each non-``cpu`` target the candidate is also compared with the
candidate on ``cpu`` (informational: it does not decide pass/fail), and the
report explains the differences to expect there (``shared/ARM.md``).
"""
from __future__ import annotations

import json
import logging
import math
import platform
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx.numpy_helper

from ..errors import CheckError, InputError, ReferenceModelError
from ..graph import iter_proto_graphs
from .inputs import Feeds, validate_feeds

__all__ = [
    "LEVELS",
    "CheckReport",
    "OutputMetrics",
    "Tolerance",
    "compare",
    "default_tolerance",
    "make_session",
    "model_kind",
    "resolve_targets",
    "u8s8_without_vnni",
]

logger = logging.getLogger(__name__)

LEVELS = ("disabled", "enabled")


def make_session(model: onnx.ModelProto | bytes | str, level: str = "disabled", threads: int = 1):
    """An onnxruntime CPU session with graph optimizations ``disabled`` or ``enabled``.

    A ``ModelProto`` whose weights are left in external data (``basepath``, see
    :func:`onnxpress.graph.load`) goes to onnxruntime as a small temporary model
    file written beside its data (removed once the session exists), so the
    weights are never copied into the proto; if that folder is not writable, the
    weights are read into a copy instead. A self-contained proto over 64 MB is
    saved into a temporary folder (with external data above 1.8 GB: protobuf's
    2 GB limit) rather than serialized, as onnxruntime would keep the bytes for
    the session's lifetime.

    Raises:
        CheckError: onnxruntime refuses the model.
    """
    import onnxruntime as ort

    from ..errors import ExternalDataError
    from ..graph.io import SESSION_FILE_ABOVE, external_folders, session_file

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL if level == "disabled" else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3

    def create(data):
        try:
            return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CheckError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc

    if not isinstance(model, onnx.ModelProto):
        return create(model)
    if external_folders(model):
        try:
            with session_file(model) as path:
                return create(str(path))
        except (OSError, ExternalDataError) as exc:  # a read-only folder, or several folders
            from ..graph.model import (
                is_lazy_external,
                iter_tensor_protos,
                materialize_tensor,
            )

            logger.warning(
                "cannot give onnxruntime a temporary model beside the external data (%s): reading the weights "
                "into memory instead", exc,
            )
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            for t in iter_tensor_protos(copy):
                if is_lazy_external(t):
                    t.CopyFrom(materialize_tensor(t))
            model = copy
    if model.ByteSize() > SESSION_FILE_ABOVE:
        # onnxruntime keeps the bytes it was given for the session's lifetime: a file costs no memory
        with session_file(model) as path:
            return create(str(path))
    return create(model.SerializeToString())


# ---------------------------------------------------------------------------------- targets
def resolve_targets(specs: Sequence[Any] | None, runner: str | None = None) -> list:
    """Targets for the specs (``"cpu"``, ``"arm64[:MODEL]"``, ``"ep:A,B"``) or Target objects.

    Raises:
        InputError: an unknown target, a missing runtime, an unavailable provider
            (the message is the target module's, one line).
    """
    from .targets import get_target

    out = []
    for spec in specs or ("cpu",):
        if not isinstance(spec, str):
            out.append(spec)
            continue
        try:
            out.append(get_target(spec, runner=runner))
        except InputError:
            raise
        except Exception as exc:  # the target module's own error types: keep the message, exit 2
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"target {spec!r}: {msg}") from exc
    return out


def _run_jobs(target, jobs: list) -> list:
    results = target.run(jobs)
    if len(results) != len(jobs):
        raise CheckError(f"target {target.name}: {len(jobs)} jobs sent, {len(results)} results returned")
    return results


# ---------------------------------------------------------------------------------- kinds
_QUANT_OPS = {
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
    "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearSigmoid",
    "QLinearLeakyRelu", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax", "QGemm",
    "QAttention", "MatMulNBits", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM",
    "MatMulBnb4", "GatherBlockQuantized",
}
# Quantization that leaves activations float: dequantized (or packed 2-8 bit) weights only.
_WEIGHT_ONLY_OPS = {"DequantizeLinear", "MatMulNBits", "MatMulBnb4", "GatherBlockQuantized"}
_ACTIVATION_QUANT_OPS = _QUANT_OPS - _WEIGHT_ONLY_OPS
_INT4_TYPES = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4") if hasattr(onnx.TensorProto, n)}
_INT_WEIGHT_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
_HALF_TYPES = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
_MIN_WEIGHT = 16  # elements: smaller int8/fp16 constants are zero points, flags, tables


def _numel(t: onnx.TensorProto) -> int:
    return int(np.prod(t.dims)) if len(t.dims) else 1


def _bits(node: onnx.NodeProto, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "bits" and a.type == onnx.AttributeProto.INT), default)


def model_kind(model: onnx.ModelProto) -> str:
    """``"int8"``, ``"int4"``, ``"fp16"`` or ``"fp32"``: what precision the model computes in.

    Looked for in the main graph, its subgraphs and local functions:

    - ``int8`` when the model quantizes activations (QuantizeLinear, QLinear*,
      integer MatMul/Conv, dynamic quantization; see ``_ACTIVATION_QUANT_OPS``),
      whatever the bits of its weights;
    - else ``int4`` when it has 4-bit weights: ``com.microsoft.MatMulNBits`` with
      ``bits`` <= 4 (the default, 4), ``MatMulBnb4``, ``GatherBlockQuantized`` with
      ``bits`` <= 4, or INT4/UINT4 initializers or Constant values of at least 16
      elements (opset-21 blocked DequantizeLinear); int8 or float16 weights beside
      them do not change this, 4-bit noise dominates;
    - else ``int8`` when it has other weight-only quantization (DequantizeLinear,
      MatMulNBits with more bits) or int8/uint8 weights of at least 16 elements;
    - else ``fp16`` when it has float16/bfloat16 weights (initializers or Constant
      values of at least 16 elements);
    - else ``fp32``.
    """
    half = False
    graphs = list(iter_proto_graphs(model.graph))
    nodes = [n for g in graphs for n in g.node] + [n for f in model.functions for n in f.node]
    if any(n.op_type in _ACTIVATION_QUANT_OPS for n in nodes):
        return "int8"
    quantized = any(n.op_type in _QUANT_OPS for n in nodes)
    if any(
        (n.op_type in ("MatMulNBits", "GatherBlockQuantized") and _bits(n, 4) <= 4) or n.op_type == "MatMulBnb4"
        for n in nodes
    ):
        return "int4"
    tensors = [t for g in graphs for t in g.initializer]
    tensors += [a.t for n in nodes if n.op_type == "Constant" for a in n.attribute if a.type == onnx.AttributeProto.TENSOR]
    int8 = False
    for t in tensors:
        if _numel(t) < _MIN_WEIGHT:
            continue
        if t.data_type in _INT4_TYPES:
            return "int4"
        if t.data_type in _INT_WEIGHT_TYPES:
            int8 = True
        elif t.data_type in _HALF_TYPES:
            half = True
    if quantized or int8:
        return "int8"
    return "fp16" if half else "fp32"


def u8s8_without_vnni(model: onnx.ModelProto, cpuinfo: str | None = None) -> bool:
    """True when ``model`` quantizes activations to uint8 with int8 weights (U8S8)
    and this x86 CPU lacks VNNI (no ``avx512_vnni`` nor ``avx_vnni`` flag).

    Without VNNI onnxruntime's U8S8 kernels use ``vpmaddubsw``, whose int16
    intermediate sums saturate with 8-bit weights (``shared/ARM.md``). Weights
    kept within 7 bits ([-64, 63], what ``quantize-int8`` writes for such CPUs)
    cannot saturate and do not count. False on non-x86 machines and when
    ``/proc/cpuinfo`` is unreadable.

    Args:
        model: the quantized model.
        cpuinfo: the text of ``/proc/cpuinfo`` (read when None).
    """
    if cpuinfo is None:
        if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
            return False
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    if not flags or {"avx512_vnni", "avx_vnni"} & flags:
        return False
    graphs = list(iter_proto_graphs(model.graph))
    inits = {t.name: t for g in graphs for t in g.initializer}
    u8_act = s8_weight = False  # s8_weight: an 8-bit weight beyond the 7-bit range [-64, 63]
    for g in graphs:
        for n in g.node:
            if n.op_type == "QuantizeLinear":
                zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
                if zp is None and (len(n.input) < 3 or not n.input[2]):
                    u8_act = True  # no zero point: uint8
                elif zp is not None and zp.data_type == onnx.TensorProto.UINT8:
                    u8_act = True
            elif n.op_type == "DequantizeLinear":
                w = inits.get(n.input[0])
                if w is not None and w.data_type == onnx.TensorProto.INT8 and _numel(w) >= _MIN_WEIGHT and not s8_weight:
                    values = onnx.numpy_helper.to_array(w)
                    s8_weight = bool(values.min() < -64 or values.max() > 63)
            elif n.op_type in ("DynamicQuantizeMatMul", "DynamicQuantizeLSTM", "DynamicQuantizeLinear"):
                u8_act = True
                s8_weight = s8_weight or n.op_type != "DynamicQuantizeLinear"
    return u8_act and s8_weight


# ---------------------------------------------------------------------------------- tolerance
@dataclass(frozen=True)
class Tolerance:
    """The pass criterion of one output; every field that is set must hold.

    Attributes:
        atol, rtol: elementwise ``|a - b| <= atol + rtol * |a|`` (None: no
            elementwise bound; one None with the other set counts as 0).
        min_snr_db: SNR of the whole output (dB) must be at least this.
        min_cosine: cosine similarity must be at least this.
        min_top1: top-1 agreement (classifier-like outputs) must be at least this.
        min_agreement: for integer and bool outputs (class labels, indices, token
            ids), the fraction of elements equal to the reference must be at least
            this; it then replaces the elementwise, SNR and cosine bounds for those
            outputs (a label is right or wrong: its numeric distance means nothing).
            None: integer outputs are judged like float ones (fp32: exactly).
        source: where the criterion came from (``"default fp32"``, ``"recipe"``, ...).
    """

    atol: float | None = 1e-5
    rtol: float | None = 1e-4
    min_snr_db: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None
    min_agreement: float | None = None
    source: str = "default fp32"

    KEYS = ("atol", "rtol", "min_snr_db", "min_cosine", "min_top1", "min_agreement")

    @property
    def elementwise(self) -> bool:
        return self.atol is not None or self.rtol is not None

    def bounds(self) -> tuple[float, float]:
        return (self.atol or 0.0, self.rtol or 0.0)

    def describe(self, integer: bool = False) -> str:
        """E.g. ``|a-b| <= 1e-05 + 0.0001*|a|`` or ``SNR >= 20 dB and cosine >= 0.99``;
        for an ``integer`` output under ``min_agreement``, ``agreement >= 0.99``."""
        if integer and self.min_agreement is not None:
            return f"agreement >= {self.min_agreement:g}"
        parts = []
        if self.elementwise:
            atol, rtol = self.bounds()
            parts.append(f"|a-b| <= {atol:g} + {rtol:g}*|a|")
        if self.min_snr_db is not None:
            parts.append(f"SNR >= {self.min_snr_db:g} dB")
        if self.min_cosine is not None:
            parts.append(f"cosine >= {self.min_cosine:g}")
        if self.min_top1 is not None:
            parts.append(f"top-1 agreement >= {self.min_top1:g}")
        return " and ".join(parts) or "shapes, dtypes and NaN/Inf only"

    def with_overrides(self, overrides: Mapping[str, Any] | None, source: str) -> "Tolerance":
        """A copy with the fields of ``overrides`` (keys of :attr:`KEYS`) replaced."""
        if not overrides:
            return self
        bad = sorted(set(overrides) - set(self.KEYS))
        if bad:
            raise InputError(f"unknown tolerance key {bad[0]!r}; valid keys: {', '.join(self.KEYS)}")
        values = {k: (None if v is None else float(v)) for k, v in overrides.items()}
        return replace(self, **values, source=source)


_DEFAULTS = {
    "fp32": Tolerance(1e-5, 1e-4, source="default fp32"),
    "fp16": Tolerance(5e-2, 1e-2, min_cosine=0.999, min_agreement=0.99, source="default fp16"),
    "int8": Tolerance(None, None, min_snr_db=20.0, min_cosine=0.99, min_agreement=0.99, source="default int8"),
    "int4": Tolerance(None, None, min_snr_db=7.0, min_cosine=0.9, min_agreement=0.9, source="default int4"),
}


def default_tolerance(kind: str) -> Tolerance:
    """The default criterion of a candidate of this kind (see the module docstring)."""
    return _DEFAULTS[kind]


# ---------------------------------------------------------------------------------- results
@dataclass
class OutputMetrics:
    """Differences of one output between reference and candidate (all feeds).

    ``passed`` is False when shapes or dtypes differ, when the candidate has NaN or
    Inf where the reference has none, or when the criterion (``criterion``) is
    missed. ``target`` is where both ran (``"arm64 vs cpu"`` for the cross-target
    comparison of the candidate with itself).
    """

    name: str
    level: str
    shape_ref: list[int]
    shape_got: list[int]
    dtype_ref: str
    dtype_got: str
    max_abs: float = 0.0
    mean_abs: float = 0.0
    max_rel: float = 0.0
    cosine: float = 1.0
    snr_db: float = math.inf
    nonfinite: int = 0
    ort_noise: float = 0.0
    passed: bool = True
    reason: str = ""
    target: str = "cpu"
    top1: float | None = None
    top5: float | None = None
    agreement: float | None = None
    criterion: str = ""

    def __bool__(self) -> bool:
        return self.passed


@dataclass
class CheckReport:
    """Result of :func:`compare`; truthy when every output passed at every level
    on every target.

    Attributes:
        outputs: one :class:`OutputMetrics` per target, level and output.
        cross: the candidate on each non-cpu target against the candidate on cpu
            (informational; does not decide ``passed``).
        atol, rtol: the global elementwise bounds given (None: per kind).
        kind: ``fp32``/``fp16``/``int4``/``int8`` (:func:`model_kind` of the candidate).
        criteria: the criterion text per output name.
        feeds: number of feeds compared.
        targets: ``{"name", "emulated", "providers"}`` per target.
        notes: explanations (cross-target differences, how the check ran).
        warnings: risks found (U8S8 without VNNI, ...).
        latency: :class:`~onnxpress.runtime_check.latency.LatencyResult` dicts.
        sizes: on-disk and gzip sizes of both models.
        localization: :class:`~onnxpress.runtime_check.localize.Localization`,
            when asked for and an output failed.
        latency_ms: ``{level: {"reference": ms, "candidate": ms}}`` median on the
            first native target (kept for older callers).
    """

    outputs: list[OutputMetrics] = field(default_factory=list)
    atol: float | None = None
    rtol: float | None = None
    feeds: int = 0
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    cross: list[OutputMetrics] = field(default_factory=list)
    kind: str = "fp32"
    criteria: dict[str, str] = field(default_factory=dict)
    targets: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    latency: list[dict] = field(default_factory=list)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    localization: Any = None
    reference_name: str = "reference"
    candidate_name: str = "candidate"

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __bool__(self) -> bool:
        return self.passed

    def failed_outputs(self) -> list[str]:
        """Names of outputs that failed somewhere, in output order."""
        return list(dict.fromkeys(o.name for o in self.outputs if not o.passed))

    def to_dict(self) -> dict:
        from .report import jsonable

        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["outputs"] = [asdict(o) for o in self.outputs]
        d["cross"] = [asdict(o) for o in self.cross]
        d["localization"] = self.localization.to_dict() if self.localization is not None else None
        d["passed"] = self.passed
        return jsonable(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_table(self) -> str:
        """A readable fixed-width table (see :func:`onnxpress.runtime_check.report.render_table`)."""
        from .report import render_table

        return render_table(self)

    def to_markdown(self) -> str:
        from .report import render_markdown

        return render_markdown(self)

    def to_html(self) -> str:
        from .report import render_html

        return render_html(self)

    def write(self, path: str | Path) -> Path:
        """Write the report as ``.json``, ``.md`` or ``.html`` (by suffix)."""
        from .report import write_report

        return write_report(self, path)


# ---------------------------------------------------------------------------------- metrics
def _dot(x: np.ndarray, y: np.ndarray) -> float:
    """``sum(x * y)`` without BLAS: a BLAS dot spins its thread pool against
    onnxruntime's and is 100x slower on a busy 2-core machine."""
    return float(np.multiply(x, y).sum())


class _Accumulator:
    def __init__(self, tol: Tolerance) -> None:
        self.tol = tol
        self.sum_abs = 0.0
        self.count = 0
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.dot = 0.0
        self.ref_sq = 0.0
        self.got_sq = 0.0
        self.err_sq = 0.0
        self.nonfinite = 0
        self.violations = 0
        self.special = 0
        self.ort_noise = 0.0
        self.rows = 0
        self.top1_hits = 0
        self.top5_hits = 0
        self.top5_rows = 0
        self.equal = 0
        self.integer = False
        self.shape_ref: list[int] = []
        self.shape_got: list[int] = []
        self.dtype_ref = ""
        self.dtype_got = ""
        self.mismatch = ""

    def add(self, ref: np.ndarray, got: np.ndarray, ref_exact: np.ndarray | None = None) -> None:
        ref, got = np.asarray(ref), np.asarray(got)
        self.shape_ref, self.shape_got = list(ref.shape), list(got.shape)
        self.dtype_ref, self.dtype_got = str(ref.dtype), str(got.dtype)
        if ref.shape != got.shape:
            self.mismatch = self.mismatch or "shape"
            return
        if ref.dtype != got.dtype:
            self.mismatch = self.mismatch or "dtype"
        if ref.dtype.kind not in "fciub":
            if not np.array_equal(ref, got):
                self.violations += 1
            return
        if ref.dtype.kind in "iub":
            self.integer = True
            self.equal += int(np.count_nonzero(ref == got))
        r = ref.astype(np.float64).ravel()
        g = got.astype(np.float64).ravel()
        self.nonfinite += int(np.count_nonzero(~np.isfinite(g) & np.isfinite(r)))
        both = np.isfinite(r) & np.isfinite(g)
        same_special = (~np.isfinite(r)) & ((r == g) | (np.isnan(r) & np.isnan(g)))
        r_f, g_f = r[both], g[both]
        diff = np.abs(r_f - g_f)
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))
            self.max_rel = max(self.max_rel, float((diff / np.maximum(np.abs(r_f), 1e-12)).max()))
        self.sum_abs += float(diff.sum())
        self.count += int(diff.size)
        self.dot += _dot(r_f, g_f)
        self.ref_sq += _dot(r_f, r_f)
        self.got_sq += _dot(g_f, g_f)
        self.err_sq += _dot(diff, diff)
        self.special += int(np.count_nonzero(~both & ~same_special & ~(~np.isfinite(g) & np.isfinite(r))))
        if self.tol.elementwise:
            atol, rtol = self.tol.bounds()
            tol = atol + rtol * np.abs(r_f)
            if ref_exact is not None and ref_exact.shape == ref.shape:
                noise = np.abs(r - np.asarray(ref_exact).astype(np.float64).ravel())[both]
                noise = np.where(np.isfinite(noise), noise, 0.0)
                scale = float(noise.max()) if noise.size else 0.0
                self.ort_noise = max(self.ort_noise, scale)
                tol = tol + noise + scale
            self.violations += int(np.count_nonzero(diff > tol))
        if ref.ndim in (2, 3) and ref.shape[-1] >= 2 and ref.dtype.kind == "f":
            c = ref.shape[-1]
            r2 = np.nan_to_num(ref.reshape(-1, c).astype(np.float64), nan=-np.inf)
            g2 = np.nan_to_num(got.reshape(-1, c).astype(np.float64), nan=-np.inf)
            top_r = r2.argmax(axis=1)
            self.rows += r2.shape[0]
            self.top1_hits += int(np.count_nonzero(top_r == g2.argmax(axis=1)))
            if c > 5:
                top5 = np.argpartition(-g2, 4, axis=1)[:, :5]
                self.top5_hits += int(np.count_nonzero((top5 == top_r[:, None]).any(axis=1)))
                self.top5_rows += r2.shape[0]

    @property
    def snr_db(self) -> float:
        return math.inf if self.err_sq == 0 else 10 * math.log10(max(self.ref_sq, 1e-300) / self.err_sq)

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.ref_sq * self.got_sq)
        return self.dot / denom if denom > 0 else (1.0 if self.err_sq == 0 else 0.0)

    def result(self, name: str, level: str, target: str = "cpu") -> OutputMetrics:
        cosine, snr = self.cosine, self.snr_db
        top1 = self.top1_hits / self.rows if self.rows else None
        top5 = self.top5_hits / self.top5_rows if self.top5_rows else None
        tol = self.tol
        reasons = []
        agreement = self.equal / self.count if self.integer and self.count else None
        if self.mismatch:
            reasons.append(f"{self.mismatch} mismatch")
        elif self.integer and tol.min_agreement is not None:
            if agreement is not None and agreement < tol.min_agreement:
                reasons.append(f"agreement {agreement:.4f} < {tol.min_agreement:g}")
        else:
            if self.nonfinite:
                reasons.append(f"{self.nonfinite} new NaN/Inf")
            if self.special:
                reasons.append(f"{self.special} NaN/Inf of the reference not reproduced")
            if self.violations:
                reasons.append(f"{self.violations} values outside tolerance")
            if tol.min_snr_db is not None and snr < tol.min_snr_db:
                reasons.append(f"SNR {snr:.1f} dB < {tol.min_snr_db:g} dB")
            if tol.min_cosine is not None and cosine < tol.min_cosine:
                reasons.append(f"cosine {cosine:.4f} < {tol.min_cosine:g}")
            if tol.min_top1 is not None and top1 is not None and top1 < tol.min_top1:
                reasons.append(f"top-1 agreement {top1:.3f} < {tol.min_top1:g}")
        reason = "; ".join(reasons)
        return OutputMetrics(
            name=name,
            level=level,
            shape_ref=self.shape_ref,
            shape_got=self.shape_got,
            dtype_ref=self.dtype_ref,
            dtype_got=self.dtype_got,
            max_abs=self.max_abs,
            mean_abs=self.sum_abs / self.count if self.count else 0.0,
            max_rel=self.max_rel,
            cosine=cosine,
            snr_db=snr,
            nonfinite=self.nonfinite,
            ort_noise=self.ort_noise,
            passed=not reason,
            reason=reason,
            target=target,
            top1=top1,
            top5=top5,
            agreement=agreement,
            criterion=tol.describe(self.integer),
        )


# ---------------------------------------------------------------------------------- notes
_FP16_ARITH_CPUS = {
    "cortex-a55", "cortex-a75", "cortex-a76", "cortex-a77", "cortex-a78", "cortex-a710", "cortex-x1",
    "neoverse-n1", "neoverse-n2", "neoverse-v1", "a64fx", "max",
}
_NO_FP16_CPUS = {"cortex-a35", "cortex-a53", "cortex-a57", "cortex-a72", "cortex-a73"}


def _cross_note(target_name: str, kind: str, worst: float) -> str:
    """What difference to expect between the candidate on ``target_name`` and on this CPU."""
    cpu_model = target_name.partition(":")[2].lower() if target_name.startswith("arm64:") else ""
    head = f"{target_name} vs cpu (candidate against itself, max |diff| {worst:.3g}): "
    if target_name.startswith("ep:"):
        return head + (
            "another execution provider runs its own kernels and fusions (other accumulation order; GPU/NPU "
            "providers may compute in fp16/tf32 or fuse QDQ differently), so small differences are expected; "
            "a large one is the provider's, not the rewrite's, when the reference on that provider moves too."
        )
    if kind == "fp16":
        if cpu_model in _NO_FP16_CPUS:
            return head + (
                f"{cpu_model} has no FP16 arithmetic; onnxruntime computes float16 through Casts in fp32, "
                "so expect <= 2e-3."
            )
        which = f"{cpu_model} has" if cpu_model in _FP16_ARITH_CPUS else "CPUs with FP16 arithmetic (a55, a76, neoverse-n1, ...) have"
        return head + (
            f"{which} FP16 arithmetic: onnxruntime accumulates float16 in float16 there, while x86 "
            "converts to fp32; differences up to ~4e-2 on logits and ~7e-2 on activations are normal "
            "(<= 2e-3 on CPUs without FP16 arithmetic such as a53/a72)."
        )
    if kind == "int4":
        return head + (
            "weight-only int4 computes in float: MatMulNBits with accuracy_level 0 (the int4-weights default) "
            "and blocked DequantizeLinear dequantize the 4-bit weights and run float kernels, so expect fp32-size "
            "differences (x86 vs emulated neoverse-n1 and cortex-a53: magika <= 4.2e-7, PP-OCRv4 rec <= 1e-5). "
            "With accuracy_level 4 onnxruntime quantizes the activations to int8 per block where its kernels for "
            "that CPU do, so targets differ by int8 activation noise (magika up to 7e-4, PP-OCRv4 rec "
            "probabilities up to 8e-3: 55-72 dB)."
        )
    if kind == "int8":
        return head + (
            "int8 QDQ (U8S8, S8S8) is bit-exact between x86 and aarch64 in onnxruntime's kernels, so "
            "any difference beyond the float parts of the graph points at a kernel or emulator problem "
            "(dynamic int8 under QEMU 7.2 '-cpu max' is known to be wrong: SME emulation bug)."
        )
    return head + (
        "fp32 differs by ~1e-6 between x86 (AVX2/AVX-512) and aarch64 NEON kernels (KleidiAI SME paths "
        "up to ~1e-5); x86 machines differ among themselves by ~2e-6, so a larger gap points at the "
        "target's kernels rather than at the rewrite."
    )


# ---------------------------------------------------------------------------------- compare
def _serialize(model: onnx.ModelProto | bytes) -> bytes:
    return model if isinstance(model, bytes) else model.SerializeToString()


def _first_line(text: str | None) -> str:
    text = (text or "").strip()
    return text.splitlines()[0] if text else "unknown error"


def _tolerance_for(
    name: str,
    base: Tolerance,
    overrides: Mapping[str, Any] | None,
    per_output: Mapping[str, Mapping[str, Any]] | None,
) -> Tolerance:
    tol = base.with_overrides({k: v for k, v in (overrides or {}).items()}, source="given")
    if per_output and name in per_output:
        tol = tol.with_overrides(per_output[name], source=f"given for {name!r}")
    return tol


def compare(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    feeds: Iterable[Feeds],
    atol: float | None = None,
    rtol: float | None = None,
    levels: Sequence[str] = LEVELS,
    measure_latency: bool = False,
    latency_repeats: int = 20,
    *,
    targets: Sequence[Any] | None = None,
    runner: str | None = None,
    tolerance: Mapping[str, Any] | None = None,
    per_output: Mapping[str, Mapping[str, Any]] | None = None,
    kind: str | None = None,
    threads: int = 1,
    localize: bool = False,
    localize_feeds: int = 2,
    reference_path: str | Path | None = None,
    candidate_path: str | Path | None = None,
) -> CheckReport:
    """Run both models on ``feeds`` on each target and compare their outputs.

    Args:
        reference: the original model (ModelProto with data in memory).
        candidate: the rewritten model; must have the same outputs, in order.
        feeds: ``{input name: array}`` dicts, validated against ``reference``.
        atol, rtol: elementwise bounds for every output, laid over the default
            criterion of the candidate's kind (None: the kind's default).
        levels: onnxruntime graph optimization levels, ``"disabled"``/``"enabled"``.
        measure_latency: also time both models on each target
            (:func:`onnxpress.runtime_check.latency.measure`, ``latency_repeats``
            runs of the first feed after warm-up, ``threads`` intra-op threads,
            ORT optimizations enabled) and record their sizes.
        targets: target specs (``"cpu"``, ``"arm64[:MODEL]"``, ``"ep:A,B"``) or
            Target objects; default ``["cpu"]``. On each non-cpu target the
            candidate is also compared with the candidate on cpu.
        runner: command that runs the aarch64 worker on a remote board.
        tolerance: more criterion fields for every output
            (``{"min_snr_db": 30, "min_top1": 0.95, ...}``; keys of :class:`Tolerance`).
        per_output: criterion fields per output name (a recipe's
            ``[check.outputs.NAME]`` tables).
        kind: force ``"fp32"``/``"fp16"``/``"int4"``/``"int8"`` instead of :func:`model_kind`.
        threads: intra-op threads for the latency runs.
        localize: when an output fails, find the first diverging intermediate
            tensor and the worst layers (:func:`onnxpress.runtime_check.localize.localize`)
            on the first failing target, on at most ``localize_feeds`` feeds.
        reference_path, candidate_path: the files the models came from, for the
            on-disk sizes (external data included).

    Returns:
        A :class:`CheckReport` with one :class:`OutputMetrics` per target, level
        and output.

    Raises:
        ReferenceModelError: onnxruntime cannot load or run the reference.
        CheckError: onnxruntime cannot load or run the candidate.
        InputNameError: a feed does not fit the model's inputs.
        InputError: an unknown target, a missing runtime, an unknown tolerance key.
    """
    feeds = validate_feeds(reference, list(feeds))
    kind = kind or model_kind(candidate)
    if kind not in _DEFAULTS:
        raise InputError(f"unknown model kind {kind!r}; expected one of {', '.join(_DEFAULTS)}")
    overrides = dict(tolerance or {})
    if atol is not None:
        overrides["atol"] = atol
    if rtol is not None:
        overrides["rtol"] = rtol
    base = default_tolerance(kind)
    report = CheckReport(atol=atol, rtol=rtol, feeds=len(feeds), kind=kind)
    if reference_path:
        report.reference_name = Path(reference_path).name
    if candidate_path:
        report.candidate_name = Path(candidate_path).name
    ref_bytes, cand_bytes = _serialize(reference), _serialize(candidate)
    cand_inputs = {i.name for i in candidate.graph.input}
    cand_feeds = [{k: v for k, v in f.items() if k in cand_inputs} for f in feeds]

    specs = list(targets) if targets else ["cpu"]
    target_objs = resolve_targets(specs, runner)
    owned = [t for t, s in zip(target_objs, specs) if isinstance(s, str)]
    try:
        _check_on_targets(
            report, target_objs, owned, reference, candidate, ref_bytes, cand_bytes, feeds, cand_feeds, levels,
            base, overrides, per_output, kind, measure_latency, latency_repeats, threads, localize, localize_feeds,
            reference_path, candidate_path,
        )
    finally:
        for t in owned:
            close = getattr(t, "close", None)
            if close is not None:
                close()
    return report


def _check_on_targets(
    report, target_objs, owned, reference, candidate, ref_bytes, cand_bytes, feeds, cand_feeds, levels,
    base, overrides, per_output, kind, measure_latency, latency_repeats, threads, localize, localize_feeds,
    reference_path, candidate_path,
) -> None:
    cpu_target = next((t for t in target_objs if t.name == "cpu"), None)
    needs_cpu = any(t.name != "cpu" for t in target_objs)
    extra_cpu = None
    if needs_cpu and cpu_target is None:
        extra_cpu = resolve_targets(["cpu"])[0]
        owned.append(extra_cpu)

    from .targets import Job

    cand_on_cpu: dict[str, list] = {}
    per_target: list[tuple[Any, dict, dict]] = []
    names: list[str] = []
    for t in target_objs:
        jobs = [Job(model=ref_bytes, feeds=feeds, level=lv) for lv in levels]
        jobs += [Job(model=cand_bytes, feeds=cand_feeds, level=lv) for lv in levels]
        lat_jobs = []
        if measure_latency and feeds:
            lat_jobs = [
                Job(model=ref_bytes, feeds=feeds[:1], level="enabled", threads=threads, repeats=latency_repeats),
                Job(model=cand_bytes, feeds=cand_feeds[:1], level="enabled", threads=threads, repeats=latency_repeats),
            ]
        results = _run_jobs(t, jobs + lat_jobs)
        ref_res = dict(zip(levels, results[: len(levels)]))
        got_res = dict(zip(levels, results[len(levels) : 2 * len(levels)]))
        for lv in levels:
            if ref_res[lv].error:
                raise ReferenceModelError(
                    f"the original model cannot serve as reference on {t.name} (ort {lv}): {_first_line(ref_res[lv].error)}"
                )
            if got_res[lv].error:
                raise CheckError(f"the candidate model fails on {t.name} (ort {lv}): {_first_line(got_res[lv].error)}")
        names = list(ref_res[levels[0]].output_names)
        for lv in levels:
            n_got = len(got_res[lv].output_names)
            if n_got != len(names):
                raise CheckError(f"the models have {len(names)} and {n_got} outputs")
        report.targets.append(
            {"name": t.name, "emulated": bool(getattr(t, "emulated", False)), "providers": list(ref_res[levels[0]].providers or [])}
        )
        if t.name == "cpu":
            cand_on_cpu = {lv: got_res[lv].outputs for lv in levels}
        per_target.append((t, ref_res, got_res))
        if lat_jobs:
            from .latency import latency_from_times

            ref_lat, cand_lat = results[2 * len(levels) :]
            for which, res in (("reference", ref_lat), ("candidate", cand_lat)):
                if res.error:
                    raise CheckError(f"timing the {which} on {t.name} failed: {_first_line(res.error)}")
            report.latency.append(
                latency_from_times(t.name, bool(getattr(t, "emulated", False)), threads, ref_lat.times, cand_lat.times).to_dict()
            )

    tols = {n: _tolerance_for(n, base, overrides, per_output) for n in names}
    unknown = sorted(set(per_output or {}) - set(names))
    if unknown:
        raise InputError(f"tolerance given for output {unknown[0]!r}, which the model does not have; outputs: {', '.join(names)}")
    report.criteria = {n: tols[n].describe() for n in names}

    for t, ref_res, got_res in per_target:
        accs = {lv: [_Accumulator(tols[n]) for n in names] for lv in levels}
        for lv in levels:
            # The reference at the other level: |ref(lv) - ref(other)| is onnxruntime's own noise.
            other = next((ref_res[o].outputs for o in levels if o != lv), None)
            for i, (r_out, g_out) in enumerate(zip(ref_res[lv].outputs, got_res[lv].outputs)):
                for k, (acc, r, g) in enumerate(zip(accs[lv], r_out, g_out)):
                    acc.add(r, g, other[i][k] if other is not None else None)
            report.outputs.extend(acc.result(n, lv, t.name) for acc, n in zip(accs[lv], names))

    # Cross-target: the candidate on each non-cpu target against the candidate on cpu.
    if needs_cpu:
        if not cand_on_cpu:
            res = _run_jobs(extra_cpu, [Job(model=cand_bytes, feeds=cand_feeds, level=lv) for lv in levels])
            for lv, r in zip(levels, res):
                if r.error:
                    raise CheckError(f"the candidate model fails on cpu (ort {lv}): {_first_line(r.error)}")
            cand_on_cpu = {lv: r.outputs for lv, r in zip(levels, res)}
        for t, _, got_res in per_target:
            if t.name == "cpu":
                continue
            worst = 0.0
            for lv in levels:
                accs = [_Accumulator(tols[n]) for n in names]
                for c_out, g_out in zip(cand_on_cpu[lv], got_res[lv].outputs):
                    for acc, c, g in zip(accs, c_out, g_out):
                        acc.add(c, g)
                for acc, n in zip(accs, names):
                    m = acc.result(n, lv, f"{t.name} vs cpu")
                    worst = max(worst, m.max_abs)
                    report.cross.append(m)
            report.notes.append(_cross_note(t.name, kind, worst))

    for t in target_objs:
        if getattr(t, "emulated", False):
            report.notes.append(
                f"{t.name} runs under emulation: its numbers are real aarch64 kernel results, its timings are not representative."
            )
    if kind == "int8" and any(t.name == "cpu" for t in target_objs) and u8s8_without_vnni(candidate):
        report.warnings.append(
            "U8S8 int8 model checked on an x86 CPU without VNNI (no avx512_vnni/avx_vnni): onnxruntime's "
            "U8S8 kernels can saturate int16 intermediate sums here, so results (and accuracy) may be worse "
            "than on VNNI or ARM CPUs; prefer S8S8 or 7-bit weights for such targets."
        )
    if measure_latency:
        from .latency import model_sizes

        report.sizes = model_sizes(reference, candidate, reference_path, candidate_path)
        native = next((lat for lat in report.latency if not lat["emulated"]), None)
        if native:
            report.latency_ms["enabled"] = {
                "reference": native["reference"]["median_ms"],
                "candidate": native["candidate"]["median_ms"],
            }
    if localize and not report.passed:
        from .localize import localize as _localize

        failing = next(o for o in report.outputs if not o.passed)
        t = next(t for t in target_objs if t.name == failing.target)
        thr = tols[failing.name]
        report.localization = _localize(
            reference, candidate, feeds[: max(1, localize_feeds)], kind=kind, tolerance=thr, target=t
        )
    logger.info(
        "check: %s on %s (%d feed(s), %s)",
        "PASS" if report.passed else "FAIL", ", ".join(t.name for t in target_objs), len(feeds), kind,
    )
