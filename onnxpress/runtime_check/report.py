"""Check reports: terminal table, JSON, Markdown and one self-contained HTML file.

The HTML report has no external resource (no script, font, stylesheet or
image URL): styles are inline and the plots are inline SVG drawn here, so it
opens offline and can be attached to a ticket. Plots: the error of each output
(SNR and max abs error, per target and onnxruntime level, with the criterion's
thresholds), the per-layer error along the graph when the check localized a
failure, and the size and latency before/after (one latency plot per target:
emulated timings are never drawn beside native ones).
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from .compare import CheckReport, OutputMetrics

__all__ = ["jsonable", "render_table", "render_markdown", "render_html", "write_report"]

_SNR_CAP = 150.0  # dB drawn for an exact match (inf)


def jsonable(value: Any) -> Any:
    """``value`` with non-finite floats as strings (``"inf"``, ``"nan"``), recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def human_size(n: float) -> str:
    """Bytes as B/KB/MB/GB (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GB"


def _tail(s: str, n: int) -> str:
    """``s`` cut to its last ``n`` characters (node names differ at the end)."""
    return s if len(s) <= n else "…" + s[-(n - 1):]


def _snr(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}"


def _opt(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _shape(o: "OutputMetrics") -> str:
    return "x".join(map(str, o.shape_got)) if o.shape_got == o.shape_ref else f"{o.shape_ref}!={o.shape_got}"


def _verdict(o: "OutputMetrics", informational: bool = False) -> str:
    if informational:  # cross-target rows do not decide the check
        return "within tolerance" if o.passed else f"beyond tolerance ({o.reason})"
    return "ok" if o.passed else f"FAIL ({o.reason})"


def _targets_text(report: "CheckReport") -> str:
    return ", ".join(t["name"] + (" (emulated)" if t.get("emulated") else "") for t in report.targets) or "cpu"


def _criteria_lines(report: "CheckReport") -> list[str]:
    distinct = sorted(set(report.criteria.values()))
    if len(distinct) <= 1:
        crit = distinct[0] if distinct else "-"
        return [f"criterion ({report.kind} candidate): {crit}"]
    return [f"criterion of {name!r} ({report.kind} candidate): {crit}" for name, crit in report.criteria.items()]


# ------------------------------------------------------------------ text
def _top1(o: "OutputMetrics") -> float | None:
    """The top-1 column: top-1 agreement of classifier scores, or for an integer
    output (class labels) the fraction of elements equal to the reference."""
    return o.top1 if o.top1 is not None else o.agreement


def _metrics_rows(outputs: Sequence["OutputMetrics"], with_noise: bool = True, informational: bool = False) -> list[str]:
    tw = min(max([6] + [len(o.target) for o in outputs]), 32)
    head = (
        f"{'output':<24} {'target':<{tw}} {'ort opt':<8} {'shape':<16} {'max abs':>10} {'mean abs':>10} "
        f"{'cosine':>10} {'SNR dB':>8} {'top-1':>6}" + (f" {'ORT noise':>10}" if with_noise else "") + "  result"
    )
    rows = [head, "-" * len(head)]
    for o in outputs:
        rows.append(
            f"{o.name[:24]:<24} {o.target[:tw]:<{tw}} {o.level:<8} {_shape(o)[:16]:<16} {o.max_abs:>10.3g} {o.mean_abs:>10.3g} "
            f"{o.cosine:>10.6f} {_snr(o.snr_db):>8} {_opt(_top1(o), '.3f'):>6}"
            + (f" {o.ort_noise:>10.3g}" if with_noise else "")
            + f"  {_verdict(o, informational)}"
        )
    return rows


def _latency_lines(report: "CheckReport") -> list[str]:
    rows = []
    for lat in report.latency:
        r, c = lat["reference"], lat["candidate"]
        tag = "  [emulated: not representative]" if lat["emulated"] else ""
        ratio = f", {lat['speedup']:.2f}x speed-up" if lat.get("speedup") else ""
        rows.append(
            f"latency on {lat['target']} (ort enabled, {lat['threads']} thread(s), {r['runs']} runs): "
            f"reference median {r['median_ms']:.3f} ms / p90 {r['p90_ms']:.3f} ms, "
            f"candidate median {c['median_ms']:.3f} ms / p90 {c['p90_ms']:.3f} ms{ratio}{tag}"
        )
    if report.sizes:
        r, c = report.sizes["reference"], report.sizes["candidate"]
        rows.append(
            f"size: reference {human_size(r['disk'])} (gzip {human_size(r['gzip'])}), candidate {human_size(c['disk'])} "
            f"(gzip {human_size(c['gzip'])}), {c['disk'] / max(r['disk'], 1):.2f}x"
        )
    return rows


def _layer_snr(l: Any) -> str:
    """The judged SNR of a layer; ``*`` marks one measured after per-channel rescaling."""
    return _snr(l.snr_judged_db) + ("*" if l.rescaled else "")


def _layer_rows(loc: Any, k: int = 10) -> list[str]:
    head = f"{'#':>5} {'op':<18} {'node':<32} {'SNR dB':>8} {'cosine':>10} {'max abs':>10} {'added rel err':>14}"
    rows = [head, "-" * len(head)]
    for l in loc.worst(k):
        rows.append(
            f"{l.index:>5} {l.op_type[:18]:<18} {_tail(l.node or l.tensor, 32):<32} {_layer_snr(l):>8} {l.cosine:>10.6f} "
            f"{l.max_abs:>10.3g} {l.contribution:>14.3g}" + ("  departs" if l.departs else "")
        )
    return rows


def render_table(report: "CheckReport") -> str:
    """The terminal report: outputs, criterion, verdict, cross-target, notes,
    warnings, latency, sizes, localization."""
    rows = _metrics_rows(report.outputs)
    rows += _criteria_lines(report)
    rows.append(f"{'PASS' if report.passed else 'FAIL'}: {report.feeds} feed(s) on {_targets_text(report)}")
    if report.cross:
        rows.append("cross-target: the candidate on each target against the candidate on cpu (informational)")
        rows += _metrics_rows(report.cross, with_noise=False, informational=True)
    for note in report.notes:
        rows.append(f"note: {note}")
    for w in report.warnings:
        rows.append(f"WARNING: {w}")
    rows += _latency_lines(report)
    loc = report.localization
    if loc is not None:
        rows.append(f"localization on {loc.target} (ort {loc.level}, {loc.feeds} feed(s), departs below {loc.threshold_db:g} dB): {loc.summary()}")
        if loc.worst():
            rows.append("worst layers by added error (SNR* measured after per-channel rescaling: cross-layer equalization):" if any(l.rescaled for l in loc.worst()) else "worst layers by added error:")
            rows += _layer_rows(loc)
    return "\n".join(rows)


# ------------------------------------------------------------------ markdown
def _md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def _md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows]
    return out


def _metric_cells(o: "OutputMetrics", markdown: bool = True, informational: bool = False) -> list[str]:
    verdict = _verdict(o, informational)
    if markdown and not o.passed and not informational:
        verdict = f"**FAIL** ({o.reason})"
    return [
        o.name, o.target, o.level, _shape(o), f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.max_rel:.3g}",
        f"{o.cosine:.6f}", _snr(o.snr_db), _opt(_top1(o)), _opt(o.top5), verdict,
    ]


_METRIC_HEAD = ["output", "target", "ORT opt", "shape", "max abs", "mean abs", "max rel", "cosine", "SNR dB", "top-1", "top-5", "result"]


def render_markdown(report: "CheckReport") -> str:
    """The report as Markdown (GitHub tables)."""
    lines = [
        f"# onnxpress check: {report.reference_name} vs {report.candidate_name}",
        "",
        f"**{'PASS' if report.passed else 'FAIL'}**: {report.feeds} feed(s) on {_targets_text(report)}; "
        f"candidate kind {report.kind}.",
        "",
    ]
    lines += [f"- {c}" for c in _criteria_lines(report)]
    lines += ["", "## Outputs", ""]
    lines += _md_table(_METRIC_HEAD, [_metric_cells(o) for o in report.outputs])
    if report.cross:
        lines += ["", "## Cross-target (candidate vs candidate on cpu, informational)", ""]
        lines += _md_table(_METRIC_HEAD, [_metric_cells(o, informational=True) for o in report.cross])
    if report.notes or report.warnings:
        lines += ["", "## Notes", ""]
        lines += [f"- **Warning:** {w}" for w in report.warnings]
        lines += [f"- {n}" for n in report.notes]
    if report.latency or report.sizes:
        lines += ["", "## Size and latency", ""]
        if report.sizes:
            r, c = report.sizes["reference"], report.sizes["candidate"]
            lines += _md_table(
                ["model", "on disk", "gzip"],
                [["reference", human_size(r["disk"]), human_size(r["gzip"])], ["candidate", human_size(c["disk"]), human_size(c["gzip"])]],
            )
            lines.append("")
        if report.latency:
            rows = []
            for lat in report.latency:
                for which in ("reference", "candidate"):
                    t = lat[which]
                    rows.append([
                        lat["target"] + (" (emulated: not representative)" if lat["emulated"] else ""),
                        which, f"{t['median_ms']:.3f}", f"{t['p90_ms']:.3f}", str(t["runs"]), str(lat["threads"]),
                        (f"{lat['speedup']:.2f}x" if lat.get("speedup") and which == "candidate" else ""),
                    ])
            lines += _md_table(["target", "model", "median ms", "p90 ms", "runs", "threads", "speed-up"], rows)
    loc = report.localization
    if loc is not None:
        lines += ["", "## Localization", "", f"On {loc.target} (ORT {loc.level}, {loc.feeds} feed(s)); "
                  f"a tensor departs below {loc.threshold_db:g} dB SNR. {loc.summary()}.", ""]
        worst = loc.worst()
        if worst:
            lines += _md_table(
                ["#", "op", "node", "tensor", "SNR dB", "cosine", "max abs", "added rel err", "departs"],
                [[str(l.index), l.op_type, l.node, l.tensor, _layer_snr(l), f"{l.cosine:.6f}", f"{l.max_abs:.3g}",
                  f"{l.contribution:.3g}", "yes" if l.departs else ""] for l in worst],
            )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ svg
_GREEN, _RED, _BLUE, _ORANGE, _GREY = "#2e8b57", "#c0392b", "#3366cc", "#e67e22", "#888888"


def _t(x: float, y: float, text: str, size: int = 11, anchor: str = "start", color: str = "#222", weight: str = "normal") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{color}" '
        f'font-weight="{weight}">{html.escape(text)}</text>'
    )


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" aria-label="{html.escape(label)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fafafa" stroke="#ddd"/>'
        + "".join(body)
        + "</svg>"
    )


def hbar_chart(
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    colors: Sequence[str],
    texts: Sequence[str],
    *,
    log: bool = False,
    marker: float | None = None,
    marker_label: str = "",
    width: int = 560,
) -> str:
    """A horizontal bar chart as an SVG string (``log``: log10 axis of positive values)."""
    row, left, right, top = 20, 250, 60, 30
    height = top + row * max(len(labels), 1) + 28
    vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
    if marker is not None:
        vals.append(marker)
    if log:
        lo = math.floor(math.log10(min(vals))) if vals else -8
        hi = math.ceil(math.log10(max(vals))) if vals else 0
        hi = max(hi, lo + 1)

        def pos(v: float) -> float:
            v = max(v, 10.0 ** lo)
            return (math.log10(v) - lo) / (hi - lo)
    else:
        lo, hi = 0.0, max(vals) if vals else 1.0
        hi = hi or 1.0

        def pos(v: float) -> float:
            return max(0.0, v) / hi
    span = width - left - right
    body = [_t(10, 18, title, 13, weight="bold")]
    for i, (lab, v, c, txt) in enumerate(zip(labels, values, colors, texts)):
        y = top + i * row
        body.append(_t(left - 6, y + 13, lab if len(lab) <= 42 else lab[:41] + "…", 10, "end"))
        w = span * pos(v) if v is not None and math.isfinite(v) and (v > 0 or not log) else (span if v is not None and math.isinf(v) else 1)
        body.append(f'<rect class="bar" x="{left}" y="{y + 3}" width="{max(w, 1):.1f}" height="{row - 6}" fill="{c}"/>')
        body.append(_t(left + max(w, 1) + 4, y + 13, txt, 10))
    axis_y = top + row * max(len(labels), 1) + 4
    body.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + span}" y2="{axis_y}" stroke="#555"/>')
    if log:
        for e in range(int(lo), int(hi) + 1):
            x = left + span * (e - lo) / (hi - lo)
            body.append(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#555"/>')
            body.append(_t(x, axis_y + 15, f"1e{e}", 9, "middle"))
    else:
        for k in range(5):
            x = left + span * k / 4
            body.append(_t(x, axis_y + 15, f"{hi * k / 4:.3g}", 9, "middle"))
    if marker is not None and math.isfinite(marker) and (marker > 0 or not log):
        x = left + span * pos(marker)
        body.append(f'<line class="marker" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="{_ORANGE}" stroke-dasharray="4,3" stroke-width="2"/>')
        body.append(_t(x + 3, top - 6, marker_label, 9, color=_ORANGE))
    return _svg(width, height, body, title)


def layer_chart(loc: Any, width: int = 1160, height: int = 300) -> str:
    """SNR (dB) of every compared tensor along the reference's topological order."""
    left, right, top, bottom = 50, 20, 30, 40
    layers = loc.layers
    n = max(len(layers), 1)
    span_x, span_y = width - left - right, height - top - bottom
    finite = [l.snr_judged_db for l in layers if math.isfinite(l.snr_judged_db)]
    ymax = min(_SNR_CAP, max(finite + [loc.threshold_db + 10.0])) if finite else _SNR_CAP
    ymin = min(0.0, min(finite)) if finite else 0.0

    def X(i: float) -> float:
        return left + span_x * (i / max(n - 1, 1))

    def Y(v: float) -> float:
        v = min(v, ymax) if math.isfinite(v) else ymax
        return top + span_y * (1 - (v - ymin) / max(ymax - ymin, 1e-9))

    title = f"Per-layer SNR along the graph ({len(layers)} tensors, {loc.target}, ORT {loc.level})"
    body = [_t(10, 18, title, 13, weight="bold")]
    body.append(f'<line x1="{left}" y1="{top + span_y}" x2="{left + span_x}" y2="{top + span_y}" stroke="#555"/>')
    body.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + span_y}" stroke="#555"/>')
    for k in range(5):
        v = ymin + (ymax - ymin) * k / 4
        body.append(_t(left - 4, Y(v) + 3, f"{v:.0f}", 9, "end"))
    body.append(_t(left + span_x / 2, height - 8, "layer (topological order)", 10, "middle"))
    body.append(_t(left + 4, top + 10, "SNR dB", 9, color=_GREY))
    thr = Y(loc.threshold_db)
    body.append(f'<line class="marker" x1="{left}" y1="{thr:.1f}" x2="{left + span_x}" y2="{thr:.1f}" stroke="{_ORANGE}" stroke-dasharray="4,3" stroke-width="2"/>')
    body.append(_t(left + span_x - 4, thr - 4, f"threshold {loc.threshold_db:g} dB", 9, "end", _ORANGE))
    if layers:
        pts = " ".join(f"{X(i):.1f},{Y(l.snr_judged_db):.1f}" for i, l in enumerate(layers))
        body.append(f'<polyline class="series" points="{pts}" fill="none" stroke="{_BLUE}" stroke-width="1.5"/>')
        for i, l in enumerate(layers):
            if l.departs:
                body.append(f'<circle cx="{X(i):.1f}" cy="{Y(l.snr_judged_db):.1f}" r="2.5" fill="{_RED}"/>')
    if loc.first is not None:
        i = layers.index(loc.first)
        body.append(f'<line x1="{X(i):.1f}" y1="{top}" x2="{X(i):.1f}" y2="{top + span_y}" stroke="{_RED}" stroke-width="1.5"/>')
        label = f"first departs: {loc.first.op_type} {loc.first.node or loc.first.tensor}"
        anchor = "start" if X(i) < left + span_x * 0.6 else "end"
        body.append(_t(X(i) + (4 if anchor == "start" else -4), top + 12, label[:60], 10, anchor, _RED))
    return _svg(width, height, body, title)


