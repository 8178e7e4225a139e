"""The training loop every probe shares: seeded, CPU, optional AMP, clipping and warm-up.

It runs the probe either under ``resdoctor.watch`` (to be diagnosed) or under a ``Measurer``
(to be labelled), never both, so a label cannot depend on the tool.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from probes import faults
from probes.measure import Measurement, Measurer, SiteTap
from probes.recipe import Recipe


@dataclass
class Setup:
    """What a probe's builder returns: the model, its data, its loss and where to measure."""

    model: nn.Module
    batch: Callable[[int], tuple[tuple[Any, ...], Any]]  # step -> (inputs, target)
    loss_fn: Callable[[Any, Any], torch.Tensor]
    taps: list[SiteTap] = field(default_factory=list)
    l1: float = 0.0  # weight of the gates' L1 penalty (faults.Gate)


@dataclass
class Result:
    """The losses of one run (``nan``/``inf`` kept) and, when measured, the measurement."""

    losses: list[float]
    measurement: Measurement | None = None
    path: str | None = None

    @property
    def final_loss(self) -> float:
        """Mean of the last 5 losses, ``inf`` if any of them is not finite."""
        tail = self.losses[-5:]
        return sum(tail) / len(tail) if tail and all(math.isfinite(x) for x in tail) else math.inf


def _optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay)
    cls = torch.optim.AdamW if r.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=r.lr, weight_decay=r.weight_decay)


def _autocast(r: Recipe) -> Any:
    if r.amp == "none":
        return contextlib.nullcontext()
    dtype = torch.float16 if r.amp == "fp16" else torch.bfloat16
    return torch.autocast("cpu", dtype=dtype)


class _Loop:
    """One run's state: optimizer, scheduler, scaler."""

    def __init__(self, setup: Setup, r: Recipe) -> None:
        self.setup, self.r = setup, r
        self.opt = _optimizer(setup.model, r)
        warm = max(r.warmup, 0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.scaler = (
            torch.amp.GradScaler("cpu", init_scale=r.init_scale) if r.amp == "fp16" else None
        )

    def forward_backward(self, step: int) -> torch.Tensor:
        inputs, target = self.setup.batch(step)
        self.opt.zero_grad(set_to_none=True)
        with _autocast(self.r):
            out = self.setup.model(*inputs)
            loss = self.setup.loss_fn(out, target)
        loss = loss.float() + faults.penalty(self.setup.model, self.setup.l1)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        return loss.detach()

    def step(self) -> bool:
        """Clip, step, update; True when an AMP GradScaler skipped the step."""
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if self.r.clip is not None:
            nn.utils.clip_grad_norm_(self.setup.model.parameters(), self.r.clip)
        skipped = False
        if self.scaler is not None:
            before = self.scaler.get_scale()
            self.scaler.step(self.opt)
            self.scaler.update()
            skipped = self.scaler.get_scale() < before
        else:
            self.opt.step()
        with warnings.catch_warnings():  # a GradScaler-skipped step "skips" optimizer.step()
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            self.sched.step()
        return skipped


def run(
    setup: Setup,
    r: Recipe,
    *,
    watch_path: str | None = None,
    measure: bool = False,
    patience: int = 3,
) -> Result:
    """Train ``setup`` with recipe ``r``; stop ``patience`` steps after the loss turns non-finite.

    ``watch_path``: record under ``resdoctor.watch`` into that file. ``measure``: record a
    ``Measurement`` with plain hooks instead.
    """
    torch.set_num_threads(1)
    loop = _Loop(setup, r)
    meas = Measurer(setup.model, setup.taps) if measure else None
    watcher = None
    if watch_path is not None:
        import resdoctor

        watcher = resdoctor.watch(setup.model, loop.opt, path=watch_path, scaler=loop.scaler)
    losses: list[float] = []
    try:
        for step in range(r.steps):
            faults.set_step(setup.model, step)
            if meas:
                meas.begin_step(step)
            loss = loop.forward_backward(step)
            if meas:
                meas.check_loss(float(loss))
                meas.after_backward(loop.scaler.get_scale() if loop.scaler else 1.0)
            skipped = loop.step()
            if meas:
                meas.after_step(skipped)
                meas.end_step(float(loss))
            if watcher:
                watcher.log(loss=loss)
            losses.append(float(loss))
            bad = [x for x in losses if not math.isfinite(x)]
            if len(bad) > patience:
                break
    finally:
        if watcher:
            watcher.close()
    return Result(losses, meas.close() if meas else None, watch_path)
