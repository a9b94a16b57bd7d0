"""Passes over ONNX graphs: the interface, the registry and every registered pass.

Importing this package registers all passes (one module each)."""
from __future__ import annotations

from .base import (
    Context,
    Pass,
    PassManager,
    PassRecord,
    PassResult,
    get_pass,
    make_pass,
    register,
    registered_passes,
)
from . import lift_constants  # noqa: F401  (registers)

__all__ = [
    "Context",
    "Pass",
    "PassManager",
    "PassRecord",
    "PassResult",
    "get_pass",
    "make_pass",
    "register",
    "registered_passes",
]
