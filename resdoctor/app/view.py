"""View: the display-ready, down-sampled frames of one Run, computed once per file version.

No streamlit here: the app caches one View per (path, mtime) and the sections only draw its frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from resdoctor.app import downsample
from resdoctor.runfile.run import Run
from resdoctor.runfile.signals import MODULE_SIGNALS, SIGNALS

LABELS = {s.name: s.label for s in SIGNALS}
# derived in the view: gradient RMS per parameter (what vanishing-gradients compares), so rows
# do not stripe by module size
DERIVED = {"grad_rms": "grad_norm"}
LABELS["grad_rms"] = "gradient RMS per parameter ‖∇W‖/√n"


class View:
    """Memoised, bounded frames of one run; every frame is small enough to send to a browser."""

    def __init__(self, run: Run, until: int | None = None) -> None:
        self.run = run
        self.until = until  # last step shown (None: every step)
        self._memo: dict[tuple[Any, ...], Any] = {}

    def finite_window(self) -> View:
        """The same run up to a few steps past the first NaN/Inf onset (the steps that can
        be read: afterwards every cell is magenta and every scale is blown); itself when the
        run never went non-finite or did so near its end."""
        onset = self.first_onset()
        if onset is None:
            return self
        until = onset + max(3, onset // 10)
        if until >= self.run.steps - 1:
            return self
        return self._cached(("window", until), lambda: View(self.run, until))

    def _cached(self, key: tuple[Any, ...], make: Any) -> Any:
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    # -- tables in depth order ---------------------------------------------------------------
    def depth_order(self, signal: str) -> list[str]:
        """Columns of ``signal`` in forward (depth) order: modules by completion, sites by index.
        A module never called itself (``nn.MultiheadAttention``'s ``out_proj``, used through its
        weight) takes its parent's place, just before it."""
        signal = DERIVED.get(signal, signal)
        cols = self.run.columns(signal)
        if signal in MODULE_SIGNALS:
            order = dict(zip(self.run.modules["name"], self.run.modules["order"], strict=False))

            def at(name: str) -> float:
                while order.get(name, -1) < 0 and name:
                    name = name.rpartition(".")[0]
                    if order.get(name, -1) >= 0:
                        return order[name] - 0.5
                return float(order.get(name, -1))

            rank = {c: (at(c) < 0, at(c), i) for i, c in enumerate(cols)}
        else:
            index = dict(zip(self.run.sites["name"], self.run.sites["index"], strict=False))
            rank = {c: (c not in index, index.get(c, 0), i) for i, c in enumerate(cols)}
        return sorted(cols, key=rank.__getitem__)

    def table(self, signal: str) -> pd.DataFrame:
        """Step x name of ``signal`` (bucket means), columns in depth order; empty if absent."""

        def make() -> pd.DataFrame:
            df = self.run.series(DERIVED.get(signal, signal))
            if df.empty:
                return df
            df = df[self.depth_order(signal)]
            if signal == "grad_rms":
                size = dict(zip(self.run.modules["name"], self.run.modules["params"], strict=False))
                n = np.array([max(int(size.get(c, 1)), 1) for c in df.columns], dtype=np.float64)
                df = df / np.sqrt(n)
            return df[df.index <= self.until] if self.until is not None else df

        return self._cached(("table", signal), make)

    def present(self, signal: str) -> np.ndarray | None:
        """Measured cells of ``table(signal)`` (a measured NaN counts), from the file's counts."""
        signal = DERIVED.get(signal, signal)
        measured = self.run.measured(signal)
        if measured.empty and not self.run.columns(signal):
            return None
        if self.until is not None:
            measured = measured[measured.index <= self.until]
        return measured[self.depth_order(signal)].to_numpy()

    def has(self, signal: str) -> bool:
        return not self.table(signal).empty

    # -- chart frames --------------------------------------------------------------------------
    def heatmap(self, signal: str) -> pd.DataFrame:
        """Cells (step, step_end, name, depth, value, nonfinite), bounded (see downsample)."""
        return self._cached(
            ("heatmap", signal),
            lambda: downsample.heatmap_frame(
                self.table(signal), last_step=self.last_step, present=self.present(signal)
            ),
        )

    def lines(self, signal: str, names: tuple[str, ...]) -> pd.DataFrame:
        """(step, name, value) of the chosen columns, bounded in points."""

        def make() -> pd.DataFrame:
            df = self.table(signal)
            return downsample.line_frame(df[[n for n in names if n in df.columns]])

        return self._cached(("lines", signal, names), make)

    def profile(self, signal: str, step: int) -> tuple[int, pd.DataFrame]:
        """Depth profile of ``signal`` at the row covering ``step``."""
        return downsample.profile_at(self.table(signal), step)

    def snapshots(self, signal: str, k: int = 5) -> pd.DataFrame:
        """Depth profiles at ``k`` steps spread over the run."""
        return self._cached(
            ("snap", signal, k), lambda: downsample.snapshots(self.table(signal), k)
        )

    def steps_of(self, signal: str) -> np.ndarray:
        """Row steps of ``signal`` that hold at least one finite value."""
        df = self.table(signal)
        if df.empty:
            return np.zeros(0, dtype=np.int64)
        keep = np.isfinite(df.to_numpy(dtype=np.float64)).any(axis=1)
        return df.index.to_numpy()[keep]

    def spread(self, signal: str, k: int = 6) -> list[str]:
        """Up to ``k`` columns spread evenly over depth (first and last included)."""
        cols = self.depth_order(signal)
        if len(cols) <= k:
            return cols
        return [cols[i] for i in np.unique(np.linspace(0, len(cols) - 1, k).round().astype(int))]

    @property
    def last_step(self) -> int:
        """One past the last step shown."""
        return self.run.steps if self.until is None else min(self.until + 1, self.run.steps)

    # -- scalars and events --------------------------------------------------------------------
    def scalars(self) -> pd.DataFrame:
        """(step, name, value) of every logged scalar, bounded per scalar."""

        def make() -> pd.DataFrame:
            df = self.run.scalars()
            if self.until is not None:
                df = df[df.index <= self.until]
            budget = downsample.MAX_LINE_POINTS * max(1, len(df.columns))
            return downsample.line_frame(df, max_points=budget)

        return self._cached(("scalars",), make)

    def onsets(self) -> pd.DataFrame:
        """Exact non-finite onsets: step, module, phase, rank (first per module and phase)."""
        ev = self.run.nonfinite
        return ev[["step", "module", "phase", "rank"]].reset_index(drop=True)

    def first_onset(self) -> int | None:
        ev = self.run.nonfinite
        return int(ev["step"].min()) if len(ev) else None

    def skipped(self) -> pd.DataFrame:
        """Skipped AMP steps as marks (step, step_end, count), bounded."""
        return self._cached(
            ("skipped",),
            lambda: downsample.event_marks(
                self.run.skipped_steps[self.run.skipped_steps < self.last_step],
                total_steps=self.last_step,
            ),
        )
