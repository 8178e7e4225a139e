"""Residual sites: branch ratio and gradient branch share over time and as a depth profile."""

from __future__ import annotations

import streamlit as st

from resdoctor.app import charts, ui
from resdoctor.app.data import Opened
from resdoctor.app.view import LABELS

SIGNALS = ("branch_ratio", "grad_branch_share", "attribution_share")
REFERENCE = {"branch_ratio": 1.0, "grad_branch_share": 0.5, "attribution_share": 0.5}


def render(opened: Opened) -> None:
    view = opened.view
    st.subheader("Residual sites")
    if ui.no_sites(view):
        return
    st.caption(
        "Branch ratio ‖F(x)‖/‖x‖ ≫ 1: the branch overwhelms the skip path; ≈ 0: the "
        "branch is dead. Gradient branch share: the part of the gradient at the site's "
        "input that flows through the branch rather than the skip."
    )
    signal = ui.signal_choice(view, SIGNALS, key="site_signal")
    if signal is None:
        return
    log = signal == "branch_ratio"
    left, right = st.columns(2)
    with left:
        st.markdown("**Over time**")
        order = view.depth_order(signal)
        flagged = ui.flagged(opened.report, order)  # the findings' sites first
        default = (flagged + [n for n in view.spread(signal) if n not in flagged])[:6]
        names = st.multiselect("Sites", order, default, key=f"sites_{signal}")
        if flagged:
            st.caption("Pre-selected: " + ", ".join(flagged[:6]) + " (named by the findings).")
        frame = view.lines(signal, tuple(names))
        if len(frame):
            ui.show(
                charts.lines(
                    frame,
                    y_title=LABELS[signal],
                    log=log,
                    onset=view.first_onset(),
                    color_title="site",
                    thresholds=_thresholds(opened, signal),
                )
            )
    with right:
        st.markdown("**By depth at a chosen step**")
        step = ui.step_slider(view, signal, key=f"site_step_{signal}")
        if step is not None:
            row, prof = view.profile(signal, step)
            st.caption(f"Row starting at step {row:,}.")
            ui.show(
                charts.profile(
                    prof.assign(step=row),
                    y_title=LABELS[signal],
                    log=log,
                    reference=REFERENCE.get(signal),
                )
            )
    with st.expander("All sites as a heatmap", expanded=len(view.depth_order(signal)) > 12):
        cells = view.heatmap(signal)
        ui.show(
            charts.heatmap(
                cells,
                value_title=LABELS[signal],
                log=log,
                onset=view.first_onset(),
                scheme="plasma",
                flagged=ui.flagged(opened.report, view.depth_order(signal)),
            )
        )
        ui.bucket_note(view, signal, cells=len(cells))


def _thresholds(opened: Opened, signal: str) -> list[tuple[float, str]]:
    """The rules' lines on this signal: where branch-dominance and dead-branch fire."""
    if signal != "branch_ratio":
        return []
    out = []
    for code in ("branch-dominance", "dead-branch"):
        value = ui.threshold(opened.report, code, "ratio")
        if value is not None:
            out.append((value, f"{code} ({value:g})"))
    return out
