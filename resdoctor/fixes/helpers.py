"""The small modules the fix snippets use, importable so a snippet stays a few lines:
``from resdoctor.fixes.helpers import BranchWrapper, Scale, replace_module``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["BranchWrapper", "Residual", "Scale", "norm_for", "replace_module"]


class BranchWrapper(nn.Module):
    """Applies ``post`` to a residual branch's output (element ``index`` of a tuple output)."""

    def __init__(self, inner: nn.Module, post: nn.Module, index: int | None = None) -> None:
        super().__init__()
        self.inner, self.post, self.index = inner, post, index

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        if self.index is None:
            return self.post(out)
        out = list(out)
        out[self.index] = self.post(out[self.index])
        return tuple(out)


class Scale(nn.Module):
    """Multiplies by alpha: learnable (SkipInit / ReZero) or fixed."""

    def __init__(self, alpha: float, learnable: bool = True) -> None:
        super().__init__()
        value = torch.tensor(float(alpha))
        if learnable:
            self.alpha = nn.Parameter(value)
        else:
            self.register_buffer("alpha", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * x


class Residual(nn.Module):
    """``x + inner(x)``: an identity path for the gradient."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.inner(x)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path ``name`` for ``new``."""
    parent, _, child = name.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    setattr(holder, child, new)


def norm_for(layer: nn.Module) -> nn.Module:
    """BatchNorm2d after a convolution, LayerNorm after a linear layer."""
    if isinstance(layer, nn.Conv2d):
        return nn.BatchNorm2d(layer.out_channels)
    if isinstance(layer, nn.Linear):
        return nn.LayerNorm(layer.out_features)
    raise TypeError(f"pick a normalisation for {type(layer).__name__} by hand")
