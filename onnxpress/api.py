"""Python API: takes and returns ``onnx.ModelProto`` (or paths), for export flows.

Example::

    import onnxpress
    result = onnxpress.optimize("model.onnx", recipe="edge-int8", calibration="calib/", check=True)
    assert result.report.passed
    result.save("model.opt.onnx")

    optimized, report = onnxpress.optimize(proto, recipe="lossless", check=True)  # unpacks too

Models over 2 GB work through paths: ``optimize("big.onnx")`` leaves external
data on disk (resolved beside the file); the passes read each weight when they
need it, onnxruntime (calibration) reads them from the file, and
:meth:`OptimizeResult.save` streams them back to disk one tensor at a time
(external data above 2 GB). Reading
:attr:`OptimizeResult.model` builds a self-contained ``ModelProto``, a second copy
of the weights: leave it alone for such models.
"""
from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, Union

import onnx

from .errors import InputError, InputNameError, UnknownPassError
from .graph import Model, ModelLike, ModelStats, load, load_proto, model_stats, save
from .graph.io import external_folders
from .passes import Context, PassManager, PassRecord, get_pass, make_pass
from .recipes import Recipe, load_recipe
from .runtime_check import CheckReport, compare, random_feeds, validate_feeds

__all__ = ["DEFAULT_RECIPE", "OptimizeResult", "optimize", "check", "inspect"]

logger = logging.getLogger(__name__)

Feeds = Mapping[str, Any]
#: What ``calibration=`` accepts (see :func:`onnxpress.calibration.open_calibration`).
CalibrationSource = Union[str, "os.PathLike[str]", Iterable[Feeds], Callable[..., Iterable[Feeds]]]

#: The recipe :func:`optimize` runs when none is given.
DEFAULT_RECIPE = "edge-int8"


