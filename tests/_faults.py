"""Fault injection modules for non-finite onset tests: they fire at one exact call."""

from __future__ import annotations

import torch
from torch import nn


class ForwardNaN(nn.Module):
    """Identity, except that call number ``at`` returns NaN."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x * float("nan") if self.calls - 1 == self.at else x * 1.0


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: ANN001
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        return g * float("nan")


class BackwardNaN(nn.Module):
    """Identity whose backward returns NaN at call number ``at``."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return _NaNGrad.apply(x) if self.calls - 1 == self.at else x * 1.0


class LogBlock(nn.Module):
    """A block that applies a functional log between two children: NaN is made by the block."""

    def __init__(self, dim: int, at: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = self.a(x)
        shift = 1e6 if self.calls - 1 == self.at else 0.0
        h = torch.log(h.abs() + 1.0 - shift)  # negative argument at the faulty call
        return x + self.b(h)
