"""The pass interface, the registry and the pass manager.

A pass is a small class with a registered ``name``, typed options as dataclass
fields, and ``run(model, ctx) -> PassResult``. ``PassResult.modified`` is derived
from real edits, so running an idempotent pass twice reports ``modified=False`` the
second time. :class:`PassManager` runs a sequence of passes to a fixed point with an
iteration cap, times each pass, and in strict mode validates the model after each
pass (``onnx.checker`` full check plus an onnxruntime load), raising
:class:`~onnxpress.errors.PassError` that names the pass.

The shape follows onnx/ir-py's ``passes`` infrastructure (PassResult, fixed-point
PassManager with a step cap, PassError naming the failing pass).
"""
from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable

from ..errors import InputError, PassError, UnknownPassError
from ..graph import Model, NameGenerator, TensorType, infer_shapes

__all__ = [
    "Context",
    "Pass",
    "PassResult",
    "PassRecord",
    "PassManager",
    "register",
    "get_pass",
    "registered_passes",
    "make_pass",
]

logger = logging.getLogger(__name__)


@dataclass
class Context:
    """What a pass may need besides the model.

    Attributes:
        calibration: calibration data (an iterable of feed dicts), if any.
        teacher: the original model, for passes that reproduce its activations.
        target: the deployment target name (``cpu``, ``arm64``...).
        options: free-form per-run settings.
    """

    calibration: Any = None
    teacher: Any = None
    target: str = "cpu"
    options: dict[str, Any] = field(default_factory=dict)

    def model_state(self, key: str, model: Any) -> set:
        """A set kept in ``options[key]`` for ``model`` (what a pass already did
        to it), keyed by the model object itself: a new model that reuses a freed
        model's ``id`` starts with an empty set."""
        table = self.options.setdefault(key, {})
        entry = table.get(id(model))
        if entry is None or entry[0]() is not model:
            entry = (weakref.ref(model), set())
            table[id(model)] = entry
        return entry[1]


@dataclass
class PassResult:
    """Outcome of one pass run.

    Attributes:
        modified: True when the pass changed the model.
        stats: what it changed, in numbers (e.g. ``{"nodes_removed": 3}``).
    """

    modified: bool
    stats: dict[str, int | float] = field(default_factory=dict)


@dataclass
class PassRecord:
    """One pass run inside a :class:`PassManager` run."""

    name: str
    iteration: int
    modified: bool
    seconds: float
    stats: dict[str, int | float]
    position: int = 0  # index of the pass in the pass manager's list (a pass may be listed twice)


class Pass:
    """Base class of every pass. Subclasses are dataclasses whose fields are options.

    Class attributes:
        name: registered name, e.g. ``"fold-constants"``.
        lossless: True when outputs are unchanged up to float rounding.
        summary: one line for ``onnxpress passes``.
    """

    name: ClassVar[str] = ""
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    def run(self, model: Model, ctx: Context) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError(f"{type(self).__name__}.run")

    # Helpers shared by passes -------------------------------------------
    @staticmethod
    def shapes(model: Model) -> dict[str, TensorType]:
        """Shapes inferred from the inputs (never trusting declared shapes)."""
        return infer_shapes(model)

    @staticmethod
    def names(model: Model) -> NameGenerator:
        return NameGenerator(model)

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self) if dataclasses.is_dataclass(self) else {}


_REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator adding a pass to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"pass name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type[Pass]]:
    """All registered passes by name (importing :mod:`onnxpress.passes` fills it)."""
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as ``name``.

    Raises:
        UnknownPassError: no such pass; the message lists the valid names.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownPassError(
            f"unknown pass {name!r}; valid passes: {', '.join(sorted(_REGISTRY))}"
        ) from None


def make_pass(name: str, **options: Any) -> Pass:
    """Instantiate the pass ``name`` with ``options``.

    Raises:
        UnknownPassError: unknown pass, or an option the pass does not have.
    """
    cls = get_pass(name)
    valid = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    bad = sorted(set(options) - valid)
    if bad:
        raise UnknownPassError(
            f"pass {name!r} has no option {bad[0]!r}; valid options: {', '.join(sorted(valid)) or 'none'}"
        )
    return cls(**options)


