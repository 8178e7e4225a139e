"""The sidebar: which run (and which run to compare with) to open, and how often to refresh.

Sources, first match wins at start-up: ``?run=PATH&compare=PATH`` query parameters, then the
command line (``streamlit run app/main.py -- RUN [RUN2]``). Afterwards the text boxes, the folder
picker, the uploads and the demo buttons change the choice; the query string follows it, so the
address bar is a link to the same view (``&tab=...&refresh=5s`` keep the tab and auto-refresh).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import streamlit as st

from resdoctor.app import data

REFRESH = {"off": None, "2s": 2.0, "5s": 5.0, "15s": 15.0, "60s": 60.0}


@dataclass(frozen=True)
class Choice:
    run: str
    compare: str
    refresh: float | None
    problem: str | None = None  # e.g. a bad command line, shown in the page


def choose() -> Choice:
    """Draw the sidebar and return the current choice."""
    _init_state()
    with st.sidebar:
        st.header("Run")
        st.text_input(
            "Run file",
            key="run_path",
            placeholder="path/to/run.pt",
            help="A run file written by resdoctor.watch(...).",
        )
        st.text_input("Folder", key="folder", help="Where the pickers look for *.pt files.")
        _picker("run_path", "pick_run", "Or pick one in the folder")
        st.file_uploader(
            "Or upload a run file",
            type=["pt"],
            key="upload_run",
            on_change=_uploaded,
            args=("upload_run", "run_path"),
        )
        with st.expander("Compare with another run", expanded=bool(st.session_state.cmp_path)):
            st.text_input("Second run file", key="cmp_path", placeholder="path/to/fixed.pt")
            _picker("cmp_path", "pick_cmp", "Or pick one in the folder")
            st.file_uploader(
                "Or upload it",
                type=["pt"],
                key="upload_cmp",
                on_change=_uploaded,
                args=("upload_cmp", "cmp_path"),
            )
        st.header("Refresh")
        st.button("Reload now", help="Re-read the file if it changed on disk.", width="stretch")
        every = st.selectbox(
            "Auto-refresh while the run is written",
            list(REFRESH),
            key="refresh",
            bind="query-params",
        )
    run, cmp = st.session_state.run_path.strip(), st.session_state.cmp_path.strip()
    _sync_query(run, cmp)
    return Choice(run, cmp, REFRESH.get(every or "off"), st.session_state.get("problem"))


def _init_state() -> None:
    """First run of a session: take the query string, else the command line."""
    if "run_path" in st.session_state:
        return
    paths, problem = data.cli_runs(sys.argv[1:])
    st.session_state.problem = problem
    query = st.query_params
    st.session_state.run_path = query.get("run") or (paths[0] if paths else "")
    st.session_state.cmp_path = query.get("compare") or (paths[1] if len(paths) > 1 else "")
    st.session_state.folder = os.path.dirname(st.session_state.run_path) or os.getcwd()


def _picker(target: str, key: str, label: str) -> None:
    folder = st.session_state.get("folder") or os.getcwd()
    files = data.list_runs(folder)
    if not files:
        st.caption(f"No *.pt files in {folder}")
        return
    st.selectbox(
        label,
        files,
        index=None,
        key=key,
        format_func=os.path.basename,
        placeholder=f"{len(files)} run file{'s' if len(files) > 1 else ''} in "
        f"{os.path.basename(folder) or folder}",
        on_change=_picked,
        args=(key, target),
    )


def _picked(key: str, target: str) -> None:
    if st.session_state.get(key):
        st.session_state[target] = st.session_state[key]


def _uploaded(key: str, target: str) -> None:
    upload = st.session_state.get(key)
    if upload is not None:
        st.session_state[target] = data.save_upload(upload.name, upload.getvalue())


def _sync_query(run: str, cmp: str) -> None:
    """Mirror the choice in the address bar (uploads are temp files: not shareable)."""
    for name, value in (("run", run), ("compare", cmp)):
        shareable = value and not data.is_upload(value)
        if shareable and st.query_params.get(name) != value:
            st.query_params[name] = value
        elif not shareable and name in st.query_params:
            del st.query_params[name]


def demo_buttons() -> None:
    """Offer to record the demo run (and its fix) when nothing is open."""
    c1, c2, _ = st.columns([1, 1, 2])
    c1.button("Record and open the demo run", type="primary", on_click=_demo, args=(False,))
    c2.button("…and compare it with its fix", on_click=_demo, args=(True,))
    if st.session_state.get("demo_error"):
        st.error(st.session_state.demo_error)


def _demo(fixed: bool) -> None:
    try:
        with st.spinner("Recording the demo run (a small model trained on CPU)…"):
            sick, healthy = data.record_demo(fixed)
    except Exception as e:  # noqa: BLE001 - shown as one line in the page
        st.session_state.demo_error = f"Could not record the demo run: {e}"
        return
    st.session_state.demo_error = None
    st.session_state.run_path = sick
    st.session_state.cmp_path = healthy or ""
    st.session_state.folder = os.path.dirname(sick)
