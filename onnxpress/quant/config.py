"""Static int8 quantization settings: :class:`QuantConfig` and the per-target choice
of activation dtype.

Activation dtype per target (see ``shared/ARM.md`` and ``shared/PEERS.md``):

* ``arm64``: S8S8 (int8 activations, int8 weights). The aarch64 MLAS kernels
  (NEON ``sdot``/``smmla``, KleidiAI) are signed-by-signed; U8S8 is converted.
* ``x86`` with VNNI (``avx512_vnni`` or ``avx_vnni`` in ``/proc/cpuinfo``): U8S8.
  ``vpdpbusd`` multiplies u8 by s8 and accumulates in int32 without saturation, and
  it is the fast path of MLAS (S8S8 made int8 slower than fp32 on such a CPU).
* ``x86`` without VNNI (AVX2 / AVX-512BW only): U8S8 with the weights restricted to
  7 bits (``[-64, 63]``, ``reduce_range``). MLAS's U8S8 kernels there use
  ``vpmaddubsw``, which adds two u8*s8 products into a *saturating* int16: with
  full 8-bit weights ``255*127*2 = 64770`` overflows int16 and results silently
  degrade on such CPUs only. With 7-bit weights the sum is at most
  ``255*64*2 = 32640`` and cannot saturate. Measured on this project's AVX2 machine
  without VNNI (onnxruntime 1.32, 1 thread, percentile ranges, every layer int8,
  real inputs; latency vs the fp32 lossless model, loaded machine so +-0.1):

  ======================  ==============  ===============  ================
  model (metric)          U8S8, 7-bit w   U8S8, 8-bit w    S8S8, 8-bit w
  ======================  ==============  ===============  ================
  magika (top-1)          0.98, 0.57x     0.98, 0.59x      0.98, 0.81x
  PP-OCRv4 rec (exact)    0.875, 0.88x    0.646, 0.56x     0.667, 1.56x
  PP-OCRv4 det (IoU)      0.71, 1.00x     0.74, 1.01x      0.73, 1.50x
  ======================  ==============  ===============  ================

  8-bit weights lose PP-OCRv4 rec's accuracy to saturation (0.875 -> 0.646 exact
  strings), and S8S8 does not avoid it on this CPU (0.667: MLAS shifts signed
  activations to unsigned for the same ``vpmaddubsw`` kernels) while being slower
  than fp32 on the conv nets (its QDQ convolutions are not fused to QLinearConv
  on x86 and run as DequantizeLinear -> float Conv -> QuantizeLinear).

Ops kept float per target (``depthwise``, ``conv_transpose``; measured on the
AVX2 machine without VNNI, onnxruntime 1.32 CPU EP, 1 thread):

* depthwise ``Conv`` (``group > 1`` and one input channel per group, weight
  ``[C*k, 1, kh, kw]``): float on x86. onnxruntime runs fp32 depthwise as an NCHWc
  kernel, int8 depthwise 1.3-2.3x slower than that; keeping PP-OCRv4 rec's 14
  depthwise convs float took edge-int8 from 1.05x to 0.91-0.93x of fp32 latency,
  det from 0.94x to 0.92-0.93x (int8 depthwise are also noisy layers, so the
  sensitivity budget kept costly pointwise convs float instead: 9 instead of 12 on
  rec). int8 on arm64 (MLAS has NEON int8 depthwise kernels; speed not measured
  there, emulation says nothing about it).
* ``ConvTranspose``: float on every CPU target: the CPU EP has no int8
  ConvTranspose kernel, a QDQ ConvTranspose runs float with its weight
  dequantized on every run.

With ``float_layer_weights="int8"`` such nodes still store int8 weights, read
through ``Mul(Cast(int8), scale)``, which onnxruntime folds at load (a
DequantizeLinear would not be folded and would stop the NCHWc layout), unless
the sensitivity budget then needs more fp32 weights elsewhere
(:class:`onnxpress.quant.qdq.QuantizeInt8`).

A model quantized for one target runs on every target (QDQ is portable); only
speed, and on non-VNNI x86 the saturation risk, change.
"""
from __future__ import annotations

import dataclasses
import logging
import platform
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import InputError

__all__ = [
    "QuantConfig",
    "ACTIVATION_DTYPES",
    "RANGE_METHODS",
    "TARGET_RULES",
    "DEPTHWISE_FLOAT",
    "CONV_TRANSPOSE_FLOAT",
    "is_depthwise",
    "DEFAULT_OP_TYPES",
    "COMPUTE_OPS",
    "PASS_THROUGH_OPS",
    "SAME_SCALE_OPS",
    "OWN_SCALE_OPS",
    "ELEMENTWISE_OPS",
    "cpu_flags",
    "has_vnni",
]

