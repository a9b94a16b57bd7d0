"""onnxpress: compress ONNX models for edge devices by rewriting the ONNX graph.

The Python API takes and returns ``onnx.ModelProto`` (or paths)::

    import onnxpress
    result = onnxpress.optimize("model.onnx", recipe="lossless")
    result.save("model.opt.onnx")
"""
from __future__ import annotations

__version__ = "0.1.0"

from .api import OptimizeResult, check, inspect, optimize  # noqa: E402,F401

__all__ = ["OptimizeResult", "check", "inspect", "optimize", "__version__"]
