"""Altair chart builders: frames in, charts out. No streamlit and no rule logic here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import altair as alt
import numpy as np
import pandas as pd

NONFINITE_COLOR = "#e4007c"
THRESHOLD_COLOR = "#b25f00"
RUN_COLORS = ("#1f77b4", "#e6550d")  # run A blue, run B orange: never two shades of one hue
ONSET_COLOR = "#d62728"
CANVAS = {"embedOptions": {"renderer": "canvas"}}  # thousands of marks: canvas, not SVG
STEP_AXIS = alt.Axis(title="step", format="~s", tickMinStep=1)


def _log10(values: pd.Series) -> np.ndarray:
    v = values.to_numpy(dtype=np.float64)
    tiny = np.nanmin(v[v > 0]) if np.any(v > 0) else 1e-30
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(np.clip(v, tiny, None))


def _shown(frame: pd.DataFrame, log: bool) -> pd.DataFrame:
    """Add the plotted column: on a log scale, zeros (e.g. zero-initialised branches) are drawn
    at a floor a decade below the smallest positive value instead of vanishing; tooltips keep
    the true value."""
    v = frame["value"].to_numpy(dtype=np.float64)
    if not log:
        return frame.assign(shown=v)
    positive = v[v > 0]
    floor = positive.min() / 10 if len(positive) else 1e-12
    return frame.assign(shown=np.maximum(v, floor))


def onset_rule(step: int | None, label: str = "first NaN/Inf") -> alt.Chart | None:
    """A dashed vertical rule with a label at the first non-finite step."""
    if step is None:
        return None
    df = pd.DataFrame({"step": [step], "label": [f"{label} @ {step}"]})
    base = alt.Chart(df).encode(x=alt.X("step:Q"))
    rule = base.mark_rule(color=ONSET_COLOR, strokeDash=[6, 3], strokeWidth=2)
    text = base.mark_text(align="left", dx=4, dy=-6, color=ONSET_COLOR, fontWeight="bold").encode(
        y=alt.value(0), text="label:N"
    )
    return rule + text


# on a log10 colour scale the palette spans at least this many decades: a healthy run whose
# values stay within 0.8-1.26 sits in the middle of the palette instead of painting it end to end
MIN_LOG_SPAN = 1.0


def robust_domain(
    values: pd.Series, q: float = 0.02, min_span: float = 0.0
) -> tuple[float, float] | None:
    """The ``q`` to ``1 - q`` quantile range of the finite values (None when there are none),
    widened about its middle to at least ``min_span``."""
    finite = values[np.isfinite(values.to_numpy(dtype=np.float64))]
    if finite.empty:
        return None
    lo, hi = float(finite.quantile(q)), float(finite.quantile(1 - q))
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
    if hi <= lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    return lo, hi


def heatmap(
    cells: pd.DataFrame,
    *,
    value_title: str,
    log: bool = True,
    onset: int | None = None,
    scheme: str = "viridis",
    domain: tuple[float, float] | None = None,
    flagged: Sequence[str] = (),
) -> alt.LayerChart:
    """Name x step heatmap; non-finite cells in magenta; the NaN onset as a dashed rule; the
    rows a finding names (``flagged``) marked with a triangle at the left edge.

    One mark layer with a conditional colour (no filter transforms: streamlit evaluates
    expressions with an interpreter, once per datum), drawn on a canvas.
    """
    order = cells.drop_duplicates("name").sort_values("depth")["name"].tolist()
    shown = pd.Series(
        _log10(cells["value"]) if log else cells["value"].to_numpy(), index=cells.index
    )
    # vega-lite drops marks whose colour field is NaN; NaN/Inf cells get their colour elsewhere
    shown = shown.fillna(shown.min() if shown.notna().any() else 0.0)
    data = cells.drop(columns="depth").assign(shown=shown)
    title = f"log10 {value_title}" if log else value_title
    if domain is None:  # robust: one outlier must not paint the rest one colour
        domain = robust_domain(
            shown[~cells["nonfinite"].astype(bool)], min_span=MIN_LOG_SPAN if log else 0.0
        )
    scale = alt.Scale(
        scheme=cast(Any, scheme), domain=list(domain) if domain else alt.Undefined, clamp=True
    )
    color = alt.condition(
        "datum.nonfinite",
        alt.value(NONFINITE_COLOR),
        alt.Color(
            "shown:Q",
            title=title,
            scale=scale,
            legend=alt.Legend(orient="right", gradientLength=160),
        ),
    )
    cells_chart = (
        alt.Chart(data)
        .mark_rect(strokeWidth=0)
        .encode(
            x=alt.X("step:Q", axis=STEP_AXIS, scale=alt.Scale(nice=False)),
            x2="step_end:Q",
            y=alt.Y(
                "name:N",
                sort=order,
                title=None,
                axis=alt.Axis(labelLimit=220, labelOverlap="greedy", labelFontSize=11),
            ),
            color=color,
            tooltip=[
                alt.Tooltip("name:N"),
                alt.Tooltip("step:Q", title="from step"),
                alt.Tooltip("step_end:Q", title="to step (excl.)"),
                alt.Tooltip("value:Q", title=value_title, format=".3~g"),
                alt.Tooltip("nonfinite:N", title="NaN/Inf seen"),
            ],
        )
    )
    zoom = alt.selection_interval(bind="scales", encodings=["x"])  # drag / wheel on steps
    layers: list[alt.Chart] = [cells_chart.add_params(zoom)]
    marked = [n for n in flagged if n in order]
    if marked:
        first = float(cells["step"].min()) if len(cells) else 0.0
        rows = pd.DataFrame({"name": marked, "step": first, "why": "named by a finding"})
        layers.append(
            alt.Chart(rows)
            .mark_point(shape="triangle-right", size=90, filled=True, color=THRESHOLD_COLOR)
            .encode(x=alt.X("step:Q"), y=alt.Y("name:N", sort=order), tooltip=["name:N", "label:N"])
        )
    rule = onset_rule(onset)
    if rule is not None:
        layers.append(rule)
    height = int(min(1400, max(220, 18 * len(order) + 70)))  # every label readable
    return alt.layer(*layers).properties(height=height, usermeta=CANVAS)


def lines(
    frame: pd.DataFrame,
    *,
    y_title: str,
    log: bool = False,
    onset: int | None = None,
    color_title: str = "",
    height: int = 280,
    steps: int | None = None,
    thresholds: Sequence[tuple[float, str]] = (),
    colors: Sequence[str] = (),
) -> alt.LayerChart:
    """One line per name over steps (x from 0 to ``steps`` when given, so panels line up);
    click the legend to highlight, drag to zoom on steps; ``thresholds`` (value, label) are
    the rules' lines, drawn dotted."""
    pick = alt.selection_point(fields=["name"], bind="legend")
    y_scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    x_scale = alt.Scale(domain=[0, steps], nice=False) if steps else alt.Undefined
    mark = alt.Chart(_shown(frame, log)).mark_line(point=len(frame) <= 60)
    chart = mark.encode(
        x=alt.X("step:Q", axis=STEP_AXIS, scale=x_scale),
        y=alt.Y(
            "shown:Q",
            title=y_title,
            scale=y_scale,
            axis=alt.Axis(format="~g") if log else alt.Undefined,
        ),
        color=alt.Color(
            "name:N",
            title=color_title or None,
            sort=None,
            legend=alt.Legend() if frame["name"].nunique() > 1 else None,
            scale=alt.Scale(range=list(colors)) if colors else alt.Undefined,
        ),
        opacity=alt.condition(pick, alt.value(1.0), alt.value(0.15)),
        tooltip=[
            alt.Tooltip("name:N"),
            alt.Tooltip("step:Q"),
            alt.Tooltip("value:Q", format=".4~g"),
        ],
    ).add_params(pick)
    chart = chart.add_params(alt.selection_interval(bind="scales", encodings=["x"]))
    rule = onset_rule(onset)
    layers = [chart] if rule is None else [chart, rule]
    layers += threshold_rules(thresholds)
    return alt.layer(*layers).properties(height=height)