logger = logging.getLogger(__name__)

ACTIVATION_DTYPES = ("uint8", "int8", "int16")
RANGE_METHODS = ("minmax", "percentile", "entropy", "mse")
#: Values of the per-target op rules ``depthwise`` and ``conv_transpose`` (``"auto"``
#: is resolved by :meth:`QuantConfig.for_target`).
TARGET_RULES = ("auto", "int8", "float")
#: Why a node was kept float by a target rule (the quantizer's report and stats).
DEPTHWISE_FLOAT = "depthwise Conv kept float (depthwise=float; int8 depthwise is slower than fp32 on x86)"
CONV_TRANSPOSE_FLOAT = "ConvTranspose kept float (conv_transpose=float; no int8 ConvTranspose kernel in the CPU EP)"

#: Ops with weights whose int8 kernels are the point of quantizing.
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops that move int8 data unchanged: their output reuses the input's scale and
#: onnxruntime drops the DQ -> op -> Q around them.
PASS_THROUGH_OPS = ("Transpose", "Reshape", "Slice", "Gather", "Squeeze", "Unsqueeze", "Flatten")
#: Ops quantized with the input's scale (onnxruntime runs them on int8 when the
#: scales of input and output are equal).
SAME_SCALE_OPS = ("MaxPool", "Resize")
#: Ops with int8 kernels that take their own output scale.
OWN_SCALE_OPS = ("AveragePool", "GlobalAveragePool")
#: Binary elementwise ops, quantized only when both operands are quantized activations.
ELEMENTWISE_OPS = ("Add", "Mul")

