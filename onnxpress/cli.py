"""Command line: ``onnxpress optimize|check|inspect|passes|recipes|zoo|demo``.

Exit codes: 0 success, 1 a check failed (or could not run; for ``zoo``: any model
failed), 2 bad input (not ONNX,
truncated, missing external data, unknown pass or recipe, unknown input name,
unknown check target, missing target runtime, unavailable execution provider).
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
from .runtime_check.report import human_size as _human

__all__ = ["main", "build_parser"]

logger = logging.getLogger("onnxpress")



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
    p.add_argument(
        "--check", metavar="TARGETS", default="cpu",
        help="check on these targets after optimizing, comma-separated: cpu, arm64[:MODEL], ep:PROVIDER "
        "(default: cpu); exit 1 when a tolerance is missed (the output is still written)",
    )
    p.add_argument("--runner", metavar="CMD", help="run arm64/ep targets on a board through this command (e.g. 'ssh pi@board python3')")
    p.add_argument("--atol", action="append", default=[], metavar="[OUTPUT=]VALUE",
                   help="absolute tolerance of the check, for every output or one (repeatable; default: the recipe's, else by model kind)")
    p.add_argument("--rtol", action="append", default=[], metavar="[OUTPUT=]VALUE", help="relative tolerance, as --atol")
    p.add_argument("--report", metavar="FILE", help="also write the check report as .md, .html or .json")
    p.add_argument("--localize", action="store_true", help="when the check fails, find the first diverging layer")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE", help="size of a symbolic dim for random inputs")
    p.add_argument("--external-data", action="store_true", help="store weights in OUTPUT.data")
    p.add_argument("--strict", action="store_true", help="validate the model after every pass")
    p.add_argument("--json", dest="json_out", help="write the pass stats and check report as JSON here")

    c = sub.add_parser(
        "check", help="compare two models in onnxruntime (optimizations off and on) on one or more targets"
    )
    c.add_argument("reference")
    c.add_argument("candidate")
    c.add_argument("--data", help=".npz file or folder of .npz feeds (default: random inputs)")
    c.add_argument("--target", action="append", default=[], metavar="SPEC",
                   help="cpu (default), arm64, arm64:MODEL or ep:PROVIDER[,PROVIDER]; repeatable")
    c.add_argument("--runner", metavar="CMD", help="run arm64/ep targets on a board through this command (e.g. 'ssh pi@board python3')")
    c.add_argument("--atol", action="append", default=[], metavar="[OUTPUT=]VALUE",
                   help="absolute tolerance for every output or one output (repeatable; default by model kind: "
                   "fp32 1e-5, fp16 5e-2, int4 and int8 none)")
    c.add_argument("--rtol", action="append", default=[], metavar="[OUTPUT=]VALUE",
                   help="relative tolerance, as --atol (default: fp32 1e-4, fp16 1e-2, int4 and int8 none)")
    c.add_argument("--min-snr", action="append", default=[], metavar="[OUTPUT=]DB", help="minimum SNR in dB (default: int8 20, int4 7)")
    c.add_argument("--min-cosine", action="append", default=[], metavar="[OUTPUT=]VALUE", help="minimum cosine similarity (default: fp16 0.999, int8 0.99, int4 0.9)")
    c.add_argument("--min-top1", action="append", default=[], metavar="[OUTPUT=]VALUE",
                   help="minimum top-1 agreement of classifier-like outputs")
    c.add_argument("--min-agreement", action="append", default=[], metavar="[OUTPUT=]VALUE",
                   help="minimum fraction of equal elements of integer outputs (labels, indices; "
                   "default: fp16/int8 0.99, int4 0.9)")
    c.add_argument("--recipe", help="take the tolerances from this recipe's [check] tables")
    c.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE")
    c.add_argument("--latency", action="store_true", help="also time both models (median, p90) and measure their size")
    c.add_argument("--repeats", type=int, default=20, metavar="N", help="timed runs per model with --latency (default 20)")
    c.add_argument("--threads", type=int, default=1, metavar="T", help="intra-op threads with --latency (default 1)")
    c.add_argument("--localize", action="store_true", help="when an output fails, find the first diverging layer")
    c.add_argument("--json", dest="json_out", help="write the report as JSON here")
    c.add_argument("--report", metavar="FILE", help="write the report as Markdown (.md) or HTML (.html)")

    i = sub.add_parser("inspect", help="nodes by op type, parameters, weight bytes, MACs")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("passes", help="list registered passes")
    r = sub.add_parser(
        "recipes",
        help="list built-in recipes, show one (recipes show edge-int8), or validate a file (recipes check my.toml)",
    )
    r.add_argument("action", nargs="?", choices=["show", "check"])
    r.add_argument("name", nargs="?", help="a built-in recipe name or a path to a .toml")
    z = sub.add_parser(
        "zoo",
        help="optimize every .onnx under a folder, each in its own worker process, with JSON and CSV reports",
    )
    z.add_argument("dir", help="folder of .onnx models (searched recursively; external data beside each model)")
    z.add_argument("-o", "--output", required=True, help="output folder; results keep their relative paths")
    z.add_argument("--recipe", default="edge-int8", help="built-in recipe name or path to a .toml (default: edge-int8)")
    z.add_argument("--calib", help="calibration source for models that --calib-map does not match")
    z.add_argument("--calib-map", help="TOML map: glob = calibration source, or a table (calibration, data, limit, dims)")
    z.add_argument("--workers", type=int, help="parallel workers (default: CPU count; with --ray: the cluster's CPUs)")
    z.add_argument("--timeout", type=float, help="seconds per model; a worker past it is killed (default: no limit)")
    z.add_argument("--resume", action="store_true", help="skip models whose result exists for the same input hash and recipe")
    z.add_argument("--retry-failed", action="store_true", help="with --resume, redo earlier failures too")
    z.add_argument("--no-check", action="store_true", help="do not compare each result with its original")
    z.add_argument("--check-samples", type=int, default=4, help="feeds per check, from data/calibration (default: 4)")
    z.add_argument("--latency-repeats", type=int, default=20, help="timed runs per model and version (0: skip latency)")
    z.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE", help="symbolic dim size for random check feeds")
    z.add_argument("--strict", action="store_true", help="validate every model after each pass")
    z.add_argument("--ray", metavar="ADDRESS|auto|local", help="run the per-model jobs as Ray tasks on this cluster")
    z.add_argument("--report", help="path prefix of the .json and .csv reports (default: OUTPUT/zoo-report)")
    z.add_argument("--progress", dest="progress", action="store_true", default=None, help="always show the progress bar")
    z.add_argument("--no-progress", dest="progress", action="store_false", help="never show the progress bar")
    d = sub.add_parser("demo", help="optimize the bundled MNIST MLP and report accuracy, size and latency")
    d.add_argument("-o", "--output", help="also save the optimized demo model here")
    su = sub.add_parser("setup", help="set up a check target: the emulated arm64 onnxruntime (QEMU + aarch64 wheels)")
    su.add_argument("what", choices=["arm64"], help="what to set up")
    su.add_argument("dir", nargs="?", help="folder (default: $ONNXPRESS_ARM64_DIR or ~/.cache/onnxpress/arm64)")
    su.add_argument("--cpu", action="append", metavar="MODEL",
                    help="QEMU CPU model to prepare (repeatable; default: neoverse-n1 and cortex-a53)")
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


_TARGET_KINDS = ("cpu", "arm64", "ep")


def _target_specs(items: Sequence[str]) -> list[str]:
    """Target specs from repeated and/or comma-separated options; the provider
    list of ``ep:A,B`` keeps its commas (a piece that starts no target kind
    belongs to the ``ep:`` before it)."""
    specs: list[str] = []
    for item in items:
        for piece in (x.strip() for x in item.split(",")):
            if not piece:
                continue
            if specs and specs[-1].lower().startswith("ep:") and piece.partition(":")[0].lower() not in _TARGET_KINDS:
                specs[-1] += "," + piece
            else:
                specs.append(piece)
    return specs


_TOLERANCE_FLAGS = (
    ("atol", "atol", "--atol"),
    ("rtol", "rtol", "--rtol"),
    ("min_snr", "min_snr_db", "--min-snr"),
    ("min_cosine", "min_cosine", "--min-cosine"),
    ("min_top1", "min_top1", "--min-top1"),
    ("min_agreement", "min_agreement", "--min-agreement"),
)


def _tolerance_args(args: argparse.Namespace, recipe=None) -> tuple[dict, dict]:
    """(criterion fields for every output, fields per output name) from a recipe's
    ``[check]`` tables, then the command line (``--atol 1e-3``, ``--atol probs=1e-2``)."""
    every = dict(recipe.check_options) if recipe is not None else {}
    per = {k: dict(v) for k, v in recipe.check_outputs.items()} if recipe is not None else {}
    for attr, key, flag in _TOLERANCE_FLAGS:
        for item in getattr(args, attr, None) or []:
            name, sep, value = str(item).rpartition("=")
            try:
                v = float(value)
            except ValueError:
                raise InputError(f"{flag} {item!r}: expected VALUE or OUTPUT=VALUE") from None
            if sep:
                per.setdefault(name, {})[key] = v
            else:
                every[key] = v
    return every, per


def _report_path(path: str | None) -> str | None:
    if path and Path(path).suffix.lower() not in (".md", ".markdown", ".html", ".htm", ".json"):
        raise InputError(f"--report {path!r}: use a .md, .html or .json file name")
    return path


def cmd_optimize(args: argparse.Namespace) -> int:
    from .api import optimize
    from .graph import load_proto
    from .graph.io import external_folders
    from .runtime_check import compare, load_feeds, random_feeds, validate_feeds

    src = Path(args.model)
    # Without a check, external data stays on disk: optimize() then reads the
    # model from its path, one weight at a time.
    original = load_proto(src, external=args.no_check)
    lazy = bool(external_folders(original))
    feeds = None
    targets = []
    if not args.no_check:
        from .runtime_check import resolve_targets

        _report_path(args.report)
        tolerance, per_output = _tolerance_args(args)  # validate the flags before any work
        feeds = load_feeds(args.data) if args.data else random_feeds(original, n=2, dim_sizes=_dims(args.dim, original))
        feeds = validate_feeds(original, feeds)
        targets = resolve_targets(_target_specs([args.check]) or ["cpu"], args.runner)
    calibration = None
    if args.calib:
        from .calibration import open_calibration

        calibration = open_calibration(args.calib, original, limit=args.calib_limit)
    start = time.perf_counter()
    result = optimize(
        src if lazy else original,
        recipe=args.recipe,
        calibration=calibration,
        passes=_split(args.passes) or None,
        skip=_split(args.skip),
        strict=args.strict,
    )
    wall = time.perf_counter() - start
    report = None
    if feeds is not None:
        tolerance, per_output = _tolerance_args(args, result.recipe)
        try:
            report = compare(
                original, result.model, feeds, targets=targets, tolerance=tolerance, per_output=per_output,
                localize=args.localize, reference_path=src,
            )
        finally:
            for t in targets:
                getattr(t, "close", lambda: None)()
        report.candidate_name = Path(args.output).name
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
        if args.report:
            report.write(args.report)
            print(f"wrote {args.report}")
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
    from .recipes import load_recipe
    from .runtime_check import load_feeds

    _report_path(args.report)
    if args.repeats < 1 or args.threads < 1:
        raise InputError("--repeats and --threads must be at least 1")
    tolerance, per_output = _tolerance_args(args, load_recipe(args.recipe) if args.recipe else None)
    data = load_feeds(args.data) if args.data else None
    report = check(
        args.reference, args.candidate, data=data, dim_sizes=_dims(args.dim), measure_latency=args.latency,
        targets=_target_specs(args.target) or ["cpu"], runner=args.runner, tolerance=tolerance,
        per_output=per_output, repeats=args.repeats, threads=args.threads, localize=args.localize,
    )
    print(report.to_table())
    if args.json_out:
        Path(args.json_out).write_text(report.to_json())
    if args.report:
        report.write(args.report)
        print(f"wrote {args.report}")
    return 0 if report.passed else 1


def _gzip_size(path: Path) -> int:
    """Bytes of the model (file plus its external data, else the serialized
    proto) compressed by gzip at level 6, streamed: what a sparse model (pruned
    zeros stored densely) really costs to ship."""
    import gzip
    import io

    class _Count(io.RawIOBase):
        n = 0

        def writable(self) -> bool:
            return True

        def write(self, b) -> int:
            self.n += len(b)
            return len(b)

    import onnx

    sink = _Count()
    skeleton = onnx.load(str(path), load_external_data=False)
    with gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=6, mtime=0) as gz:
        files = [path]
        seen = set()
        for init in skeleton.graph.initializer:
            for entry in init.external_data:
                if entry.key == "location" and entry.value not in seen:
                    seen.add(entry.value)
                    files.append(path.parent / entry.value)
        for f in files:
            if f.is_file():
                with open(f, "rb") as src:
                    while chunk := src.read(1 << 20):
                        gz.write(chunk)
    return sink.n


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
    print(f"compressed (gzip): {_human(_gzip_size(Path(args.model)))}")
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

    if args.action in ("show", "check"):
        if not args.name:
            raise InputError(
                f"recipes {args.action}: name a recipe; built-in recipes: {', '.join(builtin_recipes())}"
            )
        recipe = load_recipe(args.name)  # raises with the line and the list of valid names
        if args.action == "show":
            print(recipe.text, end="" if recipe.text.endswith("\n") else "\n")
        else:
            passes = ", ".join(name for name, _ in recipe.passes)
            print(f"{recipe.source}: ok: recipe {recipe.name!r}, {len(recipe.passes)} passes ({passes})"
                  + (", needs calibration" if recipe.calibration_required else ""))
        return 0
    for name in builtin_recipes():
        recipe = load_recipe(name)
        needs = " [needs calibration]" if recipe.calibration_required else ""
        print(f"{name:<20}{recipe.description}{needs}")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from .zoo import run_zoo, summary_table

    run = run_zoo(
        args.dir,
        args.output,
        args.recipe,
        calib=args.calib,
        calib_map=args.calib_map,
        workers=args.workers,
        timeout=args.timeout,
        resume=args.resume,
        retry_failed=args.retry_failed,
        check=not args.no_check,
        check_samples=args.check_samples,
        latency_repeats=args.latency_repeats,
        dims=_dims(args.dim),
        strict=args.strict,
        ray_address=args.ray,
        report=args.report,
        progress=args.progress,
    )
    print(summary_table(run.records))
    print(f"reports: {run.report_json} {run.report_csv} ({run.seconds:.1f} s)")
    return 0 if run.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(output=args.output)


def cmd_setup(args: argparse.Namespace) -> int:
    from .runtime_check.arm64 import DEFAULT_CPU_MODELS, setup_arm64

    setup_arm64(args.dir, cpu_models=tuple(args.cpu) if args.cpu else DEFAULT_CPU_MODELS, log=print)
    return 0


COMMANDS = {
    "optimize": cmd_optimize,
    "check": cmd_check,
    "inspect": cmd_inspect,
    "passes": cmd_passes,
    "recipes": cmd_recipes,
    "zoo": cmd_zoo,
    "demo": cmd_demo,
    "setup": cmd_setup,
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
        if isinstance(exc, BrokenPipeError):  # output piped into e.g. head
            return 0
        if args.verbose:  # the traceback, then the same one line and exit code
            import traceback

            traceback.print_exc()
        if isinstance(exc, OSError):
            print(f"onnxpress: error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        prefix = "check could not run" if isinstance(exc, CheckError) else "error"
        print(f"onnxpress: {prefix}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InputError) else 1

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
