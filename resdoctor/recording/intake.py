"""Intake: transferred segments -> the journal, several steps at a time.

Each step's packed segment leaves the device on its own (``Transfer``). Finished copies wait
here until ``batch`` of them are ready, one holds a NaN/Inf (its onset becomes an event at
once), or anyone reads the run (``settle``); then runs of
consecutive segments that share one layout (``Segment.pack`` hands the same layout object out
while nothing about the step's shape changed) are unpacked together and folded in with
``Journal.consume_many``: a few vectorised operations on ``[k, ...]`` arrays per run instead of
dozens of small ones per step. The run is the same as consuming each segment on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from resdoctor.recording.journal import Journal, SegmentMeta
from resdoctor.recording.segment import Layout, Transfer, Unpacker

Fold = Callable[[dict[str, Any]], dict[str, Any]]  # per-parameter vectors -> per-module


def _same(vectors: dict[str, Any]) -> dict[str, Any]:
    return vectors


class Intake:
    """Owns the way from a packed segment to the journal: ``submit`` after each segment,
    ``drain`` to take finished copies (consuming once ``batch`` wait), ``settle`` before
    anything reads the journal."""

    def __init__(
        self,
        journal: Journal,
        unpack: Unpacker | None = None,
        fold: Fold = _same,
        batch: int = 32,
        rank: int = 0,
    ) -> None:
        self.journal = journal
        self.unpack = unpack or Unpacker()
        self.fold = fold
        self.batch = max(1, batch)
        self.rank = rank
        self.transfer = Transfer()
        self._ready: list[tuple[SegmentMeta, np.ndarray | None, Layout]] = []

    @property
    def behind(self) -> int:
        """Segments submitted but not yet in the journal."""
        return len(self._ready) + self.transfer.pending

    def submit(self, meta: SegmentMeta, flat: torch.Tensor | None, layout: Layout) -> None:
        self.transfer.submit(meta, flat, layout)

    def drain(self, wait: bool = False) -> None:
        """Take the finished copies (``wait``: all of them); consume them once ``batch`` wait,
        or at once when one holds a NaN/Inf."""
        done = self.transfer.ready(wait)
        self._ready.extend(done)
        # a NaN/Inf is folded in at once: its onset is an event the step it happens
        if len(self._ready) >= self.batch or any(
            flat is not None and not np.isfinite(flat).all() for _, flat, _ in done
        ):
            self.settle()

    def settle(self, wait: bool = False) -> None:
        """Consume every finished copy now (``wait``: every submitted one)."""
        self._ready.extend(self.transfer.ready(wait))
        ready, self._ready = self._ready, []
        if not ready:
            return
        together: dict[int, list[int]] = {}  # the segments that share a layout (object)
        for i, (_, _, layout) in enumerate(ready):
            together.setdefault(id(layout), []).append(i)
        parts = []
        for members in together.values():
            layout = ready[members[0]][2]
            flats = [flat for i in members if (flat := ready[i][1]) is not None]
            stacked = np.stack(flats, dtype=np.float64) if flats else None
            blocks = self.unpack.many(stacked, layout, len(members))
            blocks["vec"] = self.fold(blocks["vec"])
            parts.append((np.array(members), blocks))
        self.journal.consume_many([meta for meta, _, _ in ready], parts, self.rank)
