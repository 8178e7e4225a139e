"""Activation growth: the residual stream's RMS by depth, at steps spread over the run."""

from __future__ import annotations

import streamlit as st

from resdoctor.app import charts, ui
from resdoctor.app.data import Opened

SIGNAL = "stream_norm"


def render(opened: Opened) -> None:
    view = opened.view
    st.subheader("Activation growth")
    if ui.no_sites(view):
        return
    if not view.has(SIGNAL):
        st.info("The stream norm was not recorded in this run (watch(..., sites=False)?).")
        return
    st.caption(
        "RMS of the residual stream after each addition, by depth (log scale). A straight "
        "rising line is exponential growth; a pre-activation ResNet grows like √depth."
    )
    snaps = view.snapshots(SIGNAL)
    ui.show(charts.profile(snaps, y_title="stream RMS", log=True))
    cells = view.heatmap(SIGNAL)
    ui.show(
        charts.heatmap(cells, value_title="stream RMS", onset=view.first_onset(), scheme="magma")
    )
    ui.bucket_note(view, SIGNAL, cells=len(cells))
