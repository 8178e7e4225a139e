"""Down-sampling for display: every chart gets a bounded number of points, whatever the run size.

Pure pandas / numpy, no streamlit. A run of a million steps is already at most ``capacity`` rows per
signal (see ``resdoctor.runfile.series``); these functions bring that down to what a browser
draws quickly.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

MAX_HEATMAP_COLS = 500  # step buckets per heatmap
MAX_HEATMAP_ROWS = 200  # modules or sites per heatmap (adjacent ones merged beyond this)
MAX_HEATMAP_CELLS = 40_000  # cells per heatmap: 200 modules x 200 steps, 80 sites x 500 steps
MAX_LINE_POINTS = 2000  # points per line
MAX_CHART_POINTS = 20_000  # points per line chart, all lines together
MAX_EVENT_MARKS = 500  # individual event marks (skipped steps) before they become counts


def bucket_edges(n: int, max_buckets: int) -> np.ndarray:
    """Group labels ``0..k-1`` (k <= max_buckets) for ``n`` consecutive rows, equal widths."""
    width = max(1, math.ceil(n / max(1, max_buckets)))
    return np.arange(n) // width


def bucket_rows(df: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """Merge adjacent step rows into at most ``max_rows`` rows: mean of the finite values.

    The index of a merged row is its first step; a column ``step_end`` is not added (see
    ``heatmap_frame`` for that). Non-finite values are left out of the mean.
    """
    if len(df) <= max_rows:
        return df
    groups = bucket_edges(len(df), max_rows)
    finite = df.where(np.isfinite(df.to_numpy(dtype=np.float64)))
    out = finite.groupby(groups).mean()
    out.index = pd.Index(
        df.index.to_numpy()[np.r_[0, np.flatnonzero(np.diff(groups)) + 1]], name=df.index.name
    )
    return out


def line_frame(
    df: pd.DataFrame, *, max_points: int = MAX_CHART_POINTS, per_line: int = MAX_LINE_POINTS
) -> pd.DataFrame:
    """Long frame (step, name, value) of the finite values, at most ``max_points`` rows in all."""
    if df.empty or not len(df.columns):
        return pd.DataFrame(columns=["step", "name", "value"])
    rows = max(2, min(per_line, max_points // len(df.columns)))
    small = bucket_rows(df, rows)
    long = (
        small.rename_axis("step")
        .reset_index()
        .melt(id_vars="step", var_name="name", value_name="value")
    )
    long = long[np.isfinite(long["value"].to_numpy(dtype=np.float64))]
    return long.reset_index(drop=True)


def _merge_names(names: list[str], max_rows: int) -> tuple[np.ndarray, list[str]]:
    """Group adjacent names so that at most ``max_rows`` groups remain; labels 'first … last'."""
    groups = bucket_edges(len(names), max_rows)
    labels = []
    for g in range(int(groups.max()) + 1 if len(names) else 0):
        members = np.flatnonzero(groups == g)
        first, last = names[members[0]], names[members[-1]]
        labels.append(first if len(members) == 1 else f"{first} … {last}")
    return groups, labels


def heatmap_frame(
    df: pd.DataFrame,
    *,
    last_step: int,
    present: np.ndarray | None = None,
    max_cols: int = MAX_HEATMAP_COLS,
    max_rows: int = MAX_HEATMAP_ROWS,
    max_cells: int = MAX_HEATMAP_CELLS,
) -> pd.DataFrame:
    """Long frame of cells (step, step_end, name, depth, value, nonfinite) for a step x name table.

    Columns of ``df`` must be in depth order. ``present`` marks measured cells (default: the
    non-NaN ones), so a measured NaN is told apart from "not measured". A cell is ``nonfinite`` if
    any measured value merged into it was NaN or Inf; ``value`` is the mean of the finite ones.
    ``step_end`` is exclusive. Cells never measured are dropped. At most ``max_rows`` rows and
    ``max_cells`` cells: the number of step buckets is ``min(max_cols, max_cells // rows)``.
    """
    cols = ["step", "step_end", "name", "depth", "value", "nonfinite"]
    if df.empty or not len(df.columns):
        return pd.DataFrame(columns=cols)
    values = df.to_numpy(dtype=np.float64)
    measured = ~np.isnan(values) if present is None else np.asarray(present, dtype=bool)
    groups, labels = _merge_names([str(c) for c in df.columns], max_rows)
    value, bad = _merge_columns(values, measured, groups, len(labels))
    rows = bucket_edges(len(df), min(max_cols, max(1, max_cells // len(labels))))
    steps = df.index.to_numpy(dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(rows)) + 1]
    ends = np.r_[steps[starts[1:]], max(int(last_step), int(steps[-1]) + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN buckets stay NaN
        value = pd.DataFrame(value).groupby(rows).mean().to_numpy()
    bad = pd.DataFrame(bad).groupby(rows).any().to_numpy()
    ng, k = len(labels), len(starts)
    out = pd.DataFrame(
        {
            "step": np.repeat(steps[starts], ng),
            "step_end": np.repeat(ends, ng),
            "name": np.tile(np.array(labels, dtype=object), k),
            "depth": np.tile(np.arange(ng), k),
            "value": value.reshape(-1),
            "nonfinite": bad.reshape(-1),
        },
        columns=cols,
    )
    return out[out["nonfinite"] | out["value"].notna()].reset_index(drop=True)


def _merge_columns(
    values: np.ndarray, measured: np.ndarray, groups: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per group of adjacent columns: mean of the finite values and "any measured non-finite"."""
    finite = np.where(np.isfinite(values), values, np.nan)
    bad = ~np.isfinite(values) & measured
    if n_groups == values.shape[1]:
        return finite, bad
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        merged = np.stack([np.nanmean(finite[:, groups == g], axis=1) for g in range(n_groups)], 1)
    merged_bad = np.stack([bad[:, groups == g].any(axis=1) for g in range(n_groups)], axis=1)
    return merged, merged_bad


def profile_at(df: pd.DataFrame, step: int) -> tuple[int, pd.DataFrame]:
    """The row covering ``step`` (last row starting at or before it) as (row step, frame of
    depth, name, value) with columns in depth order."""
    if df.empty:
        return step, pd.DataFrame(columns=["depth", "name", "value"])
    steps = df.index.to_numpy()
    i = max(0, int(np.searchsorted(steps, step, side="right")) - 1)
    row = df.iloc[i].to_numpy(dtype=np.float64)
    frame = pd.DataFrame(
        {"depth": np.arange(len(row)), "name": [str(c) for c in df.columns], "value": row}
    )
    return int(steps[i]), frame[np.isfinite(frame["value"])].reset_index(drop=True)


def snapshots(df: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """Depth profiles at ``k`` steps spread over the run: (depth, name, value, step)."""
    if df.empty:
        return pd.DataFrame(columns=["depth", "name", "value", "step"])
    finite_rows = np.flatnonzero(np.isfinite(df.to_numpy(dtype=np.float64)).any(axis=1))
    if not len(finite_rows):
        return pd.DataFrame(columns=["depth", "name", "value", "step"])
    picks = np.unique(finite_rows[np.linspace(0, len(finite_rows) - 1, k).round().astype(int)])
    parts = []
    for i in picks:
        step, frame = profile_at(df, int(df.index[i]))
        parts.append(frame.assign(step=step))
    return pd.concat(parts, ignore_index=True)


def event_marks(
    steps: np.ndarray, *, total_steps: int, max_marks: int = MAX_EVENT_MARKS
) -> pd.DataFrame:
    """Event steps as (step, step_end, count): one row per event when few, else per bucket."""
    steps = np.sort(np.asarray(steps, dtype=np.int64))
    if len(steps) <= max_marks:
        ones = np.ones(len(steps), dtype=np.int64)
        return pd.DataFrame({"step": steps, "step_end": steps + 1, "count": ones})
    width = max(1, math.ceil(max(total_steps, int(steps[-1]) + 1) / max_marks))
    bucket, count = np.unique(steps // width, return_counts=True)
    return pd.DataFrame({"step": bucket * width, "step_end": (bucket + 1) * width, "count": count})