def grouped_bars(title: str, groups: Sequence[str], series: dict[str, Sequence[float]], unit: str, width: int = 380, note: str = "") -> str:
    """Vertical grouped bars: one group per label, one bar per series (reference, candidate)."""
    height, left, top, bottom = 240, 50, (48 if note else 34), 46
    colors = [_GREY, _BLUE, _GREEN, _ORANGE]
    allv = [v for vs in series.values() for v in vs if v is not None and math.isfinite(v)]
    vmax = max(allv) if allv else 1.0
    vmax = vmax or 1.0
    span_x, span_y = width - left - 16, height - top - bottom
    gw = span_x / max(len(groups), 1)
    bw = gw * 0.7 / max(len(series), 1)
    body = [_t(10, 18, title, 13, weight="bold")]
    if note:
        body.append(_t(10, 32, note, 9, color=_RED))
    body.append(f'<line x1="{left}" y1="{top + span_y}" x2="{left + span_x}" y2="{top + span_y}" stroke="#555"/>')
    for k in range(5):
        v = vmax * k / 4
        y = top + span_y * (1 - k / 4)
        body.append(_t(left - 4, y + 3, f"{v:.3g}", 9, "end"))
    for gi, g in enumerate(groups):
        for si, (name, vs) in enumerate(series.items()):
            v = vs[gi]
            if v is None or not math.isfinite(v):
                continue
            h = span_y * v / vmax
            x = left + gi * gw + gw * 0.15 + si * bw
            body.append(f'<rect class="bar" x="{x:.1f}" y="{top + span_y - h:.1f}" width="{bw - 2:.1f}" height="{max(h, 1):.1f}" fill="{colors[si % 4]}"/>')
            body.append(_t(x + bw / 2, top + span_y - h - 3, f"{v:.3g}", 9, "middle"))
        body.append(_t(left + gi * gw + gw / 2, top + span_y + 14, g, 10, "middle"))
    lx = left
    for si, name in enumerate(series):
        body.append(f'<rect x="{lx}" y="{height - 16}" width="10" height="10" fill="{colors[si % 4]}"/>')
        body.append(_t(lx + 14, height - 7, f"{name} ({unit})", 10))
        lx += 140
    return _svg(width, height, body, title)


