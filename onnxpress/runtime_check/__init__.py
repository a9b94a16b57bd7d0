"""Validation: run the original and the optimized model under onnxruntime and
report how far they differ, per output, with graph optimizations off and on."""
from __future__ import annotations

from .compare import LEVELS, CheckReport, OutputMetrics, compare, make_session
from .inputs import InputSpec, input_specs, load_feeds, random_feeds, validate_feeds

__all__ = [
    "LEVELS",
    "CheckReport",
    "InputSpec",
    "OutputMetrics",
    "compare",
    "input_specs",
    "load_feeds",
    "make_session",
    "random_feeds",
    "validate_feeds",
]
