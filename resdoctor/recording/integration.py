"""The public interface between a watcher and the tools that ride on it.

An integration (W&B, Lightning, HF Trainer, the distributed merge, periodic attribution) is any
object with ``on_step(ctx)`` and ``on_close(ctx)``; it sees and changes the run only through the
``Context`` it is handed: never the recorder, the journal or their private state.

    class Printer:
        def on_step(self, ctx: Context) -> None:
            print(ctx.step, ctx.latest().get("scalars"))

        def on_close(self, ctx: Context) -> None:
            pass

    resdoctor.watch(model, opt).add_integration(Printer())
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from torch import nn

if TYPE_CHECKING:
    from resdoctor.recording.discovery import Site
    from resdoctor.recording.options import Options
    from resdoctor.recording.recorder import Recorder
    from resdoctor.runfile.layout import RunState


@runtime_checkable
class Integration(Protocol):
    """Called after every ``log()`` (``on_step``) and once at ``close()`` (``on_close``)."""

    def on_step(self, ctx: Context) -> None: ...

    def on_close(self, ctx: Context) -> None: ...


class Context:
    """What an integration may read and do. Every method is host-side: none syncs the device."""

    def __init__(self, recorder: Recorder, path: str, options: Options) -> None:
        self._recorder = recorder
        self.path = path  # the run file the user asked for (merged run under torch.distributed)
        self.options = options

    # -- what was recorded ----------------------------------------------------------------
    @property
    def step(self) -> int:
        """Steps completed so far (the index the next step will get)."""
        return self._recorder.step

    @property
    def sites(self) -> list[Site] | None:
        """The residual sites, once known."""
        return self._recorder.sites

    @property
    def model(self) -> nn.Module:
        return self._recorder.model

    @property
    def rank(self) -> int:
        return self._recorder.rank

    @property
    def world_size(self) -> int:
        return self._recorder.world_size

    @property
    def closed(self) -> bool:
        return self._recorder.closed

    @property
    def param_modules(self) -> list[str]:
        """The modules that own parameters: the columns of the per-module signals."""
        return list(self._recorder.journal.param_modules)

    def latest(self) -> dict[str, Any]:
        """Host values of the latest completed step: ``step``, ``skipped``, ``scalars`` and each
        per-module / per-site signal as an array; empty before the first step."""
        self._recorder.settle()
        return self._recorder.journal.latest()

    def events(self, since: int = 0, *, pending: bool = True) -> list[dict[str, Any]]:
        """Recorded events (non-finite onsets) from index ``since`` on; ``len`` of the full list
        is the ``since`` of the next call. ``pending=False``: only from the segments already in
        the journal, without folding the waiting ones in first (no work on the training thread;
        a segment that holds a NaN/Inf is folded in at once, so its onset is there)."""
        if pending:
            self._recorder.settle()
        return self._recorder.journal.events_since(since)

    def state(self) -> RunState:
        """The run file's state as of now (plain containers; what ``flush()`` would write)."""
        return self._recorder.state()

    # -- what an integration may add --------------------------------------------------------
    def add_series(self, name: str, columns: Sequence[str], step: int, values: np.ndarray) -> None:
        """Append one row of an extra per-column signal (created on first use) at ``step``."""
        self._recorder.journal.extra(name, list(columns), step, values)

    def set_meta(self, key: str, value: Any, *, replace: bool = True) -> None:
        """Store a run-level fact (plain containers) in the run file."""
        self._recorder.journal.set_meta(key, value, replace=replace)

    def record_error(self, where: str, error: BaseException) -> None:
        """Count an error in the run file's ``errors`` (training goes on)."""
        self._recorder.record_error(where, error)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forwards and backwards run inside are not recorded (the hooks stay in place)."""
        with self._recorder.paused():
            yield

    # -- frameworks that own the forward ------------------------------------------------------
    def begin_forward(self) -> None:
        """Open the step's forward span by hand (a framework whose loss is computed outside the
        model's ``forward``): every module call until ``end_forward`` belongs to it."""
        self._recorder.begin_forward(self._recorder.model, (), {})

    def end_forward(self, output: Any = None) -> None:
        """Close the span opened by ``begin_forward``; ``output`` (the loss) carries backward."""
        self._recorder.end_forward(self._recorder.model, (), {}, output)
