"""A self-contained HTML summary of a Report (no scripts, no external assets), for ``wandb.Html``:
verdict, findings with their fixes, and an SVG gradient-flow heatmap."""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

from resdoctor.findings import Finding
from resdoctor.integrations._wandb_panels import TableData, where

COLORS = {"healthy": "#1a7f37", "warning": "#b35900", "critical": "#c62828", "info": "#555"}
# viridis at 0, 0.25, 0.5, 0.75, 1
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]])
_STYLE = (
    "font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;font-size:14px;"
    "line-height:1.4;color:#222;padding:8px"
)


def report_html(report: Any, flow: TableData) -> str:
    """The whole summary page of ``report``; ``flow`` is the gradient-flow table."""
    run = report.run
    verdict = report.verdict
    head = (
        f"<h2 style='margin:0'>resdoctor: <span style='color:{COLORS[verdict]}'>"
        f"{escape(verdict)}</span></h2>"
        f"<p style='color:#555'>{escape(str(run.path or 'run'))} · {run.steps} steps · "
        f"{escape(str(run.meta.get('model_class') or 'model'))} · "
        f"{len(run.sites)} residual sites · {len(report.findings)} findings</p>"
    )
    body = "".join(_finding_html(f) for f in report.findings) or "<p>No findings: healthy.</p>"
    heat = heatmap_svg(flow)
    if heat:
        heat = (
            "<h3>Gradient flow (log10 gradient norm; modules input to output, "
            "red = NaN/Inf)</h3>" + heat
        )
    return f"<div style='{_STYLE}'>{head}{body}{heat}</div>"


def _finding_html(f: Finding) -> str:
    color = COLORS.get(f.severity, "#555")
    at = where(f.step, f.location, f.phase)
    fixes = "".join(
        f"<li><b>{escape(x.title)}</b> <code>{escape(x.code)}</code>: {escape(x.detail)}"
        + (
            f"<pre style='background:#f4f4f4;padding:6px'>{escape(x.snippet)}</pre>"
            if x.snippet
            else ""
        )
        + "</li>"
        for x in f.fixes
    )
    return (
        f"<div style='border-left:4px solid {color};padding-left:8px;margin:10px 0'>"
        f"<b style='color:{color}'>[{escape(f.severity)}]</b> <b>{escape(f.title)}</b> "
        f"<code>{escape(f.code)}</code>"
        + (f" <span style='color:#555'>{escape(at)}</span>" if at else "")
        + f"<p>{escape(f.message)}</p>"
        + (f"<ul>{fixes}</ul>" if fixes else "")
        + "</div>"
    )


def _color(t: float) -> str:
    """Viridis colour of ``t`` in [0, 1]."""
    x = min(max(t, 0.0), 1.0) * (len(_RAMP) - 1)
    i = min(int(x), len(_RAMP) - 2)
    r, g, b = (_RAMP[i] + (x - i) * (_RAMP[i + 1] - _RAMP[i])).round().astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def _cell_text(nonfinite: bool, log10: float | None) -> str:
    return "NaN/Inf" if nonfinite else "zero" if log10 is None else f"log10 {log10:.2f}"


def heatmap_page(flow: TableData) -> str:
    """The gradient-flow heatmap alone, as a page for its own W&B panel."""
    heat = heatmap_svg(flow) or "<p>No gradient norms were recorded.</p>"
    return (
        f"<div style='{_STYLE}'><b>resdoctor: gradient flow</b> (log10 gradient norm per "
        f"module, input at the top; columns are steps; red = NaN/Inf)<br>{heat}</div>"
    )


def heatmap_svg(flow: TableData, max_cols: int = 120, cell_h: int = 12) -> str:
    """SVG heatmap of a gradient-flow table (rows: modules by depth, columns: steps)."""
    if not flow.rows:
        return ""
    steps = sorted({r[0] for r in flow.rows})
    steps = [steps[i] for i in np.unique(np.linspace(0, len(steps) - 1, max_cols).astype(int))]
    col = {s: i for i, s in enumerate(steps)}
    modules = {r[2]: r[1] for r in flow.rows}  # depth -> label
    logs = [r[4] for r in flow.rows if r[4] is not None]
    lo, hi = (min(logs), max(logs)) if logs else (0.0, 1.0)
    cw, left = max(2, 600 // len(steps)), 160
    cells = []
    for step, _, depth, _, log10, nonfinite in flow.rows:
        if step not in col:
            continue
        fill = (
            "#e53935"
            if nonfinite
            else "#cccccc"
            if log10 is None  # zero gradient
            else _color((log10 - lo) / ((hi - lo) or 1.0))
        )
        cells.append(
            f"<rect x='{left + col[step] * cw}' y='{depth * cell_h}' width='{cw}' "
            f"height='{cell_h}' fill='{fill}'><title>step {step} · "
            f"{escape(modules[depth])} · {_cell_text(nonfinite, log10)}"
            f"</title></rect>"
        )
    labels = "".join(
        f"<text x='{left - 4}' y='{d * cell_h + cell_h - 2}' text-anchor='end' "
        f"font-size='10'>{escape(m[-28:])}</text>"
        for d, m in modules.items()
    )
    width, height = left + len(steps) * cw, (max(modules) + 1) * cell_h + 16
    axis = (
        f"<text x='{left}' y='{height - 2}' font-size='10'>step {steps[0]}</text>"
        f"<text x='{width}' y='{height - 2}' font-size='10' text-anchor='end'>"
        f"step {steps[-1]} · log10 range [{lo:.1f}, {hi:.1f}]</text>"
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}'>"
        f"{labels}{''.join(cells)}{axis}</svg>"
    )
