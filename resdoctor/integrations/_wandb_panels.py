"""What the W&B integration shows, as plain data (no wandb import): per-step metrics, panel
tables, alert texts. ``_wandb_html`` renders the HTML summary; ``wandb.py`` wraps all of it in
wandb objects."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from resdoctor.findings import Finding
from resdoctor.runfile.signals import MODULE_SIGNALS

DEFAULT_SIGNALS = (
    "grad_norm",
    "update_ratio",
    "branch_ratio",
    "stream_norm",
    "grad_branch_share",
    "smoothing",
)
ROOT = "(root)"  # label of the root module, whose dotted path is ""
FINDING_COLUMNS = [
    "severity",
    "code",
    "title",
    "step",
    "location",
    "phase",
    "message",
    "fix",
    "snippet",
]


@dataclass(frozen=True)
class TableData:
    """Columns and rows of one wandb Table."""

    columns: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class LineSeries:
    """Arguments of ``wandb.plot.line_series``: one line per key."""

    xs: list[list[float]]
    ys: list[list[float]]
    keys: list[str]


def label(name: str) -> str:
    return name or ROOT


def spread(n: int, k: int | None) -> np.ndarray:
    """Indices of at most ``k`` of ``n`` items evenly spread over depth (first and last kept);
    all of them when ``k`` is None."""
    return np.arange(n) if k is None else _subsample(n, k)


def step_metrics(
    last: dict[str, Any],
    modules: Sequence[str],
    sites: Sequence[str],
    prefix: str,
    signals: Iterable[str] = DEFAULT_SIGNALS,
    per_signal: int | None = 12,
) -> dict[str, Any]:
    """The W&B row of one step from ``Context.latest()``: ``{prefix}/step``, every scalar under
    ``{prefix}/loss`` etc., and per module or site each of ``signals`` under
    ``{prefix}/{signal}/{name}`` (sites: ``{prefix}/sites/{signal}/{name}``), for at most
    ``per_signal`` modules / sites spread over depth (None: all). A site value measured as
    NaN/Inf is logged as such; only a site not measured this step is left out."""
    out: dict[str, Any] = {f"{prefix}/step": int(last["step"])}
    out.update({f"{prefix}/{k}": float(v) for k, v in last.get("scalars", {}).items()})
    if last.get("skipped"):
        out[f"{prefix}/amp_skipped"] = 1
    present = last.get("present") or {}
    for signal in signals:
        values = last.get(signal)
        per_module = signal in MODULE_SIGNALS
        names = modules if per_module else sites
        if values is None or len(values) != len(names):
            continue
        values = np.asarray(values, dtype=np.float64)
        mask = np.asarray(present.get(signal, ~np.isnan(values)), dtype=bool)
        section = f"{prefix}/{signal}" if per_module else f"{prefix}/sites/{signal}"
        for i in spread(len(names), per_signal):
            if per_module or mask[i]:
                out[f"{section}/{label(names[i])}"] = float(values[i])
    return out


def _subsample(n: int, k: int) -> np.ndarray:
    """At most ``k`` evenly spaced indices of ``range(n)``, always keeping the first and last."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max(k, 2)).round().astype(int))


def depth_order(run: Any, names: Sequence[str]) -> list[str]:
    """``names`` (modules) sorted input to output by forward completion order."""
    order = dict(zip(run.modules["name"], run.modules["order"], strict=True))
    index = {n: i for i, n in enumerate(names)}
    return sorted(
        names, key=lambda n: (order.get(n, -1) if order.get(n, -1) >= 0 else 1e9, index[n])
    )


def _log10(v: float) -> float | None:
    return math.log10(v) if math.isfinite(v) and v > 0 else None


