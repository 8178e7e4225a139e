"""resdoctor's visual report: ``resdoctor app RUN [RUN2]`` (or, from a checkout,
``streamlit run app/main.py -- RUN [RUN2]``).

Thin: pick the run(s), load them through the cache, draw the sections. No hooks, no rules here.
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from resdoctor.app import data, source, ui
from resdoctor.app.sections import (
    activations,
    comparison,
    diagnosis,
    gradients,
    header,
    sites,
    smoothing,
    training,
)
from resdoctor.runfile import RunFileError

SECTIONS = {
    "Diagnosis": diagnosis.render,
    "Gradient flow": gradients.render,
    "Residual sites": sites.render,
    "Activation growth": activations.render,
    "Over-smoothing": smoothing.render,
    "Loss & LR": training.render,
}


def main() -> None:
    st.set_page_config(page_title="resdoctor", page_icon="🩺", layout="wide")
    choice = source.choose()
    if choice.problem:
        st.warning(choice.problem)
    if not choice.run:
        _welcome()
        return
    a = _open(choice.run, "Run")
    if choice.refresh:  # also while the file does not exist yet
        _live(choice.run, a.key if a else None, choice.refresh)
    if a is None:
        return
    b = _open(choice.compare, "Second run") if choice.compare else None
    a, note = _window(a)
    ui.guarded("Header", header.render, a)
    if note:
        st.caption(note)
    # two runs: what changed comes first
    labels = (["Compare"] if b is not None else []) + list(SECTIONS)
    for label, tab in zip(labels, st.tabs(labels, key="tab", bind="query-params"), strict=True):
        if tab.open is False:  # lazy: only the open tab computes and sends its charts
            continue
        with tab:
            if label == "Compare":
                ui.guarded(label, comparison.render, a, b)
            else:
                ui.guarded(label, SECTIONS[label], a)


def _window(opened: data.Opened) -> tuple[data.Opened, str]:
    """Charts show the finite window (up to a few steps past the first NaN/Inf) unless the
    reader asks for every step; the note says so."""
    window = opened.view.finite_window()
    if window is opened.view:
        return opened, ""
    every = st.sidebar.toggle(
        "Show the steps after the first NaN/Inf",
        value=st.query_params.get("steps") == "all",  # a shareable link: ?steps=all
        help=f"Charts stop at step {window.until:,}: past the onset every value is NaN/Inf.",
        key="all_steps",
    )
    if every:
        return opened, ""
    note = (
        f"Charts show steps 0 to {window.until:,} of {opened.run.steps:,}: the run went "
        f"non-finite at step {opened.view.first_onset():,} (sidebar: show every step)."
    )
    return dataclasses.replace(opened, view=window), note


def _open(path: str, what: str) -> data.Opened | None:
    """Load a run, or show one clear line in the page and return None."""
    try:
        return data.open_run(path)
    except RunFileError as e:
        st.error(f"{what}: {e}")
    except Exception as e:  # noqa: BLE001 - any reader failure is still bad input here
        st.error(f"{what}: {path}: could not be read ({type(e).__name__}: {e})")
    return None


def _live(path: str, shown: data.FileKey | None, every: float) -> None:
    """Poll the file's mtime; rerun the whole page when it changed (cache is keyed on it)."""

    def poll() -> None:
        key = data.file_key(path)
        if key is not None and key != shown:
            st.rerun()
        st.caption(f"Watching {path} for changes every {every:g} s.")

    st.fragment(poll, run_every=every)()


def _welcome() -> None:
    st.title("resdoctor")
    st.markdown(
        'Open a run file written by `resdoctor.watch(model, optimizer, path="run.pt")`: '
        "type its path or upload it in the sidebar, start the app with "
        "`streamlit run app/main.py -- run.pt [fixed.pt]`, or share a link with "
        "`?run=/path/run.pt&compare=/path/fixed.pt`."
    )
    st.markdown(
        "No run at hand? Record the demo: a small residual network trained for a few "
        "seconds on CPU with a learning rate that makes it blow up."
    )
    source.demo_buttons()


if __name__ == "__main__":  # streamlit runs this file as __main__
    main()