def validate(model: Model, pass_name: str) -> None:
    """Strict-mode check: ``onnx.checker`` full check and an onnxruntime load.

    Raises:
        PassError: naming ``pass_name`` and the checker's or onnxruntime's message.
    """
    import onnx
    import onnxruntime as ort

    try:
        proto = model.to_proto()
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # the checker raises ValidationError and InferenceError
        raise PassError(pass_name, f"model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise PassError(pass_name, f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc


class PassManager:
    """Run passes in order, to a fixed point, in stages.

    Lossless passes (``Pass.lossless``) repeat until none modifies the model; a
    lossy pass (pruning, distillation, quantization) runs only once the lossless
    passes listed before it have reached their fixed point, so it sees the
    simplest graph they make (on PP-OCRv4 rec a single sweep still leaves the
    run-time shape arithmetic of dynamic Reshapes, which hid 2 of its 27 channel
    groups from ``prune-channels`` and made it skip 4 more). Lossy passes in a
    row run as one sweep, each once (they are one-shot per model and context).
    At the end the lossless passes run to their fixed point again, on the
    compressed model. So ``[a, b, PRUNE, DISTILL, c, QUANT]`` runs ``(a, b)*``,
    ``PRUNE, DISTILL``, ``(a, b, c)*``, ``QUANT``, ``(a, b, c)*``.
    ``fixed_point=False`` runs the sequence once, as given.

    Args:
        passes: pass instances, run in this order each iteration.
        max_iterations: cap on repetitions of each stage's sweep (>= 1).
        fixed_point: False runs the sequence once.
        strict: validate the model after every pass that modified it.
    """

    def __init__(
        self,
        passes: Iterable[Pass],
        max_iterations: int = 8,
        fixed_point: bool = True,
        strict: bool = False,
    ) -> None:
        self.passes = list(passes)
        self.max_iterations = max(1, max_iterations)
        self.fixed_point = fixed_point
        self.strict = strict

    def _stages(self) -> list[tuple[list[Pass], bool]]:
        """``(passes, repeat)`` in run order (see the class docstring)."""
        if not self.fixed_point:
            return [(self.passes, False)]
        stages: list[tuple[list[Pass], bool]] = []
        lossless: list[Pass] = []
        pending = False  # lossless passes not yet run to their fixed point
        for p in self.passes:
            if p.lossless:
                lossless.append(p)
                pending = True
                continue
            if pending:
                stages.append((list(lossless), True))
                pending = False
            if stages and not stages[-1][1]:  # lossy passes in a row: one sweep
                stages[-1][0].append(p)
            else:
                stages.append(([p], False))
        if lossless:
            stages.append((lossless, True))
        return stages

    def run(self, model: Model, ctx: Context | None = None) -> list[PassRecord]:
        """Rewrite ``model`` in place; return one record per pass run
        (``iteration`` counts sweeps over the whole run, from 1).

        Raises:
            PassError: a pass raised, or (strict) left an invalid model.
        """
        ctx = ctx or Context()
        records: list[PassRecord] = []
        iteration = 0
        for passes, repeat in self._stages():
            for _ in range(self.max_iterations if repeat else 1):
                iteration += 1
                if not self._sweep(passes, model, ctx, iteration, records) or not repeat:
                    break
            else:
                logger.warning("pass manager stopped at the iteration cap (%d)", self.max_iterations)
        return records

    def _sweep(self, passes: list[Pass], model: Model, ctx: Context, iteration: int, records: list[PassRecord]) -> bool:
        """Run ``passes`` once in order; True when one of them modified the model."""
        any_modified = False
        for p in passes:
            start = time.perf_counter()
            try:
                result = p.run(model, ctx)
            except (PassError, InputError):
                raise  # a user error inside a pass (e.g. no calibration data) keeps its type
            except Exception as exc:
                raise PassError(p.name, f"{type(exc).__name__}: {exc}") from exc
            seconds = time.perf_counter() - start
            position = next(i for i, q in enumerate(self.passes) if q is p)
            records.append(PassRecord(p.name, iteration, result.modified, seconds, dict(result.stats), position))
            logger.info(
                "%s (iteration %d): %s in %.3fs %s",
                p.name,
                iteration,
                "modified" if result.modified else "unchanged",
                seconds,
                result.stats,
            )
            if result.modified:
                any_modified = True
                if self.strict:
                    validate(model, p.name)
        return any_modified
