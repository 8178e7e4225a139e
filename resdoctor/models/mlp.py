"""A residual MLP: x + W2 act(W1 norm(x)) per block."""

from __future__ import annotations

import torch
from torch import nn


class MLPBlock(nn.Module):
    """``x + scale * W2 act(W1 LN(x))``, or the branch alone when ``residual`` is False."""

    def __init__(
        self,
        dim: int,
        norm: bool = True,
        residual: bool = True,
        activation: type[nn.Module] = nn.ReLU,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.scale = scale
        self.branch = nn.Sequential(
            nn.LayerNorm(dim) if norm else nn.Identity(),
            nn.Linear(dim, dim),
            activation(),
            nn.Linear(dim, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.branch(x)
        if self.scale != 1.0:
            h = self.scale * h
        return x + h if self.residual else h


class ResidualMLP(nn.Module):
    """Input projection, ``depth`` residual blocks, output head.

    Args:
        norm: put a LayerNorm at the start of each branch (pre-norm).
        residual: set False for a plain (non-residual) deep MLP.
        scale: residual branch scale (e.g. ``1/sqrt(depth)``).
    """

    def __init__(
        self,
        d_in: int = 16,
        dim: int = 64,
        depth: int = 8,
        d_out: int = 1,
        norm: bool = True,
        residual: bool = True,
        activation: type[nn.Module] = nn.ReLU,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(
            MLPBlock(dim, norm, residual, activation, scale) for _ in range(depth)
        )
        self.head = nn.Linear(dim, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)
