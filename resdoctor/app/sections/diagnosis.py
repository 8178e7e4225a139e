"""The root cause, its story and the fix plan (copyable snippets, each once), then every
finding with its evidence, thresholds and links."""

from __future__ import annotations

import streamlit as st

from resdoctor.app.data import Opened
from resdoctor.findings import Finding, Fix
from resdoctor.report.analysis import Report

# the tab whose chart shows each finding's evidence (tab labels of app/main.py)
CHART_TAB = {
    "nonfinite": "Gradient flow",
    "vanishing-gradients": "Gradient flow",
    "exploding-gradients": "Gradient flow",
    "grad-spike": "Gradient flow",
    "branch-dominance": "Residual sites",
    "dead-branch": "Residual sites",
    "activation-growth": "Activation growth",
    "precision-overflow": "Activation growth",
    "dead-units": "Activation growth",
    "saturation": "Activation growth",
    "oversmoothing": "Over-smoothing",
    "loss-divergence": "Loss & LR",
    "loss-spike": "Loss & LR",
    "stalled-training": "Loss & LR",
}
TAB_KEY = "tab"  # the key of main's st.tabs, bound to the ?tab= query parameter

ICON = {
    "critical": ":red[:material/dangerous:]",
    "warning": ":orange[:material/warning:]",
    "info": ":blue[:material/info:]",
}


def render(opened: Opened) -> None:
    report = opened.report
    if report is None:
        st.error(opened.analysis_error or "the analysis failed")
        return
    if report.gaps:
        st.warning(
            f"Incomplete: {len(report.gaps)} signal gap(s); the verdict covers only what was "
            "measured.\n\n" + "\n".join(f"- {gap}" for gap in report.gaps)
        )
    if not report.findings:
        st.success("No findings: nothing in this run needs attention.")
    _root_and_plan(report)
    for i, finding in enumerate(report.findings):
        _finding(finding, i)
    if report.notes:
        with st.expander(f"Notes from the analysis ({len(report.notes)})"):
            for note in report.notes:
                st.markdown(f"- {note}")
    errors = opened.run.errors
    if len(errors):
        with st.expander(f"Internal recording errors ({len(errors)}); training went on"):
            st.dataframe(errors, hide_index=True)


def _root_and_plan(report: Report) -> None:
    root = report.root_cause
    if root is None:
        return
    with st.container(border=True):
        st.markdown(f"#### {ICON.get(root.severity, '')} Root cause: `{root.code}`")
        st.markdown(report.story or root.title)
        if report.plan:
            _fix(report.plan[0], "First fix")
        if len(report.plan) > 1:
            with st.expander(f"The rest of the plan ({len(report.plan) - 1})"):
                for i, fix in enumerate(report.plan[1:]):
                    _fix(fix, f"Fix {i + 2}")


def _finding(f: Finding, i: int) -> None:
    with st.container(border=True):
        st.markdown(f"#### {ICON.get(f.severity, '')} {f.title}")
        where = [f"`{f.code}`", f"**{f.severity}**"]
        where += [f"step **{f.step:,}**"] if f.step is not None else []
        where += [f"at `{f.location}`"] if f.location else []
        where += [f"in the {f.phase} pass"] if f.phase else []
        st.markdown(" · ".join(where))
        st.markdown(f.message)
        if f.evidence or f.thresholds:
            with st.expander("Evidence and thresholds"):
                if f.evidence:
                    st.json(f.evidence, expanded=True)
                if f.thresholds:
                    st.caption(
                        "Fired with: " + ", ".join(f"{k}={v}" for k, v in f.thresholds.items())
                    )
        links = [f"after `{x['code']}` (+{x['lead_steps']} steps)" for x in f.preceded_by]
        links += [f"led to `{x['code']}`" for x in f.leads_to]
        if links:
            st.caption(" · ".join(links))
        if f.fixes:  # the snippets are in the plan above, once each
            st.markdown("Fixes (in the plan): " + ", ".join(f"`{x.code}`" for x in f.fixes))
        tab = CHART_TAB.get(f.code)
        if tab:
            st.button(
                f"See it in {tab} →",
                key=f"chart-{i}",
                help=f"Opens the {tab} tab"
                + (f"; `{f.location}` is marked ▶" if f.location else ""),
                on_click=_open_tab,
                args=(tab,),
            )


def _open_tab(tab: str) -> None:
    st.session_state[TAB_KEY] = tab


def _fix(fix: Fix, label: str) -> None:
    st.markdown(f"**{label}: {fix.title}** (`{fix.code}`)")
    if fix.detail:
        st.markdown(fix.detail)
    if fix.snippet:
        st.code(fix.snippet, language="python")
    params = {k: v for k, v in fix.params.items() if len(str(v)) <= 60}  # long ones are prose
    if params:
        st.caption("From this run: " + ", ".join(f"{k}={v}" for k, v in params.items()))
