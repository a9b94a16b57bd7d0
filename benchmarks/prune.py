"""Structured pruning with and without distillation on the real CNN models.

For each model (magika, PP-OCRv4 det and rec, ddddocr) and each channel ratio:
the lossless fp32 model, then ``prune-channels`` (filter L1 importance) at that
ratio of every dependency group (``allocation="uniform"``), then ``distill``
(the original model as teacher). At ``--variant-ratios`` (default 30%) the other
prune-channels settings of ``VARIANTS`` get a row each: "uniform, act." (the
activation-aware importance) and "global MACs[, act.]" (``allocation="global"``,
``budget="macs"``: the MACs the uniform allocation removes at that ratio,
shared out between groups by their measured sensitivity, at most 60% of a
group; with L1, activation ("act.") or reconstruction ("recon.", ThiNet's
greedy) importance inside a group; ", 8": kept counts
rounded up to multiples of 8; ", 2 steps": progressive, prune + distill twice,
each round at ``1 - sqrt(1 - ratio)`` of the model at hand; its "pruned" column
is the model before the last distill). Columns: MACs (M, on
the latency input's shape), size (MB, serialized), onnxruntime CPU latency (1 thread, ORT_ENABLE_ALL,
median of 20 runs on one real input), the task metric of the pruned and of the
distilled model on real evaluation inputs (disjoint from the calibration
inputs), the held-out output SNR against the fp32 model, and the distillation
time. A distilled model has the pruned model's shapes (MACs, size and latency
are the pruned model's).

Task metrics: magika top-1 agreement with fp32; PP-OCR det text-map IoU with
fp32 (threshold 0.3); PP-OCR rec and ddddocr exact-string rate on rendered text
(ground truth).

Usage::

    python benchmarks/prune.py --out benchmarks/results/prune.md
    python benchmarks/prune.py --models magika --ratios 0.3
    python benchmarks/prune.py --models magika ppocr_det --ratios 0.3 --variant-ratios 0.3
    python benchmarks/prune.py --models ppocr_det --ratios --variants "global MACs, act., 8" --out /tmp/det.md
    python benchmarks/prune.py --refresh benchmarks/results/prune.json --out benchmarks/results/prune.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback

import numpy as np
import onnx

from onnxpress.graph import load, model_stats
from onnxpress.passes import Context, PassManager, make_pass
from onnxpress.recipes import load_recipe
from onnxpress.runtime_check import make_session
from onnxpress.testing import realmodels as rm

CALIB_SEED, EVAL_SEED = 100, 7
MODELS = ("magika", "ppocr_det", "ppocr_rec", "ddddocr")
N_CALIB = {"magika": 24, "ppocr_det": 6, "ppocr_rec": 16, "ddddocr": 12}
N_EVAL = {"magika": 64, "ppocr_det": 8, "ppocr_rec": 48, "ddddocr": 32}
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5)
VARIANT_RATIOS = (0.3,)
# prune-channels options per row label (see onnxpress/prune/channels.py); "uniform"
# at every --ratios, the others at --variant-ratios.
VARIANTS = {
    "uniform": {},
    "uniform, act.": {"importance": "activation"},
    "global MACs": {"allocation": "global", "budget": "macs", "max_ratio": 0.6, "sensitivity_samples": 4},
    "global MACs, act.": {
        "allocation": "global", "budget": "macs", "importance": "activation", "max_ratio": 0.6, "sensitivity_samples": 4,
    },
    "global MACs, act., 8": {
        "allocation": "global", "budget": "macs", "importance": "activation", "max_ratio": 0.6, "sensitivity_samples": 4,
        "round_to": 8,
    },
    "global MACs, recon., 8": {
        "allocation": "global", "budget": "macs", "importance": "reconstruction", "max_ratio": 0.6, "sensitivity_samples": 4,
        "round_to": 8,
    },
    # progressive: "steps" prune-channels + distill rounds, each at 1 - (1 - ratio) ** (1 / steps)
    # of the model at hand (uniform MACs ~ (1 - r)^2 per round, so about the MACs of one round at ratio)
    "global MACs, act., 8, 2 steps": {
        "allocation": "global", "budget": "macs", "importance": "activation", "max_ratio": 0.6, "sensitivity_samples": 4,
        "round_to": 8, "steps": 2,
    },
}


def prune_steps(model, ctx, ratio: float, options: dict) -> float:
    """Run the prune-channels rounds of a variant on ``model`` (all but the last
    followed by ``distill``); returns the seconds spent in those distills."""
    options = dict(options)
    steps = int(options.pop("steps", 1))
    step_ratio = 1 - (1 - ratio) ** (1 / steps)
    seconds = 0.0
    for i in range(steps):
        PassManager([make_pass("prune-channels", ratio=step_ratio, **options)]).run(model, ctx)
        if i < steps - 1:
            start = time.perf_counter()
            PassManager([make_pass("distill")]).run(model, ctx)
            seconds += time.perf_counter() - start
    return seconds


def metric(name, path, ref, outs, labels) -> float:
    if name == "magika":
        return float(np.mean([r.argmax() == g.argmax() for r, g in zip(ref, outs)]))
    if name == "ppocr_det":
        inter = sum(np.sum((r > 0.3) & (g > 0.3)) for r, g in zip(ref, outs))
        union = sum(np.sum((r > 0.3) | (g > 0.3)) for r, g in zip(ref, outs))
        return float(inter / max(union, 1))
    decode = rm.ctc_decode_ppocr if name == "ppocr_rec" else rm.ctc_decode_ddddocr
    return float(np.mean([decode(path, g) == y for g, y in zip(outs, labels)]))


METRIC_NAME = {"magika": "top-1 agr.", "ppocr_det": "text IoU", "ppocr_rec": "exact str.", "ddddocr": "exact str."}


def outputs(model, feeds):
    sess = make_session(model, "enabled")
    return [sess.run(None, f)[0] for f in feeds]


def snr(ref, got) -> float:
    num = sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r in ref)
    den = sum(float(np.sum((np.asarray(r, np.float64) - g) ** 2)) for r, g in zip(ref, got))
    return 10 * np.log10(num / max(den, 1e-300))


def macs_at(model: onnx.ModelProto, feed) -> int:
    """MACs of Conv/ConvTranspose/Gemm/MatMul in one run on ``feed``, from the
    shapes onnxruntime really produces (shape inference cannot follow every
    dynamic Reshape of these models)."""
    linear = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and n.domain in ("", "ai.onnx")]
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    work = onnx.ModelProto()
    work.CopyFrom(model)
    have = {o.name for o in work.graph.output} | {i.name for i in work.graph.input} | set(inits)
    wanted = []
    for n in linear:
        for t in [*n.input[:2], n.output[0]]:
            if t and t not in have:
                work.graph.output.add().name = t
                have.add(t)
            wanted.append(t)
    names = [o.name for o in work.graph.output]
    sess = make_session(work, "disabled")
    values = dict(zip(names, sess.run(names, feed)))
    shape = lambda t: inits[t] if t in inits else (np.shape(feed[t]) if t in feed else np.shape(values[t]))
    total = 0
    for n in linear:
        x, w, y = shape(n.input[0]), shape(n.input[1]), shape(n.output[0])
        if n.op_type == "Conv":
            total += int(np.prod(y)) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":
            total += int(np.prod(x)) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            trans_a = any(a.name == "transA" and a.i for a in n.attribute)
            total += int(np.prod(y)) * int(x[0] if trans_a else x[-1])
        else:
            total += int(np.prod(y)) * int(x[-1])
    return total


def latency_ms(model, feed, runs: int = 20) -> float:
    sess = make_session(model, "enabled", threads=1)
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def bench_model(name: str, ratios, variant_ratios=VARIANT_RATIOS, variants=tuple(VARIANTS)) -> list[dict]:
    path = rm.fetch(name)
    teacher = onnx.load(str(path))
    calib = rm.real_inputs(name, n=N_CALIB[name], seed=CALIB_SEED)
    feeds, labels = rm.real_inputs_with_labels(name, n=N_EVAL[name], seed=EVAL_SEED)
    lossless = load(teacher)
    PassManager([make_pass(n, **o) for n, o in load_recipe("lossless").passes]).run(lossless, Context())
    base = lossless.to_proto()
    ref = outputs(teacher, feeds)
    lat_feed = feeds[0]
    rows = []
    row0 = {
        "model": name, "ratio": 0.0, "macs": macs_at(base, lat_feed), "size": base.ByteSize(), "latency": latency_ms(base, lat_feed),
        "metric_pruned": metric(name, path, ref, outputs(base, feeds), labels), "metric_distilled": None,
        "snr_pruned": None, "snr_distilled": None, "seconds": 0.0,
    }
    rows.append(row0)
    print(f"{name} fp32: {row0}", flush=True)
    runs = [(r, "uniform") for r in ratios] + [(r, v) for r in variant_ratios for v in variants if v != "uniform"]
    for ratio, variant in runs:
        options = VARIANTS[variant]
        model = load(base)
        ctx = Context(calibration=calib, teacher=teacher)
        seconds = prune_steps(model, ctx, ratio, options)
        pruned = model.to_proto()
        start = time.perf_counter()
        recs = PassManager([make_pass("distill")]).run(model, ctx)
        seconds += time.perf_counter() - start
        out = model.to_proto()
        a, b = outputs(pruned, feeds), outputs(out, feeds)
        row = {
            "model": name, "ratio": ratio, "variant": variant, "macs": macs_at(out, lat_feed), "size": out.ByteSize(), "latency": latency_ms(out, lat_feed),
            "latency_pruned": latency_ms(pruned, lat_feed),
            "metric_pruned": metric(name, path, ref, a, labels), "metric_distilled": metric(name, path, ref, b, labels),
            "snr_pruned": snr(ref, a), "snr_distilled": snr(ref, b), "seconds": seconds,
            "refit": recs[0].stats.get("layers_refit", 0), "rejected": recs[0].stats.get("layers_rejected", 0),
        }
        rows.append(row)
        print(f"{name} {ratio} {variant}: {row}", flush=True)
    return rows


def measure_pruned(name: str, ratio: float, variant: str = "uniform") -> dict:
    """MACs (on the latency input), size and latency of the lossless model pruned
    at ``ratio`` (0: not pruned) with the options of ``VARIANTS[variant]``."""
    teacher = onnx.load(str(rm.fetch(name)))
    feed = rm.real_inputs(name, n=1, seed=EVAL_SEED)[0]
    model = load(teacher)
    PassManager([make_pass(n, **o) for n, o in load_recipe("lossless").passes]).run(model, Context())
    if ratio:
        options = VARIANTS[variant]
        calib = rm.real_inputs(name, n=N_CALIB[name], seed=CALIB_SEED) if options else None
        prune_steps(model, Context(calibration=calib, teacher=teacher), ratio, options)  # distills between rounds
    proto = model.to_proto()
    return {"macs": macs_at(proto, feed), "size": proto.ByteSize(), "latency": latency_ms(proto, feed, runs=50)}


def table(rows: list[dict]) -> str:
    lines = [
        "| model | channels pruned | MACs (M) | size (MB) | latency ms (x fp32) | metric | fp32 / pruned | distilled | SNR dB pruned -> distilled | distill s (refit / rejected) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {}
    for r in rows:
        if r["ratio"] == 0.0:
            base[r["model"]] = r
            lines.append(
                f"| {r['model']} | 0 (fp32, lossless) | {r['macs'] / 1e6:.1f} | {r['size'] / 1e6:.2f} | {r['latency']:.2f} (1.00) "
                f"| {METRIC_NAME[r['model']]} | {r['metric_pruned']:.3f} | | | |"
            )
            continue
        b = base[r["model"]]
        lines.append(
            f"| {r['model']} | {r['ratio']:.0%}{'' if r.get('variant', 'uniform') == 'uniform' else ' ' + r['variant']} | {r['macs'] / 1e6:.1f} ({r['macs'] / b['macs']:.2f}x) | {r['size'] / 1e6:.2f} "
            f"| {r['latency']:.2f} ({r['latency'] / b['latency']:.2f}) | {METRIC_NAME[r['model']]} | {r['metric_pruned']:.3f} "
            f"| {r['metric_distilled']:.3f} | {r['snr_pruned']:.1f} -> {r['snr_distilled']:.1f} | {r['seconds']:.0f} ({r['refit']} / {r['rejected']}) |"
        )
    return "\n".join(lines)


def bench_mnist(ratio: float = 0.5) -> str:
    """The bundled MNIST MLP: 50% of the hidden neurons, with and without
    distillation, then the whole ``edge-int8-pruned`` recipe (int8); accuracy on
    900 held-out digits, calibration on the other 100."""
    import onnxpress
    from onnxpress.demo import load_demo

    model, x, y = load_demo()
    calib = [{"input": x[i : i + 10]} for i in range(0, 100, 10)]
    x_eval, y_eval = x[100:], y[100:]

    def acc(m) -> float:
        sess = make_session(m, "enabled")
        return float((sess.run(None, {"input": x_eval})[0].argmax(1) == y_eval).mean())

    lines = ["| MNIST MLP (784-128-10) | test accuracy | MACs |", "|---|---|---|"]
    lines.append(f"| fp32 | {acc(model):.4f} | {model_stats(load(model)).macs:,} |")
    for label, passes in ((f"{ratio:.0%} neurons pruned", ["prune-channels"]), ("+ distill", ["prune-channels", "distill"])):
        r = onnxpress.optimize(model, recipe="edge-int8-pruned", calibration=calib, passes=passes, prune_channels={"ratio": ratio})
        lines.append(f"| {label} | {acc(r.model):.4f} | {r.after.macs:,} |")
    r = onnxpress.optimize(model, recipe="edge-int8-pruned", calibration=calib, prune_channels={"ratio": ratio})
    lines.append(f"| edge-int8-pruned (pruned, distilled, int8, GPTQ) | {acc(r.model):.4f} | {r.after.macs:,} |")
    r = onnxpress.optimize(model, recipe="edge-int8", calibration=calib)
    lines.append(f"| edge-int8 (not pruned) | {acc(r.model):.4f} | {r.after.macs:,} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--ratios", nargs="*", type=float, default=list(RATIOS))
    ap.add_argument("--variant-ratios", nargs="*", type=float, default=list(VARIANT_RATIOS),
                    help="ratios of the rows of the other VARIANTS (activation importance, global allocation)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                    help="which VARIANTS get rows at --variant-ratios")
    ap.add_argument("--out", help="write the Markdown table here (and the rows as JSON beside it)")
    ap.add_argument(
        "--refresh",
        help="re-measure MACs, size and latency of the rows of this JSON on re-pruned models (no "
        "distillation: a distilled model has the pruned model's graph) and rewrite --out",
    )
    args = ap.parse_args(argv)
    if args.refresh:
        with open(args.refresh, encoding="utf-8") as f:
            saved = json.load(f)
        rows, mnist = saved["rows"], saved["mnist"]
        for r in rows:
            r.update(measure_pruned(r["model"], r["ratio"], r.get("variant", "uniform")))
            print(r["model"], r["ratio"], r["macs"], r["size"], round(r["latency"], 2), flush=True)
    else:
        mnist = bench_mnist()
        print(mnist, flush=True)
        rows = []
        for name in args.models:
            try:
                rows.extend(bench_model(name, args.ratios, args.variant_ratios, args.variants))
            except Exception:
                traceback.print_exc()
                print(f"{name}: failed", file=sys.stderr)
    text = table(rows)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("# Structured pruning + distillation (benchmarks/prune.py)\n\n")
            f.write(f"Calibration samples: {N_CALIB}; evaluation samples: {N_EVAL}. ORT CPU, 1 thread.\n\n")
            f.write(text + "\n\n" + mnist + "\n")
        with open(args.out.rsplit(".", 1)[0] + ".json", "w", encoding="utf-8") as f:
            json.dump({"rows": rows, "mnist": mnist}, f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
