"""Series: a bounded, down-sampled table of one signal over steps.

Rows are step buckets. While there is room every step is its own row; when ``capacity`` rows are
full, adjacent rows are merged pairwise (count-weighted mean, max, min) and the bucket width
(``stride``) doubles. So memory and file size are bounded by ``capacity`` rows whatever the run
length, the first and every later part of the run keep the same resolution, and a run of N steps
keeps a resolution of at least N / capacity steps per row. Events (non-finite onsets, skipped
steps) are not stored here: they are kept exactly, elsewhere.
"""

from __future__ import annotations

import numpy as np
import torch

from resdoctor.runfile.layout import SeriesState

DEFAULT_CAPACITY = 2048


class Series:
    """Rows of ``len(columns)`` float values with ``mean``/``max``/``min`` per step bucket."""

    def __init__(self, columns: list[str], capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.columns = list(columns)
        self.capacity = capacity
        self.stride = 1
        n = len(self.columns)
        self._steps = np.zeros(capacity, dtype=np.int64)
        self._count = np.zeros(capacity, dtype=np.int64)  # steps merged into each row
        self._sum = np.zeros((capacity, n), dtype=np.float64)
        self._n = np.zeros((capacity, n), dtype=np.int64)  # non-missing samples per cell
        self._max = np.full((capacity, n), -np.inf, dtype=np.float64)
        self._min = np.full((capacity, n), np.inf, dtype=np.float64)
        self._rows = 0

    def __len__(self) -> int:
        return self._rows

    def add_columns(self, names: list[str]) -> None:
        """Append columns (e.g. scalars first logged late); earlier rows hold no value for them."""
        new = [c for c in names if c not in self.columns]
        if not new:
            return
        self.columns.extend(new)
        k = len(new)
        self._sum = np.pad(self._sum, ((0, 0), (0, k)))
        self._n = np.pad(self._n, ((0, 0), (0, k)))
        self._max = np.pad(self._max, ((0, 0), (0, k)), constant_values=-np.inf)
        self._min = np.pad(self._min, ((0, 0), (0, k)), constant_values=np.inf)

    def append(self, step: int, values: np.ndarray, present: np.ndarray | None = None) -> None:
        """Add one step's values. ``present`` marks measured cells (default: the non-NaN ones);
        a measured NaN or inf is kept, so a bucket that saw one has a non-finite mean and max."""
        values = np.asarray(values, dtype=np.float64)
        row = self._rows - 1
        if self._rows == 0 or step // self.stride != self._steps[row] // self.stride:
            if self._rows == self.capacity:
                self._compact()
            row = self._rows
            self._rows += 1
            self._steps[row] = step
        if present is None:
            present = ~np.isnan(values)
        self._count[row] += 1
        if present.all() and np.isfinite(values).all():  # the usual row: no masks needed
            self._n[row] += 1
            self._sum[row] += values
            np.maximum(self._max[row], values, out=self._max[row])
            np.minimum(self._min[row], values, out=self._min[row])
            return
        self._n[row] += present
        with np.errstate(invalid="ignore"):  # inf - inf is a legitimate NaN here
            self._fold(row, values, present)

    def _fold(self, row: int, values: np.ndarray, present: np.ndarray) -> None:
        np.add(self._sum[row], values, out=self._sum[row], where=present)
        # a measured NaN must survive max/min (np.maximum propagates it, np.fmax would drop it)
        np.maximum(self._max[row], values, out=self._max[row], where=present)
        np.minimum(self._min[row], values, out=self._min[row], where=present)

    def _compact(self) -> None:
        half = self.capacity // 2
        even, odd = slice(0, None, 2), slice(1, None, 2)
        self._steps[:half] = self._steps[even]
        self._count[:half] = self._count[even] + self._count[odd]
        with np.errstate(invalid="ignore"):
            self._sum[:half] = self._sum[even] + self._sum[odd]
        self._n[:half] = self._n[even] + self._n[odd]
        self._max[:half] = np.maximum(self._max[even], self._max[odd])
        self._min[:half] = np.minimum(self._min[even], self._min[odd])
        self._sum[half:] = 0.0
        self._n[half:] = 0
        self._count[half:] = 0
        self._max[half:] = -np.inf
        self._min[half:] = np.inf
        self._rows = half
        self.stride *= 2

    def mean(self) -> np.ndarray:
        n = self._n[: self._rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self._sum[: self._rows] / np.maximum(n, 1), np.nan)

    def to_state(self) -> SeriesState:
        """Plain containers and tensors only: loadable with ``weights_only=True``."""
        r = self._rows
        n = self._n[:r]
        with np.errstate(over="ignore"):  # beyond float32's range reads inf, as in training
            return self._state(r, n)

    def _state(self, r: int, n: np.ndarray) -> SeriesState:
        return {
            "columns": list(self.columns),
            "stride": int(self.stride),
            "capacity": int(self.capacity),
            "steps": torch.from_numpy(self._steps[:r].copy()),
            "count": torch.from_numpy(self._count[:r].copy()),
            # per-cell sample counts only where some cell missed a sample: a full table is
            # implied by "count" (see ``counts``), which keeps million-step files small
            "n": None
            if (n == self._count[:r, None]).all()
            else torch.from_numpy(n.astype(np.int32)),
            "mean": torch.from_numpy(self.mean().astype(np.float32)),
            "max": torch.from_numpy(np.where(n > 0, self._max[:r], np.nan).astype(np.float32)),
            "min": torch.from_numpy(np.where(n > 0, self._min[:r], np.nan).astype(np.float32)),
        }
