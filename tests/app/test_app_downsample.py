"""Display down-sampling: bounded sizes, exact values where nothing is merged, NaN/Inf kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from resdoctor.app import downsample


def _table(rows: int, cols: int, start: int = 0, stride: int = 1) -> pd.DataFrame:
    values = np.arange(rows * cols, dtype=float).reshape(rows, cols) + 1.0
    index = pd.Index(start + stride * np.arange(rows), name="step")
    return pd.DataFrame(values, index=index, columns=[f"m{i}" for i in range(cols)])


def test_bucket_rows_keeps_small_tables_and_averages_large_ones() -> None:
    small = _table(10, 2)
    assert downsample.bucket_rows(small, 10) is small
    big = _table(10, 1)
    out = downsample.bucket_rows(big, 4)  # width 3: rows [0-2] [3-5] [6-8] [9]
    assert out.index.tolist() == [0, 3, 6, 9]
    assert out["m0"].tolist() == [2.0, 5.0, 8.0, 10.0]


def test_bucket_rows_leaves_nonfinite_out_of_the_mean() -> None:
    df = _table(4, 1)
    df.iloc[1, 0] = np.inf
    out = downsample.bucket_rows(df, 2)
    assert out["m0"].tolist() == [1.0, 3.5]


def test_line_frame_is_bounded_and_drops_nonfinite() -> None:
    df = _table(4096, 50)
    df.iloc[0, 0] = np.nan
    long = downsample.line_frame(df, max_points=20_000, per_line=2000)
    assert len(long) <= 20_000
    assert long.groupby("name").size().max() <= 2000
    assert set(long["name"]) == set(df.columns)
    assert np.isfinite(long["value"]).all()


def test_heatmap_exact_when_small() -> None:
    df = _table(3, 2)
    cells = downsample.heatmap_frame(df, last_step=3)
    assert len(cells) == 6
    assert cells["step_end"].tolist() == [1, 1, 2, 2, 3, 3]
    assert cells["value"].tolist() == df.to_numpy().reshape(-1).tolist()
    assert not cells["nonfinite"].any()


def test_heatmap_is_bounded_for_a_million_steps_and_200_modules() -> None:
    df = _table(4096, 200, stride=256)
    cells = downsample.heatmap_frame(df, last_step=4096 * 256)
    assert len(cells) <= downsample.MAX_HEATMAP_CELLS
    assert cells["name"].nunique() == 200
    assert cells["step"].nunique() <= downsample.MAX_HEATMAP_COLS
    assert cells["step_end"].max() == 4096 * 256  # the last bucket reaches the last step


def test_heatmap_merges_adjacent_modules_beyond_the_row_limit() -> None:
    df = _table(8, 500)
    cells = downsample.heatmap_frame(df, last_step=8, max_rows=200)
    names = cells.drop_duplicates("name").sort_values("depth")["name"].tolist()
    assert len(names) <= 200
    assert names[0] == "m0 … m2"  # 500 modules in groups of 3
    first = cells[(cells["name"] == "m0 … m2") & (cells["step"] == 0)]["value"].item()
    assert first == pytest.approx(df.iloc[0, :3].mean())


def test_heatmap_marks_measured_nan_but_not_missing_cells() -> None:
    df = _table(4, 2)
    df.iloc[2, 0] = np.nan  # measured NaN
    df.iloc[1, 1] = np.nan  # never measured
    present = np.ones(df.shape, dtype=bool)
    present[1, 1] = False
    cells = downsample.heatmap_frame(df, last_step=4, present=present)
    bad = cells[cells["nonfinite"]]
    assert bad[["step", "name"]].values.tolist() == [[2, "m0"]]
    assert not ((cells["step"] == 1) & (cells["name"] == "m1")).any()  # dropped: no data
    merged = downsample.heatmap_frame(df, last_step=4, present=present, max_cols=2)
    assert merged[merged["nonfinite"]][["step", "name"]].values.tolist() == [[2, "m0"]]


def test_profile_at_takes_the_row_covering_the_step() -> None:
    df = _table(4, 3, start=0, stride=10)  # rows at 0, 10, 20, 30
    step, frame = downsample.profile_at(df, 25)
    assert step == 20
    assert frame["value"].tolist() == df.loc[20].tolist()
    assert frame["depth"].tolist() == [0, 1, 2]


def test_snapshots_spread_over_the_run() -> None:
    df = _table(100, 3)
    snaps = downsample.snapshots(df, k=5)
    assert sorted(snaps["step"].unique().tolist()) == [0, 25, 50, 74, 99]
    assert len(snaps) == 15


def test_event_marks_exact_when_few_counted_when_many() -> None:
    few = downsample.event_marks(np.array([7, 3]), total_steps=10)
    assert few["step"].tolist() == [3, 7]
    assert few["count"].tolist() == [1, 1]
    many = downsample.event_marks(np.arange(0, 1_000_000, 7), total_steps=1_000_000)
    assert len(many) <= downsample.MAX_EVENT_MARKS
    assert many["count"].sum() == len(np.arange(0, 1_000_000, 7))


def test_log_charts_keep_zero_values_visible() -> None:
    """A zero-initialised branch has ratio 0: on a log axis it is drawn at a floor, not dropped."""
    from resdoctor.app import charts

    frame = pd.DataFrame({"step": [0, 1, 2], "name": ["b"] * 3, "value": [0.0, 1e-3, 2e-2]})
    spec = charts.lines(frame, y_title="ratio", log=True).to_dict()
    data = next(iter(spec["datasets"].values()))
    assert [row["shown"] for row in data] == [1e-4, 1e-3, 2e-2]
    assert [row["value"] for row in data] == [0.0, 1e-3, 2e-2]  # the tooltip's true values
    linear = charts.lines(frame, y_title="ratio").to_dict()
    assert [r["shown"] for r in next(iter(linear["datasets"].values()))] == [0.0, 1e-3, 2e-2]