def gradient_flow(run: Any, max_rows: int = 20_000) -> TableData:
    """Long table of module gradient norms: one row per (step, module), modules by depth.
    Non-finite norms get ``nonfinite=True`` and no value, so a chart can paint them apart."""
    columns = ["step", "module", "depth", "grad_norm", "log10_grad_norm", "nonfinite"]
    df = run.series("grad_norm")
    if df.empty:
        return TableData(columns, [])
    names = depth_order(run, list(df.columns))
    df = df.iloc[_subsample(len(df), max(1, max_rows // len(names)))][names]
    rows = []
    for step, values in zip(df.index, df.to_numpy(), strict=True):
        for depth, (name, v) in enumerate(zip(names, values, strict=True)):
            finite = bool(math.isfinite(v))
            rows.append(
                [int(step), label(name), depth, float(v) if finite else None, _log10(v), not finite]
            )
    return TableData(columns, rows)


def site_table(run: Any, signal: str = "branch_ratio", max_rows: int = 20_000) -> TableData:
    """Long table of one site signal: one row per measured (step, site), sites by depth."""
    columns = ["step", "site", "depth", signal]
    df = run.series(signal)
    if df.empty:
        return TableData(columns, [])
    df = df.iloc[_subsample(len(df), max(1, max_rows // len(df.columns)))]
    rows = [
        [int(step), name, depth, float(v)]
        for step, values in zip(df.index, df.to_numpy(), strict=True)
        for depth, (name, v) in enumerate(zip(df.columns, values, strict=True))
        if math.isfinite(v)
    ]
    return TableData(columns, rows)


def site_lines(run: Any, signal: str = "branch_ratio", max_points: int = 500) -> LineSeries:
    """One line per site over steps (finite values only), for the built-in line-series chart."""
    df = run.series(signal)
    if df.empty:
        return LineSeries([], [], [])
    df = df.iloc[_subsample(len(df), max_points)]
    lines = LineSeries([], [], [])
    for name in df.columns:
        col = df[name]
        col = col[np.isfinite(col.to_numpy())]
        if len(col):
            lines.xs.append([int(s) for s in col.index])
            lines.ys.append([float(v) for v in col])
            lines.keys.append(str(name))
    return lines


def gradient_profile(run: Any, snapshots: int = 5) -> LineSeries:
    """log10 gradient norm against depth (input to output) at a few steps: the classic
    gradient-flow plot; a falling line towards the input is vanishing flow."""
    df = run.series("grad_norm")
    lines = LineSeries([], [], [])
    if df.empty:
        return lines
    names = depth_order(run, list(df.columns))
    for i in _subsample(len(df), snapshots):
        logs = [_log10(v) for v in df.iloc[i][names].to_numpy()]
        pairs = [(d, y) for d, y in enumerate(logs) if y is not None]
        if pairs:
            lines.xs.append([d for d, _ in pairs])
            lines.ys.append([y for _, y in pairs])
            lines.keys.append(f"step {int(df.index[i])}")
    return lines


def findings_table(findings: Iterable[Finding]) -> TableData:
    """One row per finding, worst first as given; ``fix`` is the first fix's title and detail."""
    rows = []
    for f in findings:
        fix = f.fixes[0] if f.fixes else None
        rows.append(
            [
                f.severity,
                f.code,
                f.title,
                f.step,
                f.location,
                f.phase,
                f.message,
                f"{fix.title}: {fix.detail}" if fix else "",
                fix.snippet if fix else "",
            ]
        )
    return TableData(list(FINDING_COLUMNS), rows)


def where(step: int | None, location: str | None, phase: str | None) -> str:
    parts = [
        f"step {step}" if step is not None else "",
        f"in {label(location)}" if location is not None else "",
        f"({phase})" if phase else "",
    ]
    return " ".join(p for p in parts if p)


ALERT_CHARS = 500


def alert_text(finding: Finding, run_path: str = "", root_cause: bool = False) -> tuple[str, str]:
    """Title and a short text (at most ``ALERT_CHARS``) of the W&B alert for a finding: what,
    where and when, and the first fix; the snippet stays in the report."""
    at = where(finding.step, finding.location, finding.phase)
    head = ("Root cause: " if root_cause else "") + finding.title
    if at and f"step {finding.step}" not in finding.title:  # titles often say when already
        head += f" ({at})"
    elif finding.location and finding.location not in finding.title:
        head += f" in {finding.location}"
    lines = [head]
    if finding.fixes:
        fix = finding.fixes[0]
        lines.append(f"First fix ({fix.code}): {fix.title}.")
    if run_path:
        lines.append(f"resdoctor analyze {run_path}")
    return _title(finding.title), _cut("\n".join(lines), ALERT_CHARS)


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, cut at a word with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rsplit(" ", 1)[0] + "…"


def event_alert(event: dict[str, Any], run_path: str = "") -> tuple[str, str]:
    """Alert for a raw non-finite onset when no rule produced a finding for it."""
    at = where(event.get("step"), event.get("module"), event.get("phase"))
    lines = [
        f"NaN/Inf first appeared at {at}, while that module's inputs were finite.",
        "Fix: guard the operation there (clamp, eps in divisions and logs), or clip "
        "gradients and lower the learning rate if the values grew before.",
    ]
    if run_path:
        lines.append(f"Full diagnosis: resdoctor analyze {run_path}")
    return _title("non-finite values (NaN/Inf)"), "\n".join(lines)


def _title(text: str) -> str:
    """W&B alert titles must be shorter than 64 characters."""
    title = f"resdoctor: {text}"
    return title if len(title) < 64 else title[:62] + "…"
