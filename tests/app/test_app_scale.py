"""A million-step run of 200 modules and 100 sites: every chart gets a bounded number of points.

The run file is built with the recorder's own Journal and Series filled to capacity (the most rows
a real run file holds), and opened in the real app; the rows counted are the Arrow tables that
streamlit sends to the browser.
"""

from __future__ import annotations

import pytest

from resdoctor.app import downsample
from tests.app.conftest import chart_data

TABS = ["Gradient flow", "Residual sites", "Activation growth", "Over-smoothing", "Loss & LR"]


@pytest.mark.parametrize("tab", TABS)
def test_points_sent_to_the_browser_are_bounded(app, large_run, tab: str) -> None:
    at = app(run=large_run, tab=tab)
    assert not at.exception and not at.error, [e.value for e in at.error]
    charts = chart_data(at)
    assert charts
    rows = [len(f) for _, frames in charts for f in frames]
    assert max(rows) <= downsample.MAX_HEATMAP_CELLS
    assert sum(rows) <= 2 * downsample.MAX_HEATMAP_CELLS + downsample.MAX_CHART_POINTS
    for _spec, frames in charts:
        data = max(frames, key=len)
        if "step_end" in data.columns and "nonfinite" in data.columns:  # a heatmap
            assert data["step"].nunique() <= downsample.MAX_HEATMAP_COLS
            assert data["name"].nunique() <= downsample.MAX_HEATMAP_ROWS
            assert data["step_end"].max() == 1 << 20  # still spans the whole run
            assert len(data) >= 10_000  # and is not trivially small
        elif "name" in data.columns and "step" in data.columns and len(data):
            per_line = data.groupby("name").size()
            assert per_line.max() <= downsample.MAX_LINE_POINTS
            assert data["step"].max() > 1_000_000  # the last bucket is drawn


def test_gradient_heatmap_keeps_the_measured_nan(app, large_run) -> None:
    at = app(run=large_run, tab="Gradient flow")
    cells = max(chart_data(at)[0][1], key=len)
    bad = cells[cells["nonfinite"]]
    assert set(bad["name"]) == {"blocks.50.fc1"}  # the column with NaN in its last rows
    assert bad["step"].min() > 1_000_000
    assert cells["name"].nunique() == 200


def test_many_skipped_steps_become_counts(app, large_run) -> None:
    at = app(run=large_run, tab="Loss & LR")
    marks = chart_data(at)[-1][1][0]
    assert len(marks) <= downsample.MAX_EVENT_MARKS
    assert marks["count"].sum() == 20_000
