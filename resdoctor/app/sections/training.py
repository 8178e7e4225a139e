"""Loss, learning rate, total gradient norm, other logged scalars and skipped AMP steps."""

from __future__ import annotations

import streamlit as st

from resdoctor.app import charts, ui
from resdoctor.app.data import Opened

MAIN = ("loss", "lr", "grad_norm_total")
TITLES = {"loss": "loss", "lr": "learning rate", "grad_norm_total": "total gradient norm"}


def render(opened: Opened) -> None:
    view = opened.view
    st.subheader("Loss, learning rate and skipped steps")
    frame = view.scalars()
    if frame.empty:
        st.info("No scalar was logged (call doctor.log(loss=loss) each step).")
    log = st.toggle("Log scale", value=True, key="train_log")
    onset = view.first_onset()
    left, right = st.columns(2)
    panels = [n for n in MAIN if n in set(frame["name"])]
    for i, name in enumerate(panels):
        with left if i % 2 == 0 else right:
            st.markdown(f"**{TITLES[name]}**")
            part = frame[frame["name"] == name]
            ui.show(
                charts.lines(
                    part,
                    y_title=TITLES[name],
                    log=log and _positive(part),
                    onset=onset,
                    height=240,
                    steps=view.last_step,
                )
            )
    others = frame[~frame["name"].isin(MAIN)]
    if len(others):
        st.markdown("**Other logged scalars**")
        ui.show(
            charts.lines(
                others,
                y_title="value",
                log=log and _positive(others),
                onset=onset,
                steps=view.last_step,
            )
        )
    _skipped(opened)


def _skipped(opened: Opened) -> None:
    marks = opened.view.skipped()
    if not len(marks):
        st.caption("No step was skipped by an AMP GradScaler.")
        return
    n = len(opened.run.skipped_steps)
    st.markdown(
        f"**Skipped AMP steps**: {n:,} (a GradScaler skipping overflow steps is normal; "
        "a long run of them is not)"
    )
    title = "skipped" if int(marks["count"].max()) == 1 else "skipped per bucket"
    ui.show(charts.event_bars(marks, title=title, steps=opened.view.last_step))


def _positive(part: object) -> bool:
    values = part["value"]  # type: ignore[index]
    return bool(len(values)) and bool((values > 0).all())