# ------------------------------------------------------------------ html
_CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px} h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 6px;text-align:right} th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
.pass{color:#2e8b57;font-weight:bold} .fail{color:#c0392b;font-weight:bold}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px;margin:6px 0}
.note{color:#444;margin:4px 0} .plots{display:flex;flex-wrap:wrap;gap:12px}
pre{white-space:pre-wrap}
"""


def _html_table(head: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for i, r in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _output_label(o: "OutputMetrics") -> str:
    return f"{o.name} [{o.target}, {o.level}]"


def render_html(report: "CheckReport") -> str:
    """One self-contained HTML page (inline CSS and SVG, no external resource)."""
    verdict = "PASS" if report.passed else "FAIL"
    title = f"onnxpress check: {report.reference_name} vs {report.candidate_name}"
    parts = [
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p><span class="{verdict.lower()}" id="verdict">{verdict}</span>: {report.feeds} feed(s) on '
        f"{html.escape(_targets_text(report))}; candidate kind <b>{html.escape(report.kind)}</b>.</p>",
    ]
    parts += [f'<p class="note">{html.escape(c)}</p>' for c in _criteria_lines(report)]
    parts += [f'<div class="warn">Warning: {html.escape(w)}</div>' for w in report.warnings]

    outs = report.outputs
    parts.append("<h2>Outputs</h2>")
    colors = [_GREEN if o.passed else _RED for o in outs]
    labels = [_output_label(o) for o in outs]
    snr_vals = [o.snr_db for o in outs]
    crit_snr = [_criterion_value(report, o.name, "SNR >= ") for o in outs]
    snr_marker = next((v for v in crit_snr if v is not None), None)
    max_abs = [o.max_abs for o in outs]
    atol = [_criterion_value(report, o.name, "<= ") for o in outs]
    atol_marker = next((v for v in atol if v is not None and v > 0), None)
    parts.append('<div class="plots" id="output-plots">')
    parts.append(
        hbar_chart(
            "SNR per output (dB, higher is better)", labels, [min(v, _SNR_CAP) if math.isfinite(v) else math.inf for v in snr_vals],
            colors, [_snr(v) for v in snr_vals], marker=snr_marker, marker_label=f"min {snr_marker:g} dB" if snr_marker else "",
        )
    )
    parts.append(
        hbar_chart(
            "Max |error| per output (log scale)", labels, [v if v > 0 else None for v in max_abs], colors,
            [f"{v:.3g}" for v in max_abs], log=True, marker=atol_marker, marker_label=f"atol {atol_marker:g}" if atol_marker else "",
        )
    )
    parts.append("</div>")
    parts.append(_html_table(_METRIC_HEAD, [_metric_cells(o, False) for o in outs], ["" if o.passed else "fail" for o in outs]))
    if report.cross:
        parts.append("<h2>Cross-target (candidate vs candidate on cpu, informational)</h2>")
        parts.append(_html_table(_METRIC_HEAD, [_metric_cells(o, False, True) for o in report.cross]))
    if report.notes:
        parts.append("<h2>Notes</h2>")
        parts += [f'<p class="note">{html.escape(n)}</p>' for n in report.notes]

    loc = report.localization
    parts.append("<h2>Per-layer error</h2>")
    if loc is None:
        parts.append('<p class="note">Not localized (every output passed, or localization was not asked for: --localize).</p>')
    else:
        parts.append(f'<p class="note">{html.escape(loc.summary())}</p>')
        parts.append(f'<div class="plots" id="layer-plot">{layer_chart(loc)}</div>')
        worst = loc.worst()
        if worst:
            parts.append(_html_table(
                ["#", "op", "node", "tensor", "SNR dB", "cosine", "max abs", "added rel err", "departs"],
                [[l.index, l.op_type, l.node, l.tensor, _layer_snr(l), f"{l.cosine:.6f}", f"{l.max_abs:.3g}",
                  f"{l.contribution:.3g}", "yes" if l.departs else ""] for l in worst],
            ))

    if report.sizes or report.latency:
        parts.append("<h2>Size and latency</h2>")
        parts.append('<div class="plots" id="size-latency-plots">')
        if report.sizes:
            r, c = report.sizes["reference"], report.sizes["candidate"]
            parts.append(grouped_bars(
                "Model size", ["on disk", "gzip"],
                {"reference": [r["disk"] / 1e6, r["gzip"] / 1e6], "candidate": [c["disk"] / 1e6, c["gzip"] / 1e6]}, "MB",
            ))
        for lat in report.latency:
            note = "emulated: not representative, not comparable with native" if lat["emulated"] else ""
            parts.append(grouped_bars(
                f"Latency on {lat['target']} ({lat['threads']} thread(s))", ["median", "p90"],
                {"reference": [lat["reference"]["median_ms"], lat["reference"]["p90_ms"]],
                 "candidate": [lat["candidate"]["median_ms"], lat["candidate"]["p90_ms"]]}, "ms", note=note,
            ))
        parts.append("</div>")
        parts.append('<pre class="note">' + html.escape("\n".join(_latency_lines(report))) + "</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _criterion_value(report: "CheckReport", name: str, key: str) -> float | None:
    """A number from the criterion text of ``name`` (``"SNR >= "`` -> min SNR, ``"<= "`` -> atol)."""
    text = report.criteria.get(name, "")
    for part in text.split(" and "):
        if key in part and (key != "<= " or part.startswith("|a-b|")):
            try:
                return float(part.split(key, 1)[1].split()[0])
            except (ValueError, IndexError):
                return None
    return None


def write_report(report: "CheckReport", path: str | Path) -> Path:
    """Write ``report`` as JSON (``.json``), Markdown (``.md``) or HTML (``.html``/``.htm``).

    Raises:
        InputError: another suffix.
    """
    from ..errors import InputError

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".json":
        text = report.to_json()
    elif suffix in (".md", ".markdown"):
        text = render_markdown(report)
    elif suffix in (".html", ".htm"):
        text = render_html(report)
    else:
        raise InputError(f"{p}: unknown report format {suffix!r}; use .md, .html or .json")
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(p)
    return p
