"""Command line: ``onnxpress optimize|check|inspect|passes|recipes|demo``.

Exit codes: 0 success, 1 a check failed (or could not run), 2 bad input (not ONNX,
truncated, missing external data, unknown pass or recipe, unknown input name).
Errors are one line on stderr; ``--verbose`` adds the traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from . import __version__
from .errors import CheckError, InputError, OnnxpressError

__all__ = ["main", "build_parser"]

logger = logging.getLogger("onnxpress")


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onnxpress", description="Compress ONNX models by rewriting the graph, checked in onnxruntime."
    )
    parser.add_argument("--version", action="version", version=f"onnxpress {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("optimize", help="optimize a model with a recipe and check it")
    p.add_argument("model", help="input .onnx")
    p.add_argument("-o", "--output", required=True, help="output .onnx (written atomically)")
    p.add_argument("--recipe", default="lossless", help="built-in recipe name or path to a .toml (default: lossless)")
    p.add_argument("--passes", help="comma-separated pass names to run instead of the recipe's")
    p.add_argument("--skip", default="", help="comma-separated pass names to leave out")
    p.add_argument("--data", help=".npz file or folder of .npz feeds for the check (default: random inputs)")
    p.add_argument(
        "--calib",
        help="calibration data for recipes that need it: an .npz folder, an .npz with a sample axis, "
        "module:function yielding feed dicts, or random[:N] (smoke tests only)",
    )
    p.add_argument("--calib-limit", type=int, help="use at most this many calibration samples")
    p.add_argument("--no-check", action="store_true", help="do not compare with the original")
    p.add_argument("--atol", type=float, help="absolute tolerance of the check (default: the recipe's)")
    p.add_argument("--rtol", type=float, help="relative tolerance of the check (default: the recipe's)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE", help="size of a symbolic dim for random inputs")
    p.add_argument("--external-data", action="store_true", help="store weights in OUTPUT.data")
    p.add_argument("--strict", action="store_true", help="validate the model after every pass")
    p.add_argument("--json", dest="json_out", help="write the pass stats and check report as JSON here")

    c = sub.add_parser("check", help="compare two models in onnxruntime (optimizations off and on)")
    c.add_argument("reference")
    c.add_argument("candidate")
    c.add_argument("--data", help=".npz file or folder of .npz feeds (default: random inputs)")
    c.add_argument("--atol", type=float, default=1e-5)
    c.add_argument("--rtol", type=float, default=1e-4)
    c.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE")
    c.add_argument("--latency", action="store_true", help="also time both models")
    c.add_argument("--json", dest="json_out", help="write the report as JSON here")

    i = sub.add_parser("inspect", help="nodes by op type, parameters, weight bytes, MACs")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("passes", help="list registered passes")
    r = sub.add_parser("recipes", help="list built-in recipes, or show one")
    r.add_argument("action", nargs="?", choices=["show"])
    r.add_argument("name", nargs="?")
    d = sub.add_parser("demo", help="optimize the bundled MNIST MLP and report accuracy, size and latency")
    d.add_argument("-o", "--output", help="also save the optimized demo model here")
    return parser


def _dims(items: Sequence[str], model=None) -> dict[str, int]:
    out = {}
    for item in items:
        name, _, size = item.partition("=")
        if not size.isdigit():
            raise InputError(f"--dim {item!r}: expected NAME=SIZE")
        out[name] = int(size)
    if model is not None and out:
        from .runtime_check import input_specs

        known = {d for spec in input_specs(model) for d in (spec.shape or ()) if isinstance(d, str)}
        for name in out:
            if name not in known:
                raise InputError(
                    f"--dim {name}: the model has no symbolic dimension {name!r}; "
                    f"its symbolic dimensions are {', '.join(sorted(known)) or 'none'}"
                )
    return out


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def cmd_optimize(args: argparse.Namespace) -> int:
    from .api import optimize
    from .graph import load_proto
    from .runtime_check import compare, load_feeds, random_feeds, validate_feeds

    src = Path(args.model)
    original = load_proto(src)
    feeds = None
    if not args.no_check:
        feeds = load_feeds(args.data) if args.data else random_feeds(original, n=2, dim_sizes=_dims(args.dim, original))
        feeds = validate_feeds(original, feeds)
    calibration = None
    if args.calib:
        from .calibration import open_calibration

        calibration = open_calibration(args.calib, original, limit=args.calib_limit)
    start = time.perf_counter()
    result = optimize(
        original,
        recipe=args.recipe,
        calibration=calibration,
        passes=_split(args.passes) or None,
        skip=_split(args.skip),
        strict=args.strict,
    )
    wall = time.perf_counter() - start
    report = None
    if feeds is not None:
        rec = result.recipe
        report = compare(
            original,
            result.model,
            feeds,
            atol=args.atol if args.atol is not None else rec.atol,
            rtol=args.rtol if args.rtol is not None else rec.rtol,
        )
    b, a = result.before, result.after
    in_size = src.stat().st_size + sum(p.stat().st_size for p in src.parent.glob(src.name + ".data"))
    out = Path(args.output)
    result.save(out, external_data=True if args.external_data else None)
    out_size = out.stat().st_size + (out.with_name(out.name + ".data").stat().st_size if args.external_data else 0)
    print(f"{'':<12}{'before':>14}{'after':>14}")
    print(f"{'nodes':<12}{b.nodes:>14,}{a.nodes:>14,}")
    print(f"{'params':<12}{b.params:>14,}{a.params:>14,}")
    print(f"{'MACs':<12}{b.macs:>14,}{a.macs:>14,}")
    print(f"{'file size':<12}{_human(in_size):>14}{_human(out_size):>14}")
    print(f"time: {wall:.2f} s ({'passes ' + args.passes if args.passes else 'recipe ' + result.recipe.name})")
    print(result.pass_summary())
    if report is not None:
        print(report.to_table())
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "before": b.to_dict(),
                    "after": a.to_dict(),
                    "passes": result.pass_totals(),
                    "check": report.to_dict() if report else None,
                },
                indent=2,
            )
        )
    print(f"wrote {out}")
    if report is not None and not report.passed:
        print(f"onnxpress: check failed (tolerances missed); the optimized model was written to {out} anyway",
              file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .api import check
    from .runtime_check import load_feeds

    data = load_feeds(args.data) if args.data else None
    report = check(
        args.reference, args.candidate, data=data, atol=args.atol, rtol=args.rtol,
        dim_sizes=_dims(args.dim), measure_latency=args.latency,
    )
    print(report.to_table())
    if args.json_out:
        Path(args.json_out).write_text(report.to_json())
    return 0 if report.passed else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from .graph import load, load_proto, model_stats
    from .runtime_check import input_specs

    proto = load_proto(args.model)
    stats = model_stats(load(proto))
    if args.json:
        print(json.dumps(stats.to_dict(), indent=2))
        return 0
    size = Path(args.model).stat().st_size
    symbolic = any(not isinstance(d, int) for spec in input_specs(proto) for d in (spec.shape or ()))
    print(f"{args.model}: {stats.nodes:,} nodes, {stats.params:,} parameters, "
          f"{_human(stats.weight_bytes)} of weights, file {_human(size)}")
    print(
        f"MACs: {stats.macs:,}"
        + (" (each symbolic dimension counted as 1)" if symbolic else "")
        + (f" ({stats.macs_unknown_nodes} nodes of unknown shape)" if stats.macs_unknown_nodes else "")
    )
    print("opsets: " + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in stats.opsets.items()))
    for op, n in stats.op_types.items():
        print(f"  {op:<28}{n:>6}")
    return 0


def cmd_passes(args: argparse.Namespace) -> int:
    from .passes import registered_passes

    for name, cls in registered_passes().items():
        print(f"{name:<33}{'lossless' if cls.lossless else 'lossy':<10}{cls.summary}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from .recipes import builtin_recipes, load_recipe

    if args.action == "show":
        recipes = builtin_recipes()
        if args.name not in recipes:
            load_recipe(args.name or "")  # raises with the list of names
        print(recipes[args.name], end="")
        return 0
    for name in builtin_recipes():
        print(f"{name:<20}{load_recipe(name).description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(output=args.output)


COMMANDS = {
    "optimize": cmd_optimize,
    "check": cmd_check,
    "inspect": cmd_inspect,
    "passes": cmd_passes,
    "recipes": cmd_recipes,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``onnxpress`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return COMMANDS[args.command](args)
    except (InputError, CheckError, OnnxpressError, OSError) as exc:
        if args.verbose:
            raise
        if isinstance(exc, BrokenPipeError):  # output piped into e.g. head
            return 0
        if isinstance(exc, OSError):
            print(f"onnxpress: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        prefix = "check could not run" if isinstance(exc, CheckError) else "error"
        print(f"onnxpress: {prefix}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
