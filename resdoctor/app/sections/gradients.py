"""Gradient flow: module x step heatmap (log scale) with the non-finite onset marked."""

from __future__ import annotations

import streamlit as st

from resdoctor.app import charts, ui
from resdoctor.app.data import Opened
from resdoctor.app.view import LABELS

SIGNALS = ("grad_rms", "grad_norm", "update_ratio", "param_norm")


def render(opened: Opened) -> None:
    view = opened.view
    st.subheader("Gradient flow")
    st.caption(
        "Rows are modules with parameters in forward order (input at the top), columns are "
        "steps; colour is log10 of the value. Magenta cells saw NaN/Inf; the dashed line is "
        "the first non-finite step."
    )
    signal = ui.signal_choice(view, SIGNALS, key="grad_signal")
    if signal is None:
        return
    cells = view.heatmap(signal)
    flagged = ui.flagged(opened.report, view.depth_order(signal))
    ui.show(
        charts.heatmap(cells, value_title=LABELS[signal], onset=view.first_onset(), flagged=flagged)
    )
    if flagged:
        st.caption("▶ marks the modules a finding names: " + ", ".join(flagged[:6]) + ".")
    ui.bucket_note(view, signal, cells=len(cells))
    onsets = view.onsets()
    if len(onsets):
        st.markdown("**Non-finite onsets** (exact: first step per module and phase)")
        st.dataframe(onsets, hide_index=True, height=min(320, 38 + 35 * len(onsets)))
