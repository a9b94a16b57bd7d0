"""Python API: takes and returns ``onnx.ModelProto`` (or paths), for export flows.

Example::

    import onnxpress
    result = onnxpress.optimize("model.onnx", recipe="lossless", check=True)
    assert result.report.passed
    result.save("model.opt.onnx")
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import onnx

from .errors import InputNameError, UnknownPassError
from .graph import Model, ModelLike, ModelStats, load, load_proto, model_stats, save
from .passes import Context, PassManager, PassRecord, make_pass
from .recipes import Recipe, load_recipe
from .runtime_check import CheckReport, compare, random_feeds, validate_feeds

__all__ = ["OptimizeResult", "optimize", "check", "inspect"]

logger = logging.getLogger(__name__)

Feeds = Mapping[str, Any]


@dataclass
class OptimizeResult:
    """What :func:`optimize` returns.

    Attributes:
        model: the optimized model as a ``ModelProto`` (built on first access).
        working: the optimized model in the working IR; :meth:`save` streams it.
        records: one :class:`~onnxpress.passes.PassRecord` per pass run.
        before, after: statistics of the original and the optimized model.
        report: the check report, when a check ran.
        seconds: wall time of the passes (s).
        recipe: the recipe that ran.
    """

    working: Model
    records: list[PassRecord] = field(default_factory=list)
    before: ModelStats | None = None
    after: ModelStats | None = None
    report: CheckReport | None = None
    seconds: float = 0.0
    recipe: Recipe | None = None
    _proto: onnx.ModelProto | None = field(default=None, repr=False)

    @property
    def model(self) -> onnx.ModelProto:
        if self._proto is None:
            self._proto = self.working.to_proto()
        return self._proto

    def save(self, path: str | os.PathLike, external_data: bool | None = None) -> Path:
        """Write the optimized model atomically, streaming its weights (external
        data above 2 GB or when ``external_data`` is True). Returns the path."""
        return save(self.working, path, external_data=external_data)

    def pass_totals(self) -> dict[str, dict[str, float]]:
        """Stats of each pass summed over iterations, plus its total seconds."""
        totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for r in self.records:
            for k, v in r.stats.items():
                totals[r.name][k] += v
            totals[r.name]["seconds"] += r.seconds
        return {k: dict(v) for k, v in totals.items()}

    def pass_summary(self) -> str:
        """One line per pass that changed something, e.g. ``  remove-noops: nodes_removed=3``."""
        lines = []
        for name, totals in self.pass_totals().items():
            changed = {k: v for k, v in totals.items() if k != "seconds" and v}
            if changed:
                lines.append(f"  {name}: " + ", ".join(f"{k}={v:g}" for k, v in changed.items()))
        return "\n".join(lines)


def _resolve_recipe(recipe: str | os.PathLike | Recipe) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def optimize(
    model: ModelLike,
    recipe: str | os.PathLike | Recipe = "lossless",
    calibration: Iterable[Feeds] | None = None,
    check: bool | Iterable[Feeds] | None = None,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    strict: bool = False,
    **overrides: Mapping[str, Any],
) -> OptimizeResult:
    """Optimize a model with a recipe (or an explicit list of passes).

    Args:
        model: a path to an ``.onnx`` file (external data resolved beside it) or an
            ``onnx.ModelProto``. A ModelProto is not modified.
        recipe: a built-in recipe name (``onnxpress recipes`` lists them) or a path to
            a ``.toml`` recipe.
        calibration: calibration data for passes that need it (quantization, pruning):
            anything :func:`onnxpress.calibration.open_calibration` accepts (an .npz
            folder, an .npz with a sample axis, ``"module:function"``,
            ``"random:N"``, a list of feed dicts). Unused by lossless passes.
        check: True to compare with the original on seeded random inputs, or an
            iterable of feed dicts to compare on; None/False skips the check.
        passes: run these passes (registered names) instead of the recipe's.
        skip: pass names to leave out.
        strict: validate the model after every modifying pass.
        **overrides: per-pass options, keyed by pass name with ``-`` as ``_``,
            e.g. ``fold_constants={"max_output_bytes": 4 << 20}``.

    Returns:
        An :class:`OptimizeResult`.

    Raises:
        ModelLoadError, ExternalDataError: the model cannot be read.
        UnknownPassError: unknown recipe, pass or option.
        PassError: a pass failed.
        InputNameError, CheckError: the check's inputs or runs failed.
    """
    original = load_proto(model)
    rec = _resolve_recipe(recipe)
    plan = list(rec.passes) if passes is None else [(p, {}) for p in passes]
    options = {p: dict(o) for p, o in plan}
    for key, value in overrides.items():
        name = key.replace("_", "-")
        if name not in options:
            raise UnknownPassError(f"option override for {name!r}, which is not in the pipeline")
        options[name].update(value)
    for name in skip:
        make_pass(name)  # validate the name
    pass_list = [make_pass(name, **options[name]) for name, _ in plan if name not in set(skip)]

    if calibration is not None:
        from .calibration import CalibrationData, open_calibration

        if isinstance(calibration, Iterator):
            calibration = list(calibration)  # a one-shot generator: passes read the data several times
        if not isinstance(calibration, CalibrationData):
            calibration = open_calibration(calibration, original)
        # Read every sample once now, so bad data (shape, dtype, NaN) fails before
        # any work is done and nothing is written; one sample at a time in memory.
        samples = sum(1 for _ in calibration)
        if samples == 0:
            raise InputNameError(f"calibration data {calibration.description!r} holds no samples")
    working = load(original)
    before = model_stats(working)
    start = time.perf_counter()
    records = PassManager(
        pass_list, max_iterations=rec.max_iterations, fixed_point=rec.fixed_point, strict=strict
    ).run(working, Context(calibration=calibration, teacher=original))
    seconds = time.perf_counter() - start
    after = model_stats(working)
    result = OptimizeResult(working, records, before, after, None, seconds, rec)
    if check:
        feeds = random_feeds(original, n=2) if check is True else list(check)
        result.report = compare(original, result.model, feeds, atol=rec.atol, rtol=rec.rtol)
    return result


def check(
    a: ModelLike,
    b: ModelLike,
    data: Iterable[Feeds] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    n: int = 2,
    seed: int = 0,
    dim_sizes: Mapping[str, int] | None = None,
    measure_latency: bool = False,
) -> CheckReport:
    """Compare two models on the CPU with onnxruntime optimizations off and on.

    Args:
        a: the reference model (path or ModelProto).
        b: the candidate model.
        data: feed dicts; when None, ``n`` seeded random feeds are generated from
            ``a``'s declared inputs with ``dim_sizes`` for symbolic dims.
        atol, rtol: tolerance ``|a - b| <= atol + rtol * |a|``.

    Returns:
        A :class:`~onnxpress.runtime_check.CheckReport` (truthy when passed).
    """
    pa, pb = load_proto(a), load_proto(b)
    feeds = list(data) if data is not None else random_feeds(pa, n=n, seed=seed, dim_sizes=dim_sizes)
    feeds = validate_feeds(pa, feeds)
    return compare(pa, pb, feeds, atol=atol, rtol=rtol, measure_latency=measure_latency)


def inspect(model: ModelLike) -> ModelStats:
    """Statistics of a model: nodes by op type, parameters, weight bytes, MACs."""
    return model_stats(load(model))