@dataclass
class OptimizeResult:
    """What :func:`optimize` returns.

    Unpacks as ``(model, report)``: ``optimized, report = onnxpress.optimize(...)``.

    Attributes:
        model: the optimized model as a self-contained ``ModelProto`` (built on
            first access: a copy of the weights).
        working: the optimized model in the working IR; :meth:`save` streams it.
        records: one :class:`~onnxpress.passes.PassRecord` per pass run, in order.
        before, after: statistics of the original and the optimized model (nodes
            by op type, parameters, weight bytes, MACs).
        report: the check report, when a check ran (else None).
        seconds: wall time of the passes (s).
        recipe: the recipe that ran.
        calibration: one line describing the calibration data used, or None.
    """

    working: Model
    records: list[PassRecord] = field(default_factory=list)
    before: ModelStats | None = None
    after: ModelStats | None = None
    report: CheckReport | None = None
    seconds: float = 0.0
    recipe: Recipe | None = None
    _proto: onnx.ModelProto | None = field(default=None, repr=False)
    calibration: str | None = None

    @property
    def model(self) -> onnx.ModelProto:
        if self._proto is None:
            self._proto = self.working.to_proto()
        return self._proto

    def __iter__(self) -> Iterator[Any]:
        """``optimized, report = result``: the ModelProto and the check report."""
        return iter((self.model, self.report))

    def save(self, path: str | os.PathLike, external_data: bool | None = None) -> Path:
        """Write the optimized model atomically, streaming its weights.

        Args:
            path: destination ``.onnx``; its folder must exist.
            external_data: True stores the weights in ``<path>.data`` beside it;
                None (default) does so only above the 2 GB protobuf limit.

        Returns:
            The written path.

        Raises:
            OSError: the folder is missing or not writable; nothing partial is left.
        """
        return save(self.working, path, external_data=external_data)

    def pass_totals(self) -> dict[str, dict[str, float]]:
        """Stats of each pass summed over iterations, plus its total ``seconds``.
        A pass listed more than once in the pipeline (e.g. two ``prune-channels``
        rounds) gets one entry per listing: ``name#1``, ``name#2``, ..."""
        positions: dict[str, list[int]] = defaultdict(list)
        for r in self.records:
            if r.position not in positions[r.name]:
                positions[r.name].append(r.position)
        totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for r in self.records:
            where = sorted(positions[r.name])
            label = r.name if len(where) == 1 else f"{r.name}#{where.index(r.position) + 1}"
            for k, v in r.stats.items():
                totals[label][k] += v
            totals[label]["seconds"] += r.seconds
        return {k: dict(v) for k, v in totals.items()}

    def pass_summary(self) -> str:
        """One line per pass that changed something, e.g. ``  remove-noops: nodes_removed=3``."""
        lines = []
        for name, totals in self.pass_totals().items():
            changed = {k: v for k, v in totals.items() if k != "seconds" and v}
            if changed:
                lines.append(f"  {name}: " + ", ".join(f"{k}={v:g}" for k, v in changed.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: recipe, seconds, before/after stats, per-pass totals, check."""
        return {
            "recipe": self.recipe.name if self.recipe else None,
            "seconds": self.seconds,
            "calibration": self.calibration,
            "before": self.before.to_dict() if self.before else None,
            "after": self.after.to_dict() if self.after else None,
            "passes": self.pass_totals(),
            "check": self.report.to_dict() if self.report else None,
        }


def _resolve_recipe(recipe: str | os.PathLike | Recipe) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def optimize(
    model: ModelLike,
    recipe: str | os.PathLike | Recipe = DEFAULT_RECIPE,
    calibration: CalibrationSource | None = None,
    check: bool | Iterable[Feeds] | None = None,
    passes: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    strict: bool = False,
    latency: bool = False,
    **overrides: Mapping[str, Any],
) -> OptimizeResult:
    """Optimize a model with a recipe (or an explicit list of passes).

    Args:
        model: a path to an ``.onnx`` file (external data resolved beside it), an
            ``onnx.ModelProto`` (with its data loaded) or a working-IR
            :class:`~onnxpress.graph.Model`. The caller's model is not modified.
        recipe: a built-in recipe name (``onnxpress recipes`` lists them), a path to
            a ``.toml`` recipe, or a :class:`~onnxpress.recipes.Recipe`. Default
            ``"edge-int8"`` (static int8 QDQ), which needs ``calibration``.
        calibration: calibration data for passes that need it (quantization):
            anything :func:`onnxpress.calibration.open_calibration` accepts: a
            folder of ``.npz`` files (one sample each, keyed by input name), an
            ``.npz`` whose arrays have a leading sample axis, ``"module:function"``,
            ``"random:N"`` (smoke tests only), a callable, or a list of feed dicts
            ``{input name: array}`` with the model's declared shapes and dtypes.
            The recipe's ``[calibration] limit`` caps the samples read.
        check: True to compare with the original on 2 seeded random feeds, or an
            iterable of feed dicts to compare on; None/False skips the check. The
            criterion is the default of the optimized model's kind (fp32, fp16,
            int4, int8) with the recipe's ``[check]`` and ``[check.outputs.NAME]`` keys
            laid over it.
        passes: run these passes (registered names) instead of the recipe's; the
            recipe still gives the pipeline settings and tolerances.
        skip: pass names to leave out.
        strict: validate the model (``onnx.checker`` + onnxruntime load) after
            every modifying pass.
        latency: with a check, also time both models (mean ms per run, 1 thread)
            into ``report.latency_ms``.
        **overrides: per-pass options, keyed by pass name with ``-`` as ``_``,
            e.g. ``fold_constants={"max_output_bytes": 4 << 20}``.

    Returns:
        An :class:`OptimizeResult`; unpacks as ``(model, report)``.

    Raises:
        ModelLoadError, ExternalDataError: the model cannot be read.
        UnknownPassError: unknown recipe, pass or option (the message lists the
            valid names).
        InputError: the recipe needs calibration data and ``calibration`` is None.
        InputNameError: calibration or check feeds do not fit the model's inputs.
        PassError: a pass failed.
        CheckError, ReferenceModelError: onnxruntime cannot run a model for the check.
    """
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
    needs_calibration = (passes is None and rec.calibration_required) or any(
        getattr(get_pass(p.name), "needs_calibration", False) for p in pass_list
    )
    if needs_calibration and calibration is None:
        raise InputError(
            f"recipe {rec.name!r} needs calibration data: give --calib on the command line or "
            "calibration= in Python (a folder of .npz feeds, an .npz with a sample axis, "
            "'module:function', a list of feed dicts, or 'random:N' for smoke tests only), or choose "
            "a recipe without calibration, e.g. lossless"
        )
    # A path's external data is left on disk (read by the passes one weight at a
    # time); the eager original is read only for the check.
    if isinstance(model, Model):  # a working-IR model: exported, so the passes edit a copy
        model = model.to_proto()
    original = load_proto(model, external=True)
    lazy = isinstance(model, (str, os.PathLike)) and bool(external_folders(original))
    description = None
    if calibration is not None:
        from .calibration import CalibrationData, open_calibration

        if isinstance(calibration, Iterator):
            calibration = list(calibration)  # a one-shot generator: passes read the data several times
        if not isinstance(calibration, CalibrationData):
            calibration = open_calibration(calibration, original, limit=rec.calibration_limit)
        # Read every sample once now, so bad data (shape, dtype, NaN) fails before
        # any work is done and nothing is written; one sample at a time in memory.
        samples = sum(1 for _ in calibration)
        if samples == 0:
            raise InputNameError(f"calibration data {calibration.description!r} holds no samples")
        description = calibration.description
    working = load(original)
    before = model_stats(working)
    start = time.perf_counter()
    records = PassManager(
        pass_list, max_iterations=rec.max_iterations, fixed_point=rec.fixed_point, strict=strict
    ).run(working, Context(calibration=calibration, teacher=load(model) if lazy else original))
    seconds = time.perf_counter() - start
    after = model_stats(working)
    result = OptimizeResult(working, records, before, after, None, seconds, rec, calibration=description)
    if check:
        if lazy:
            original = load_proto(model)
        feeds: list[Any] = random_feeds(original, n=2) if check is True else list(check)
        # A throwaway export, not result.model: the result keeps no second copy of the weights.
        # The recipe's [check] and [check.outputs.NAME] keys over the default
        # criterion of the candidate's kind, as ``onnxpress optimize`` does.
        result.report = compare(
            original,
            working.to_proto(),
            feeds,
            tolerance=rec.check_options,
            per_output=rec.check_outputs or None,
            measure_latency=latency,
        )
    return result


def check(
    a: ModelLike,
    b: ModelLike,
    data: Iterable[Feeds] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    n: int = 2,
    seed: int = 0,
    dim_sizes: Mapping[str, int] | None = None,
    measure_latency: bool = False,
    *,
    targets: Sequence[Any] | None = None,
    runner: str | None = None,
    tolerance: Mapping[str, float] | None = None,
    per_output: Mapping[str, Mapping[str, float]] | None = None,
    repeats: int = 20,
    threads: int = 1,
    localize: bool = False,
) -> CheckReport:
    """Compare two models with onnxruntime optimizations off and on, on one or more targets.

    Args:
        a: the reference model (path or ModelProto).
        b: the candidate model.
        data: feed dicts; when None, ``n`` seeded random feeds are generated from
            ``a``'s declared inputs with ``dim_sizes`` for symbolic dims.
        atol, rtol: elementwise tolerance ``|a - b| <= atol + rtol * |a|`` for every
            output (None: the default of the candidate's kind: fp32 1e-5/1e-4,
            fp16 5e-2/1e-2 and cosine >= 0.999, int8 SNR >= 20 dB and cosine >= 0.99,
            weight-only int4 SNR >= 7 dB and cosine >= 0.9).
        measure_latency: also time both models on each target (median and p90 of
            ``repeats`` runs, ``threads`` intra-op threads) and measure their sizes.
        targets: ``"cpu"`` (default), ``"arm64"``, ``"arm64:MODEL"``, ``"ep:A,B"``
            or Target objects.
        runner: command reaching a board's Python for ``arm64``/``ep`` targets.
        tolerance: more criterion fields for every output (``min_snr_db``,
            ``min_cosine``, ``min_top1``, ``atol``, ``rtol``).
        per_output: criterion fields per output name.
        localize: when an output fails, find the first diverging layer.

    Returns:
        A :class:`~onnxpress.runtime_check.CheckReport` (truthy when passed).

    Raises:
        InputError: unknown target, missing runtime or provider, bad feeds.
        ReferenceModelError: the reference cannot run.
        CheckError: the candidate cannot run.
    """
    pa, pb = load_proto(a), load_proto(b)
    feeds = list(data) if data is not None else random_feeds(pa, n=n, seed=seed, dim_sizes=dim_sizes)
    feeds = validate_feeds(pa, feeds)
    return compare(
        pa, pb, feeds, atol=atol, rtol=rtol, measure_latency=measure_latency, latency_repeats=repeats,
        targets=targets, runner=runner, tolerance=tolerance, per_output=per_output, threads=threads,
        localize=localize,
        reference_path=a if isinstance(a, (str, os.PathLike)) else None,
        candidate_path=b if isinstance(b, (str, os.PathLike)) else None,
    )


def inspect(model: ModelLike) -> ModelStats:
    """Statistics of a model, subgraphs and local functions included.

    Args:
        model: a path (external data resolved beside it), a ``ModelProto`` or a
            working-IR :class:`~onnxpress.graph.Model`.

    Returns:
        A :class:`~onnxpress.graph.ModelStats`: ``nodes`` (count), ``op_types``
        (count per op type), ``params`` (weight elements), ``weight_bytes``
        (bytes), ``macs`` (multiply-accumulates of one run, symbolic dims
        counted as 1), ``opsets``.

    Raises:
        ModelLoadError, ExternalDataError: the model cannot be read.
    """
    return model_stats(load(model))
