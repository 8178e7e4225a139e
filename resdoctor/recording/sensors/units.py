"""Units: dead ReLU units and saturated sigmoid / tanh inputs, on sampled steps.

A unit (a feature, or a channel of a feature map) is *dead* on a step when its ReLU output is
0 for every sample and position of the batch (AUTOTRAINER, DeepDiagnosis: a layer is dying when
70% of its units are). An input is *saturated* when |x| > 5 at a sigmoid or tanh (DeepDiagnosis):
the derivative there is below 0.007 (sigmoid) / 1.8e-4 (tanh). One fused reduction each, pooled
as a 0-d tensor: no sync.
"""

from __future__ import annotations

import torch
from torch import nn

from resdoctor.recording.segment import Segment
from resdoctor.recording.sensors.needs import Needs, every

RELUS = (nn.ReLU, nn.ReLU6)
SQUASH = (nn.Sigmoid, nn.Tanh, nn.Hardtanh)
SATURATED = 5.0


def kind(module: nn.Module) -> str | None:
    """``"dead"`` for a ReLU module, ``"sat"`` for a squashing one, else None."""
    if isinstance(module, RELUS):
        return "dead"
    if isinstance(module, SQUASH):
        return "sat"
    return None


class Units:
    """Pools one row per call of an activation module on due steps."""

    def __init__(self, every_n: int = 10) -> None:
        self.needs = Needs(frozenset({"module_io"}), every(every_n))

    def dead(self, seg: Segment, column: int, output: torch.Tensor) -> None:
        """Share of the units whose output is 0 on the whole batch."""
        if not output.is_floating_point() or output.dim() < 2 or not output.numel():
            return
        x = output.detach()
        unit = 1 if x.dim() == 4 else x.dim() - 1  # channels of a feature map, else features
        alive = (x > 0).movedim(unit, 0).reshape(x.shape[unit], -1).any(dim=1)
        seg.add_row("dead", column, (seg.put(1.0 - alive.float().mean()),))

    def saturated(self, seg: Segment, column: int, x: torch.Tensor) -> None:
        """Share of the inputs with |x| > 5."""
        if not x.is_floating_point() or not x.numel():
            return
        share = (x.detach().abs() > SATURATED).float().mean()
        seg.add_row("sat", column, (seg.put(share),))
