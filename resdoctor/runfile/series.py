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
    """Rows of ``len(columns)`` float values with ``mean``/``max``/``min`` per step bucket.

    ``append`` only copies the step's values into a small pending block; every ``PENDING``
    appends (and before anything reads the table) the block is folded in with a few vectorised
    operations. The result is the same, bit for bit, as folding each step in on its own."""

    PENDING = 256

    def __init__(self, columns: list[str], capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 2 or capacity % 2:
            raise ValueError("capacity must be an even number >= 2")
        self.columns = list(columns)
        self.capacity = capacity
        self._stride = 1
        n = len(self.columns)
        self._steps = np.zeros(capacity, dtype=np.int64)
        self._count = np.zeros(capacity, dtype=np.int64)  # steps merged into each row
        self._sum = np.zeros((capacity, n), dtype=np.float64)
        self._n = np.zeros((capacity, n), dtype=np.int64)  # non-missing samples per cell
        self._max = np.full((capacity, n), -np.inf, dtype=np.float64)
        self._min = np.full((capacity, n), np.inf, dtype=np.float64)
        self._rows = 0
        # appended steps not yet folded into the table: steps, values, present, present given
        self._k = 0
        self._p_steps = np.zeros(self.PENDING, dtype=np.int64)
        self._p_values = np.zeros((self.PENDING, n), dtype=np.float64)
        self._p_present = np.zeros((self.PENDING, n), dtype=bool)
        self._p_given = np.zeros(self.PENDING, dtype=bool)

    def __len__(self) -> int:
        self._settle()
        return self._rows

    @property
    def stride(self) -> int:
        """Steps per row (doubles at each compaction)."""
        self._settle()
        return self._stride

    def add_columns(self, names: list[str]) -> None:
        """Append columns (e.g. scalars first logged late); earlier rows hold no value for them."""
        new = [c for c in names if c not in self.columns]
        if not new:
            return
        self._settle()
        self.columns.extend(new)
        k = len(new)
        self._sum = np.pad(self._sum, ((0, 0), (0, k)))
        self._n = np.pad(self._n, ((0, 0), (0, k)))
        self._max = np.pad(self._max, ((0, 0), (0, k)), constant_values=-np.inf)
        self._min = np.pad(self._min, ((0, 0), (0, k)), constant_values=np.inf)
        self._p_values = np.pad(self._p_values, ((0, 0), (0, k)))
        self._p_present = np.pad(self._p_present, ((0, 0), (0, k)))

    def append(self, step: int, values: np.ndarray, present: np.ndarray | None = None) -> None:
        """Add one step's values. ``present`` marks measured cells (default: the non-NaN ones);
        a measured NaN or inf is kept, so a bucket that saw one has a non-finite mean and max."""
        if self._k == self.PENDING:
            self._settle()
        k = self._k
        self._p_values[k] = values
        self._p_steps[k] = step
        self._p_given[k] = present is not None
        if present is not None:
            self._p_present[k] = present
        self._k = k + 1

    def extend(
        self, steps: np.ndarray, values: np.ndarray, present: np.ndarray | None = None
    ) -> None:
        """``append`` for several steps at once: ``values`` and ``present`` are ``[steps, n]``
        (``present`` may also be one ``[n]`` row for all)."""
        done, total = 0, len(steps)
        while done < total:
            if self._k == self.PENDING:
                self._settle()
            take = min(self.PENDING - self._k, total - done)
            into, part = slice(self._k, self._k + take), slice(done, done + take)
            self._p_steps[into] = steps[part]
            self._p_values[into] = values[part]
            self._p_given[into] = present is not None
            if present is not None:
                self._p_present[into] = present if present.ndim == 1 else present[part]
            self._k += take
            done += take

    def _settle(self) -> None:
        """Fold the pending steps into the table."""
        k, self._k = self._k, 0
        if not k:
            return
        steps, values, present = self._p_steps[:k], self._p_values[:k], self._p_present[:k]
        auto = ~self._p_given[:k]
        if auto.any():
            present[auto] = ~np.isnan(values[auto])
        done, fresh = 0, False
        with np.errstate(invalid="ignore"):  # inf - inf is a legitimate NaN here
            while done < k:
                folded = self._fold(steps[done:], values[done:], present[done:], fresh)
                done, fresh = done + folded, folded == 0  # 0: compacted, the next row is new

    def _fold(self, steps: np.ndarray, values: np.ndarray, present: np.ndarray, fresh: bool) -> int:
        """Fold the leading steps that fit into the table; how many (0: it was full and has
        been compacted). A step opens a new row when its bucket differs from the previous
        row's, or (``fresh``) when it is the first after a compaction."""
        bucket = steps // self._stride
        last = self._rows - 1
        opens = np.empty(len(steps), dtype=bool)
        opens[0] = fresh or last < 0 or bucket[0] != self._steps[last] // self._stride
        opens[1:] = bucket[1:] != bucket[:-1]
        row = last + np.cumsum(opens)
        fits = int(np.searchsorted(row, self.capacity))
        if fits == 0:
            self._compact()
            return 0
        starts = np.flatnonzero(opens[:fits] | (np.arange(fits) == 0))
        rows, new = row[starts], opens[starts]
        self._steps[rows[new]] = steps[starts[new]]
        self._rows = int(rows[-1]) + 1
        span = slice(int(rows[0]), self._rows)  # the rows these steps fold into, contiguous
        lengths = np.diff(np.append(starts, fits))
        self._count[span] += lengths
        values, present = values[:fits], present[:fits]
        if len(starts) == fits and new[0]:  # a new row for every step (stride 1)
            if present.all():
                self._n[span] = 1
                for table in (self._sum, self._max, self._min):
                    table[span] = values
            else:
                self._n[span] = present
                self._sum[span] = np.where(present, values, 0.0)
                self._max[span] = np.where(present, values, -np.inf)
                self._min[span] = np.where(present, values, np.inf)
            return fits
        # else each row's steps go into a padded [rows, longest, columns] block, led by the
        # open row's cells when the first steps join it, and are reduced along it; sums with
        # add.accumulate: in step order, as one step at a time would (reduceat is pairwise)
        lead = 0 if new[0] else 1
        group = np.repeat(np.arange(len(starts)), lengths)
        at = (group, np.arange(fits) - starts[group] + lead)
        shape = (len(starts), int(lengths.max()) + lead, values.shape[1])
        tables: tuple[tuple[np.ndarray, np.ndarray, float], ...] = (
            (self._n, present, 0),
            (self._sum, np.where(present, values, 0.0), 0.0),
            # a measured NaN must survive max/min (np.maximum propagates it, np.fmax drops it)
            (self._max, np.where(present, values, -np.inf), -np.inf),
            (self._min, np.where(present, values, np.inf), np.inf),
        )
        for table, cells, fill in tables:
            block = np.full(shape, fill, dtype=table.dtype)
            block[at] = cells
            if lead:
                block[0, 0] = table[span.start]
            if table is self._max:
                table[span] = np.maximum.reduce(block, axis=1)
            elif table is self._min:
                table[span] = np.minimum.reduce(block, axis=1)
            else:
                table[span] = np.add.accumulate(block, axis=1)[:, -1]
        return fits

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
        self._stride *= 2

    def mean(self) -> np.ndarray:
        self._settle()
        n = self._n[: self._rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self._sum[: self._rows] / np.maximum(n, 1), np.nan)

    def to_state(self) -> SeriesState:
        """Plain containers and tensors only: loadable with ``weights_only=True``."""
        self._settle()
        r = self._rows
        n = self._n[:r]
        with np.errstate(over="ignore"):  # beyond float32's range reads inf, as in training
            return self._state(r, n)

    def _state(self, r: int, n: np.ndarray) -> SeriesState:
        return {
            "columns": list(self.columns),
            "stride": int(self._stride),
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
