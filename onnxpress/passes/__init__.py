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
from . import (  # noqa: F401  (importing registers the passes)
    eliminate_common_subexpressions,
    eliminate_dead_code,
    fold_batchnorm,
    fold_constants,
    fuse_hardswish,
    inline_constant_if,
    lift_constants,
    merge_initializers,
    remove_noops,
    remove_unused_initializers,
    simplify_reshape,
)
from .. import quant  # noqa: F401,E402  (registers convert-fp16, quantize-int4-weights)
from .. import prune  # noqa: F401,E402  (registers the pruning and distillation passes)

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
