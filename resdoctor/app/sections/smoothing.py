"""Over-smoothing: similarity of positions (tokens, nodes, pixels) by depth over time."""

from __future__ import annotations

import altair as alt
import streamlit as st

from resdoctor.app import charts, ui
from resdoctor.app.data import Opened


def render(opened: Opened) -> None:
    view = opened.view
    st.subheader("Over-smoothing")
    if ui.no_sites(view):
        return
    if not view.has("smoothing"):
        st.info("Over-smoothing was not recorded in this run (smoothing_every=0?).")
        return
    st.caption(
        "Mean pairwise cosine similarity of sampled positions after each site. Values "
        "near 1 deep in the network mean the positions became indistinguishable."
    )
    cells = view.heatmap("smoothing")
    ui.show(
        charts.heatmap(
            cells,
            value_title="cosine similarity",
            log=False,
            scheme="inferno",
            domain=(0.0, 1.0),
            onset=view.first_onset(),
        )
    )
    ui.bucket_note(view, "smoothing", cells=len(cells))
    left, right = st.columns(2)
    with left:
        st.markdown("**Similarity by depth**")
        limit = ui.threshold(opened.report, "oversmoothing", "similarity")
        chart = charts.profile(view.snapshots("smoothing"), y_title="cosine similarity")
        lines = [(limit, f"oversmoothing ({limit:g})")] if limit is not None else []
        ui.show(alt.layer(chart, *charts.threshold_rules(lines)))  # where the rule fires
    with right:
        if view.has("smoothing_energy"):
            st.markdown("**Dirichlet energy by depth** (→ 0: collapse)")
            ui.show(
                charts.profile(
                    view.snapshots("smoothing_energy"), y_title="normalised Dirichlet energy"
                )
            )
