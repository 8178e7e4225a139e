"""Two runs side by side (before / after a fix) with the differences the analyzer reports."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
import streamlit as st

from resdoctor.app import charts, data, ui
from resdoctor.app.data import Opened
from resdoctor.app.sections.header import verdict_banner


def render(a: Opened, b: Opened) -> None:
    st.subheader("Compare two runs")
    names = {"A": _name(a), "B": _name(b)}
    cols = st.columns(2)
    for col, (tag, opened) in zip(cols, (("A", a), ("B", b)), strict=True):
        with col:
            st.markdown(f"**{tag}: {names[tag]}** · {opened.run.steps:,} steps")
            if opened.report is None:
                st.error(opened.analysis_error or "the analysis failed")
            else:
                verdict_banner(opened.report.verdict, [f.severity for f in opened.report.findings])
    diff, error = data.compare(a, b)
    if error:
        st.error(error)
    elif diff is not None:
        _differences(diff)
    _overlays(a, b, names)


def _differences(diff: dict[str, Any]) -> None:
    """Render ``Comparison.to_dict()``: the summary, finding codes as badges, the metric table."""
    if diff.get("summary"):
        outcome = diff.get("outcome") or ("better" if diff.get("improved") else "unchanged")
        color = {"better": "green", "worse": "red"}.get(outcome, "gray")
        st.markdown(f"### :{color}[{outcome.capitalize()}] &nbsp; {diff['summary']}")
    chips = [f":green-badge[resolved: {c}]" for c in diff.get("resolved", [])]
    chips += [f":red-badge[new: {c}]" for c in diff.get("new", [])]
    badge = {"better": "green", "worse": "red"}
    chips += [
        f":{badge.get(p.get('change', ''), 'orange')}-badge[{p.get('change', 'persisting')}: "
        f"{p.get('code')} ({p.get('before')} → {p.get('after')})]"
        for p in diff.get("persisting", [])
    ]
    if chips:
        st.markdown(" ".join(chips))
    metrics = diff.get("metrics") or {}
    if metrics:
        table = pd.DataFrame([{"metric": k.replace("_", " "), **v} for k, v in metrics.items()])
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                "before": "A (before)",
                "after": "B (after)",
                "change": st.column_config.NumberColumn("B / A", format="%.3g"),
            },
        )


def _overlays(a: Opened, b: Opened, names: dict[str, str]) -> None:
    tagged = {"A": a, "B": b}
    left, right = st.columns(2)
    with left:
        st.markdown("**Loss**")
        loss = pd.concat(
            [
                o.view.scalars().query("name == 'loss'").assign(name=f"{t}: {names[t]}")
                for t, o in tagged.items()
            ],
            ignore_index=True,
        )
        if len(loss):
            ui.show(
                charts.lines(
                    loss,
                    y_title="loss",
                    log=bool((loss["value"] > 0).all()),
                    steps=max(a.run.steps, b.run.steps),
                    colors=charts.RUN_COLORS,
                )
            )
    with right:
        st.markdown("**Branch ratio by depth** (last step with finite values)")
        prof = pd.concat(
            [
                _last_profile(o, "branch_ratio").assign(run=f"{t}: {names[t]}")
                for t, o in tagged.items()
            ],
            ignore_index=True,
        )
        if len(prof):
            ui.show(
                charts.profile(
                    prof,
                    y_title="‖F(x)‖/‖x‖",
                    log=bool((prof["value"] > 0).all()),
                    color="run",
                    reference=1.0,
                    colors=charts.RUN_COLORS,
                )
            )
    grads = pd.concat(
        [_last_profile(o, "grad_norm").assign(run=f"{t}: {names[t]}") for t, o in tagged.items()],
        ignore_index=True,
    )
    if len(grads):
        st.markdown("**Gradient norm by module** (last step with finite values)")
        ui.show(
            charts.profile(
                grads,
                y_title="‖∇W‖",
                log=bool((grads["value"] > 0).all()),
                color="run",
                colors=charts.RUN_COLORS,
            )
        )


def _last_profile(opened: Opened, signal: str) -> pd.DataFrame:
    steps = opened.view.steps_of(signal)
    if not len(steps):
        return pd.DataFrame(columns=["depth", "name", "value"])
    return opened.view.profile(signal, int(steps[-1]))[1]


def _name(opened: Opened) -> str:
    return os.path.basename(opened.path)
