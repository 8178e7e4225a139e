"""Small drawing helpers shared by the sections."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import altair as alt
import streamlit as st

from resdoctor.app.view import DERIVED, LABELS, View


def show(chart: alt.Chart | alt.LayerChart | alt.FacetChart) -> None:
    """Draw a chart at the container's width (streamlit sends its data as Arrow, not JSON)."""
    st.altair_chart(chart, width="stretch")


def guarded(title: str, draw: Callable[..., None], *args: Any) -> None:
    """Draw one section; a failure becomes one line in the page, the other sections still draw."""
    try:
        draw(*args)
    except Exception as e:  # noqa: BLE001 - never a traceback in the page
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        st.error(f"{title}: this section could not be drawn ({type(e).__name__}: {first})")


def no_sites(view: View) -> bool:
    """True (with a note) when the model has no residual site, so site signals cannot exist."""
    if len(view.run.sites):
        return False
    st.info("No residual site was found in this model, so there is nothing to show here.")
    return True


def signal_choice(view: View, signals: tuple[str, ...], key: str) -> str | None:
    """Radio over the recorded signals among ``signals``; None (with a note) if none is."""
    present = [s for s in signals if view.has(s)]
    if not present:
        st.info("Not recorded in this run: " + ", ".join(f"`{s}`" for s in signals) + ".")
        return None
    if len(present) == 1:
        return present[0]
    return st.radio(
        "Signal", present, format_func=lambda s: LABELS.get(s, s), horizontal=True, key=key
    )


def step_slider(view: View, signal: str, key: str, label: str = "Step") -> int | None:
    """Slider over the recorded steps of ``signal`` (default: the last one with values)."""
    steps = view.steps_of(signal)
    if not len(steps):
        return None
    if len(steps) == 1:
        return int(steps[0])
    lo, hi = int(steps[0]), int(steps[-1])
    return int(st.slider(label, lo, hi, hi, key=key))


def bucket_note(view: View, signal: str, cells: int | None = None) -> None:
    """Caption saying what the chart was drawn from and how much was drawn."""
    stride = view.run.stride(DERIVED.get(signal, signal))
    rows = len(view.table(signal))
    text = (
        f"Drawn from {rows:,} recorded rows over {view.run.steps:,} steps (each row averages "
        f"{stride:,} step{'s' if stride > 1 else ''})"
    )
    if cells is not None:
        text += f"; {cells:,} cells"
    st.caption(text + ".")


def threshold(report: Any, code: str, param: str) -> float | None:
    """Where rule ``code`` fires on ``param``: the value a finding of this run used, else the
    rule's default (what the charts draw, so the lines match the diagnosis)."""
    for f in report.findings if report is not None else ():
        if f.code == code and isinstance(f.thresholds.get(param), (int, float)):
            return float(f.thresholds[param])
    from resdoctor.rules import rules

    for r in rules():
        if r.code == code and isinstance(r.defaults.get(param), (int, float)):
            return float(r.defaults[param])
    return None


def flagged(report: Any, names: list[str]) -> list[str]:
    """``names`` (sites or modules) that a finding points at: its location or its evidence's
    site lists, root cause first."""
    hit: list[str] = []
    for f in report.findings if report is not None else ():
        found = [f.location] if f.location else []
        for key in ("sites", "first_site", "collapse_site", "first_module"):
            value = f.evidence.get(key)
            found += value if isinstance(value, list) else [value] if value else []
        for n in found:
            if n in names and n not in hit:
                hit.append(n)
    return hit
