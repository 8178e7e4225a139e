"""AttributionMonitor: the periodic attribution of ``watch(..., attribute_every=N)``.

Every N steps, after ``log()``, it attributes a few fixed samples and adds a row of the per-site
series ``attribution_share`` to the run file. The pass is invisible to training: the model is
restored bit for bit (``attribution.preserved``) and the recorder does not see it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from torch import nn

from resdoctor.attribution import methods
from resdoctor.attribution.inputs import Batch, Target, describe
from resdoctor.attribution.shares import METHODS, Method, Mode, attribute
from resdoctor.recording.discovery import Site
from resdoctor.recording.integration import Context
from resdoctor.recording.trace import Tap

SERIES = "attribution_share"
MAX_FAILURES = 3  # consecutive failed passes before the monitor stops trying


class AttributionMonitor:
    """A ``Watcher`` integration (``on_step`` / ``on_close``).

    Args:
        inputs: the sample batch (tensor, tuple or dict); its first ``samples`` samples are used
            every time, so the rows are comparable across steps.
        every: attribute after every ``every``-th step (steps 0, N, 2N, ...).
        samples: how many samples of ``inputs`` to attribute.
        target, method, mode: as in ``resdoctor.attribute``.
    """

    def __init__(
        self,
        inputs: Any,
        every: int,
        samples: int = 4,
        target: Target = None,
        method: Method = "gradient",
        mode: Mode = "eval",
    ) -> None:
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"attribute_every must be a positive int, not {every!r}")
        if inputs is None:
            raise ValueError("attribute_every needs attribute_inputs= (a sample batch)")
        if method not in METHODS or mode not in ("eval", "train"):
            raise ValueError(
                f"attribute_method must be one of {', '.join(METHODS)} and "
                f"attribute_mode 'eval' or 'train'"
            )
        methods.captum_attr()  # fail at watch(), with the install hint, not in the loop
        self.batch = Batch.of(inputs).take(samples)
        self.every, self.target, self.method, self.mode = every, target, method, mode
        self._placed: Batch | None = None
        self._last = -1
        self._failures = 0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> AttributionMonitor:
        """From ``watch()``'s ``attribute_*`` options, prefix removed."""
        known = {"every", "inputs", "samples", "target", "method", "mode"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(
                "unknown watch() option(s): " + ", ".join(f"attribute_{k}" for k in unknown)
            )
        kwargs = dict(options)
        return cls(kwargs.pop("inputs", None), **kwargs)

    def options(self) -> dict[str, Any]:
        """The parameters of every row, for the run file (plain containers)."""
        return {
            "every": self.every,
            "samples": self.batch.size,
            "method": self.method,
            "mode": self.mode,
            "target": describe(self.target),
            "series": SERIES,
        }

    def on_step(self, ctx: Context) -> None:
        step = ctx.step - 1  # log() has just ended this step
        if step < 0 or step == self._last or step % self.every or self._failures >= MAX_FAILURES:
            return
        self._last = step
        sites = ctx.sites
        if not sites:
            return
        ctx.set_meta("attribution", self.options(), replace=False)
        names = [s.name for s in sites]
        try:
            model, sites = _unwrapped(ctx.model, sites)
            with ctx.paused():  # the hooks stay, but ignore the attribution pass
                result = attribute(
                    model,
                    self._inputs(model),
                    self.target,
                    sites,
                    method=self.method,
                    mode=self.mode,
                )
        except Exception as e:  # noqa: BLE001 - never raise into the training loop
            self._failures += 1
            ctx.record_error("attribution", e)
            return
        self._failures = 0
        shares = np.array([s.share for s in result.sites], dtype=np.float64)
        ctx.add_series(SERIES, names, step, shares)

    def on_close(self, ctx: Context) -> None:
        self._placed = None

    def _inputs(self, model: Any) -> Batch:
        """The sample batch on the model's device (moved once)."""
        if self._placed is None:
            device = next((p.device for p in model.parameters()), None)
            self._placed = self.batch.to(device) if device is not None else self.batch
        return self._placed


def _unwrapped(model: nn.Module, sites: list[Site]) -> tuple[nn.Module, list[Site]]:
    """The module inside a DistributedDataParallel / DataParallel wrapper, with its sites'
    taps renamed: the wrapper's forward would wait for a gradient all-reduce that the
    attribution pass never triggers."""
    if not isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model, sites

    def strip(tap: Tap | None) -> Tap | None:
        if tap is None:
            return None
        name = tap.module[len("module.") :] if tap.module.startswith("module.") else ""
        return dataclasses.replace(tap, module=name)

    return model.module, [
        dataclasses.replace(
            s,
            skip=strip(s.skip),
            branch=strip(s.branch),
            result=strip(s.result),
            source=strip(s.source),
        )
        for s in sites
    ]
