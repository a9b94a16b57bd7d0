"""Quantization: configs, range methods, QDQ placement (pass ``quantize-int8``),
fp16 conversion, and the inspection of what onnxruntime makes of a quantized model.

Importing this package registers its passes."""
from __future__ import annotations

from .config import QuantConfig, has_vnni
from .fp16 import ConvertFp16
from .int4 import QuantizeInt4Weights
from .inspect import count_int8_kernels, optimized_op_counts
from .qdq import QuantizeInt8, is_quantized

__all__ = [
    "ConvertFp16",
    "QuantConfig",
    "QuantizeInt4Weights",
    "QuantizeInt8",
    "count_int8_kernels",
    "has_vnni",
    "is_quantized",
    "optimized_op_counts",
]
