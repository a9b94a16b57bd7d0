"""Validation: run the original and the optimized model under onnxruntime, on one
or more targets, and report how far they differ, per output, with graph
optimizations off and on; localize a failure to the first diverging layer;
time both models; write the report as text, JSON, Markdown or HTML."""
from __future__ import annotations

from .compare import (
    LEVELS,
    CheckReport,
    OutputMetrics,
    Tolerance,
    compare,
    default_tolerance,
    make_session,
    model_kind,
    resolve_targets,
    u8s8_without_vnni,
)
from .inputs import InputSpec, input_specs, load_feeds, random_feeds, validate_feeds
from .latency import LatencyResult, model_sizes
from .localize import LayerError, Localization, localize, match_tensors
from .report import render_html, render_markdown, render_table, write_report

__all__ = [
    "LEVELS",
    "CheckReport",
    "InputSpec",
    "LatencyResult",
    "LayerError",
    "Localization",
    "OutputMetrics",
    "Tolerance",
    "compare",
    "default_tolerance",
    "input_specs",
    "load_feeds",
    "localize",
    "make_session",
    "match_tensors",
    "model_kind",
    "model_sizes",
    "random_feeds",
    "render_html",
    "render_markdown",
    "render_table",
    "resolve_targets",
    "u8s8_without_vnni",
    "validate_feeds",
    "write_report",
]