DEFAULT_OP_TYPES = (
    *COMPUTE_OPS,
    *ELEMENTWISE_OPS,
    "Concat",
    *SAME_SCALE_OPS,
    *OWN_SCALE_OPS,
    *PASS_THROUGH_OPS,
)


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor in ``/proc/cpuinfo`` (empty
    when the file is unreadable, e.g. not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def is_depthwise(group: int, weight_shape) -> bool:
    """A depthwise Conv: ``group > 1`` and one input channel per group (the weight
    ``[M, C/group, k...]`` has ``shape[1] == 1``, so ``group`` equals the input channels)."""
    return int(group) > 1 and weight_shape is not None and len(weight_shape) > 1 and weight_shape[1] == 1


def has_vnni(flags: set[str] | None = None) -> bool:
    """True when the x86 CPU has AVX-512 VNNI or AVX-VNNI (non-saturating u8*s8 dot products)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni"} & flags)


@dataclass
class QuantConfig:
    """How to quantize a model to static int8 QDQ.

    Attributes:
        activation_dtype: ``"uint8"`` (asymmetric), ``"int8"`` or ``"int16"``
            (QuantizeLinear of opset 21, or the com.microsoft domain below it;
            accuracy mode, no int16 kernels on CPU).
        activation_symmetric: symmetric activations (zero point 0). ``None``:
            asymmetric. Asymmetric int8 keeps Relu fusable (onnxruntime removes a
            Relu before a QuantizeLinear whose zero point is the type minimum) and
            gives post-Relu tensors all 256 levels.
        per_channel: per-output-channel weight scales (weights are always int8
            symmetric, zero point 0, range ``[-127, 127]``).
        weight_bits: 8, or 7 for ``[-64, 63]`` (U8S8 on x86 without VNNI).
        method: activation range method: ``minmax``, ``percentile``, ``entropy``
            (KL divergence, TensorRT), ``mse`` (minimum expected squared error).
        percentile: two-sided percentile for ``method="percentile"`` (in %).
        op_types: op types that may be quantized (see the module constants).
        exclude_nodes: node names kept float.
        exclude_op_types: op types kept float (wins over ``op_types``).
        overrides: per-tensor settings ``{tensor: {"bits", "symmetric", "min", "max"}}``;
            ``min``/``max`` replace the calibrated range, ``bits`` 16 makes that
            tensor int16 (uint16 when asymmetric), ``symmetric`` forces zero point 0.
        quantize_lstm: replace LSTM with com.microsoft ``DynamicQuantizeLSTM``
            (int8 per-channel weights, activations quantized on the fly).
        depthwise: ``"int8"`` or ``"float"``: depthwise Convs (see the module
            docstring); :meth:`for_target` chooses float on x86, int8 on arm64.
        conv_transpose: ``"int8"`` or ``"float"``: ConvTranspose nodes;
            :meth:`for_target` chooses float (no int8 kernel in the CPU EP).
    """

    activation_dtype: str = "uint8"
    activation_symmetric: bool | None = None
    per_channel: bool = True
    weight_bits: int = 8
    method: str = "minmax"
    percentile: float = 99.99
    op_types: tuple[str, ...] = DEFAULT_OP_TYPES
    exclude_nodes: tuple[str, ...] = ()
    exclude_op_types: tuple[str, ...] = ()
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    quantize_lstm: bool = True
    depthwise: str = "int8"
    conv_transpose: str = "int8"

    def __post_init__(self) -> None:
        self.op_types = tuple(self.op_types)
        self.exclude_nodes = tuple(self.exclude_nodes)
        self.exclude_op_types = tuple(self.exclude_op_types)
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~onnxpress.errors.InputError` on an invalid setting."""
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise InputError(f"activation_dtype {self.activation_dtype!r}; valid: {', '.join(ACTIVATION_DTYPES)}")
        if self.method not in RANGE_METHODS:
            raise InputError(f"range method {self.method!r}; valid: {', '.join(RANGE_METHODS)}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise InputError(f"percentile {self.percentile} must lie in (50, 100]")
        if self.weight_bits not in (7, 8):
            raise InputError(f"weight_bits {self.weight_bits} must be 7 or 8")
        for opt in ("depthwise", "conv_transpose"):
            if getattr(self, opt) not in ("int8", "float"):
                raise InputError(f"{opt} {getattr(self, opt)!r}; valid: auto (per target), int8, float")
        for name, o in self.overrides.items():
            bad = set(o) - {"bits", "symmetric", "min", "max"}
            if bad:
                raise InputError(f"override for tensor {name!r}: unknown key {sorted(bad)[0]!r}")
            if "bits" in o and int(o["bits"]) not in (8, 16):
                raise InputError(f"override for tensor {name!r}: bits must be 8 or 16")

    @property
    def symmetric_activations(self) -> bool:
        return bool(self.activation_symmetric)

    def quantizes(self, op_type: str, node_name: str | None = None) -> bool:
        """Whether nodes of ``op_type`` (named ``node_name``) may be quantized."""
        if node_name and node_name in self.exclude_nodes:
            return False
        return op_type in self.op_types and op_type not in self.exclude_op_types

    def target_float_reason(self, op_type: str, group: int = 1, weight_shape=None) -> str | None:
        """Why a node of ``op_type`` (``group``, weight shape) stays float by the
        per-target rules ``depthwise``/``conv_transpose``, or None."""
        if op_type == "Conv" and self.depthwise == "float" and is_depthwise(group, weight_shape):
            return DEPTHWISE_FLOAT
        if op_type == "ConvTranspose" and self.conv_transpose == "float":
            return CONV_TRANSPOSE_FLOAT
        return None

    def replace(self, **changes: Any) -> "QuantConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_target(cls, target: str = "cpu", flags: set[str] | None = None, **kwargs: Any) -> "QuantConfig":
        """A config whose activation dtype and weight range suit ``target``.

        Args:
            target: ``arm64``/``aarch64``/``arm`` -> S8S8; ``x86``/``x86_64``/``amd64``
                -> U8S8 (7-bit weights without VNNI); ``cpu`` means this machine.
            flags: CPU flags to decide VNNI (default: this machine's).
            **kwargs: other :class:`QuantConfig` fields (``depthwise``/``conv_transpose``
                ``"auto"`` keeps the target's choice: depthwise float on x86, int8
                on arm64; ConvTranspose float on both, the CPU EP has no int8 kernel).
        """
        t = target.lower()
        if t == "cpu":
            machine = platform.machine().lower()
            t = "arm64" if machine in ("aarch64", "arm64") or machine.startswith("arm") else "x86"
        if t in ("arm64", "aarch64", "arm"):
            settings: dict[str, Any] = {"activation_dtype": "int8", "weight_bits": 8, "depthwise": "int8"}
        elif t in ("x86", "x86_64", "amd64", "x64"):
            vnni = has_vnni(flags)
            settings = {"activation_dtype": "uint8", "weight_bits": 8 if vnni else 7, "depthwise": "float"}
            if not vnni:
                logger.info("x86 CPU without VNNI: U8S8 with 7-bit weights (avoids vpmaddubsw saturation)")
        else:
            raise InputError(f"unknown quantization target {target!r}; valid: cpu, x86, arm64")
        settings["conv_transpose"] = "float"
        settings.update({k: v for k, v in kwargs.items() if not (k in ("depthwise", "conv_transpose") and v == "auto")})
        return cls(**settings)
