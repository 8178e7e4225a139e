"""The run's identity and the verdict, at the top of the page."""

from __future__ import annotations

import os
import time

import streamlit as st

from resdoctor.app import charts, ui
from resdoctor.app.data import Opened

COLOR = {"healthy": "green", "warning": "orange", "critical": "red"}


def render(opened: Opened) -> None:
    run, report = opened.run, opened.report
    st.markdown(f"## resdoctor · {os.path.basename(opened.path)}")
    meta = run.meta
    st.caption(
        f"{opened.path} · model {meta.get('model_class') or '?'} · resdoctor "
        f"{meta.get('resdoctor_version') or '?'} · torch {meta.get('torch_version') or '?'}"
        f" · written {_ago(run.written)}"
    )
    if report is None:
        st.error(opened.analysis_error or "the analysis failed")
    else:
        verdict_banner(report.verdict, [f.severity for f in report.findings])
    if run.steps == 0:
        st.info(
            "No step recorded yet. If training is running, turn on auto-refresh in the "
            "sidebar: the file is rewritten every flush_every steps or flush_seconds."
        )
    if report is not None and report.root_cause is not None:
        root = report.root_cause
        first = f" · first fix: **{report.plan[0].title}** (`{report.plan[0].code}`)"
        st.markdown(
            f"**Root cause:** `{root.code}` — {root.title}" + (first if report.plan else "")
        )
    c = st.columns(6)
    c[0].metric("steps", f"{run.steps:,}")
    c[1].metric("modules with parameters", len(opened.view.depth_order("grad_norm")))
    c[2].metric("residual sites", len(run.sites))
    c[3].metric("non-finite onsets", len(run.nonfinite))
    c[4].metric("first NaN/Inf step", _or_dash(opened.view.first_onset()))
    c[5].metric("skipped AMP steps", f"{len(run.skipped_steps):,}")
    _loss(opened)


def _loss(opened: Opened) -> None:
    """The loss over the steps shown (the finite window of a run that went NaN), onset marked:
    what happened, at a glance, before any tab."""
    frame = opened.view.scalars()
    if frame.empty or "loss" not in set(frame["name"]):
        return
    part = frame[frame["name"] == "loss"]
    positive = bool((part["value"] > 0).all())
    ui.show(
        charts.lines(
            part,
            y_title="loss",
            log=positive,
            onset=opened.view.first_onset(),
            height=150,
            steps=opened.view.last_step,
        )
    )


def verdict_banner(verdict: str, severities: list[str]) -> None:
    counts = {s: severities.count(s) for s in ("critical", "warning", "info") if s in severities}
    detail = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no findings"
    color = COLOR.get(verdict, "gray")
    st.markdown(f"### :{color}-background[Verdict: {verdict}] &nbsp; :{color}[{detail}]")


def _or_dash(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _ago(written: object) -> str:
    if not isinstance(written, (int, float)):
        return "?"
    seconds = max(0.0, time.time() - float(written))
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(float(written)))
