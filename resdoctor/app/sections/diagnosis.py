"""Verdict, findings (evidence, thresholds) and fixes with copyable snippets."""

from __future__ import annotations

import streamlit as st

from resdoctor.app.data import Opened
from resdoctor.findings import Finding, Fix

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
    if not report.findings:
        st.success("No findings: nothing in this run needs attention.")
    for finding in report.findings:
        _finding(finding)
    if report.notes:
        with st.expander(f"Notes from the analysis ({len(report.notes)})"):
            for note in report.notes:
                st.markdown(f"- {note}")
    errors = opened.run.errors
    if len(errors):
        with st.expander(f"Internal recording errors ({len(errors)}); training went on"):
            st.dataframe(errors, hide_index=True)


def _finding(f: Finding) -> None:
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
        if f.fixes:
            _fix(f.fixes[0], "Suggested fix")
        if len(f.fixes) > 1:
            with st.expander(f"{len(f.fixes) - 1} more fix{'es' if len(f.fixes) > 2 else ''}"):
                for fix in f.fixes[1:]:
                    _fix(fix, "Also")


def _fix(fix: Fix, label: str) -> None:
    st.markdown(f"**{label}: {fix.title}** (`{fix.code}`)")
    if fix.detail:
        st.markdown(fix.detail)
    if fix.snippet:
        st.code(fix.snippet, language="python")
    params = {k: v for k, v in fix.params.items() if len(str(v)) <= 60}  # long ones are prose
    if params:
        st.caption("From this run: " + ", ".join(f"{k}={v}" for k, v in params.items()))