def threshold_rules(thresholds: Sequence[tuple[float, str]]) -> list[alt.Chart]:
    """Horizontal dotted lines where a rule fires, labelled with the rule."""
    if not thresholds:
        return []
    df = pd.DataFrame({"value": [v for v, _ in thresholds], "label": [t for _, t in thresholds]})
    base = alt.Chart(df).encode(y=alt.Y("value:Q"))
    rule = base.mark_rule(color=THRESHOLD_COLOR, strokeDash=[2, 3], strokeWidth=1.5)
    text = base.mark_text(align="left", dx=4, dy=-5, color=THRESHOLD_COLOR).encode(
        x=alt.value(0), text="label:N"
    )
    return [rule, text]


def profile(
    frame: pd.DataFrame,
    *,
    y_title: str,
    log: bool = False,
    color: str = "step",
    height: int = 280,
    reference: float | None = None,
    colors: Sequence[str] = (),
) -> alt.LayerChart:
    """Value by depth (x = site or module in forward order), one line per ``color`` value
    (``colors``: their palette, e.g. one colour per compared run)."""
    order = frame.drop_duplicates("name").sort_values("depth")["name"].tolist()
    y_scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    color_enc = (
        alt.Color("step:O", title="step", scale=alt.Scale(scheme="blues"))
        if color == "step"
        else alt.Color(
            f"{color}:N",
            title=None,
            scale=alt.Scale(range=list(colors)) if colors else alt.Undefined,
        )
    )
    chart = (
        alt.Chart(_shown(frame, log))
        .mark_line(point=True)
        .encode(
            x=alt.X(
                "name:N",
                sort=order,
                title="depth (forward order)",
                axis=alt.Axis(labelAngle=-40, labelLimit=140),
            ),
            y=alt.Y("shown:Q", title=y_title, scale=y_scale),
            color=color_enc,
            tooltip=[
                alt.Tooltip("name:N"),
                alt.Tooltip("depth:Q"),
                alt.Tooltip(f"{color}:N"),
                alt.Tooltip("value:Q", format=".4~g"),
            ],
        )
    )
    layers: list[alt.Chart] = [chart]
    if reference is not None:
        ref = pd.DataFrame({"value": [reference]})
        layers.append(alt.Chart(ref).mark_rule(color="gray", strokeDash=[4, 4]).encode(y="value:Q"))
    return alt.layer(*layers).properties(height=height)


def event_bars(
    marks: pd.DataFrame, *, title: str, steps: int, color: str = "#ff7f0e", height: int = 120
) -> alt.Chart:
    """Event steps as bars over ``[0, steps)`` (one per event, or a count per step bucket)."""
    return (
        alt.Chart(marks)
        .mark_bar(color=color, minBandSize=1)
        .encode(
            x=alt.X("step:Q", axis=STEP_AXIS, scale=alt.Scale(domain=[0, steps], nice=False)),
            x2="step_end:Q",
            y=alt.Y("count:Q", title=title),
            tooltip=[
                alt.Tooltip("step:Q", title="from step"),
                alt.Tooltip("step_end:Q", title="to step (excl.)"),
                alt.Tooltip("count:Q"),
            ],
        )
        .properties(height=height)
    )
