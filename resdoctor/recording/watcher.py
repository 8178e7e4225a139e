"""watch(): the one line users add. The Watcher is a thin, never-raising front of the Recorder."""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from resdoctor.recording.discovery import Site, trace
from resdoctor.recording.integration import Context, Integration
from resdoctor.recording.options import Options
from resdoctor.recording.recorder import Recorder
from resdoctor.recording.trace import Tracer

COMPILED = (
    "resdoctor: the model is torch.compile'd. Recorded: loss, per-module gradient and "
    "parameter norms, update ratios, NaN/Inf in the model's inputs, output and gradients. Not "
    "recorded: residual sites, activations and where inside the model a NaN was made (the "
    "compiled graph runs no hooks). For those, watch the uncompiled model on a diagnostic run."
)


class Watcher:
    """Records training health of one model into a run file; see ``resdoctor.watch``.

    ``Watcher(...)`` and ``watch(...)`` take the same arguments.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
        path: str | os.PathLike[str] = "run.pt",
        *,
        scaler: Any = None,
        example_inputs: tuple[Any, ...] | None = None,
        example_kwargs: dict[str, Any] | None = None,
        options: Options | None = None,
        wandb: Any = None,
        wandb_every: int = 10,
        tensorboard: Any = None,
        tensorboard_every: int = 10,
        quiet: bool = False,
        **settings: Any,
    ) -> None:
        attribution = {
            k[len("attribute_") :]: settings.pop(k)
            for k in list(settings)
            if k.startswith("attribute_")
        }
        base = options.to_dict() if options is not None else {}
        self.options = Options.from_kwargs(**{**base, **settings})
        self.path = os.fspath(path)
        self.integrations: list[Integration] = []
        # built first: a bad setting fails before any hook is placed
        extra = _optional_integrations(
            attribution, wandb, wandb_every, quiet, tensorboard, tensorboard_every
        )
        traced: Tracer | None = None
        if self.options.sites and (example_inputs is not None or example_kwargs):
            try:  # the example pass gives the sites, the forward order and the NaN-prone ops
                traced = trace(model, *(example_inputs or ()), **(example_kwargs or {}))
            except Exception as e:  # noqa: BLE001 - fall back to the first training forward
                warnings.warn(
                    f"resdoctor: discovery on example_inputs failed ({e}); sites "
                    "will be found on the first forward pass",
                    stacklevel=2,
                )
        rank, world = _dist_rank()
        record_to = self.path
        if world > 1:  # each rank records run.rank{r}.pt; rank 0 merges them into path at close
            from resdoctor.integrations import distributed

            record_to = distributed.rank_path(self.path, rank)
        self.recorder = Recorder(
            model,
            optimizer,
            record_to,
            self.options,
            scaler=scaler,
            traced=traced,
            rank=rank,
            world_size=world,
        )
        if self.recorder.compiled and not quiet:
            warnings.warn(COMPILED, stacklevel=2)
        self.context = Context(self.recorder, self.path, self.options)
        try:
            if world > 1:
                self.add_integration(distributed.RankMerger(self.context))
            for integration in extra:
                self.add_integration(integration)
        except BaseException:
            self.recorder.remove_hooks()  # a failing watch() leaves no hook behind
            raise
        self.recorder.write_header()  # a previous run's file at the path is gone from now on
        _LIVE.add(self)  # held until close(): `resdoctor.watch(model)` unassigned keeps recording

    def add_integration(self, integration: Integration) -> None:
        """Call ``integration.on_step(ctx)`` after each ``log()`` and ``on_close(ctx)`` at close."""
        if not isinstance(integration, Integration):
            raise TypeError(f"{type(integration).__name__} has no on_step/on_close")
        self.integrations.append(integration)

    @property
    def sites(self) -> list[Site] | None:
        """The residual sites, once known (after the first forward or from example inputs)."""
        return self.recorder.sites

    @property
    def step(self) -> int:
        """Steps completed so far."""
        return self.recorder.step

    @property
    def closed(self) -> bool:
        return self.recorder.closed

    def log(self, **scalars: Any) -> None:
        """Attach scalars (floats or 0-d tensors; no device sync) to the step that just ran."""
        if self.recorder.closed:
            return
        try:
            self.recorder.log(scalars)
            for integration in self.integrations:
                integration.on_step(self.context)
        except Exception as e:  # noqa: BLE001 - never raise into the training loop
            self.recorder.record_error("log", e)

    def flush(self) -> None:
        """Write the run file now and wait until it is on disk (the periodic flushes during
        training hand the snapshot to a background writer and do not wait)."""
        try:
            self.recorder.flush(wait=True)
        except Exception as e:  # noqa: BLE001
            self.recorder.record_error("flush", e)
            warnings.warn(f"resdoctor: could not write {self.path}: {e}", stacklevel=2)

    def close(self) -> None:
        """Flush, write the run file and remove every hook. Safe to call twice."""
        _LIVE.discard(self)
        if self.recorder.closed:
            return
        try:
            self.recorder.close()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"resdoctor: could not write {self.path}: {e}", stacklevel=2)
        for integration in self.integrations:
            try:
                integration.on_close(self.context)
            except Exception as e:  # noqa: BLE001
                warnings.warn(f"resdoctor: integration failed at close: {e}", stacklevel=2)

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # a forgotten close() must not leave hooks behind
        try:
            if not self.recorder.closed:
                self.recorder.remove_hooks()
        except Exception:  # noqa: BLE001
            pass


_LIVE: set[Watcher] = set()


@atexit.register
def _close_live_watchers() -> None:
    """A script that ends without close() still gets its final run file."""
    for watcher in list(_LIVE):
        watcher.close()


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer] | None = None,
    path: str | os.PathLike[str] = "run.pt",
    **options: Any,
) -> Watcher:
    """Watch ``model`` (and ``optimizer``) and record its training health into ``path``.

    Steps: with an optimizer a step is one ``optimizer.step()`` (gradient accumulation folds
    into it; a step an AMP GradScaler skips is recorded as skipped); without one, each ``log()``
    call ends a step. Residual sites are discovered on the first forward pass, or up front from
    ``example_inputs``. Options: the fields of ``resdoctor.Options`` as keywords, or
    ``options=Options(...)`` (keywords win); also ``scaler=`` (a GradScaler, so gradient norms
    are unscaled), ``quiet=True`` (no log line at the first NaN/Inf nor verdict at close),
    ``wandb=True`` / a wandb run (``wandb_every=10``), and
    ``attribute_every=N, attribute_inputs=batch`` (plus ``attribute_samples``, ``_target``,
    ``_method``, ``_mode``): every N steps the attribution share of each residual branch on a few
    samples, stored as the series ``attribution_share`` (see ``resdoctor.attribute``).
    """
    return Watcher(model, optimizer, path, **options)


def _optional_integrations(
    attribution: dict[str, Any],
    wandb: Any,
    wandb_every: int,
    quiet: bool = False,
    tensorboard: Any = None,
    tensorboard_every: int = 10,
) -> list[Integration]:
    """The integrations asked for by ``watch()`` keywords, built before any hook is placed."""
    found: list[Integration] = []
    if tensorboard is not None and tensorboard is not False:
        from resdoctor.integrations.tensorboard import TensorBoardLogger

        found.append(TensorBoardLogger(tensorboard, every=tensorboard_every))
    if attribution.get("every"):
        from resdoctor.attribution.monitor import AttributionMonitor

        found.append(AttributionMonitor.from_options(attribution))
    if wandb:
        from resdoctor.integrations.wandb import WandbLogger

        found.append(WandbLogger(wandb, every=wandb_every))
    if not quiet:  # one log line at the first NaN/Inf, one verdict at close
        from resdoctor.integrations.announce import Announcer

        found.append(Announcer())
    return found


def _dist_rank() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
