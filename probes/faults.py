"""Fault modules that turn finite values into NaN at a step the probe controls.

``Gate`` multiplies its input by ``sqrt(g)`` for a learned scalar ``g`` that an L1 sparsity
penalty drives through zero (as in network slimming): once ``g < 0`` the forward output is NaN.
``WhereGate`` is the classic ``torch.where(g > 0, sqrt(g), 0)`` trap: its forward stays finite
but its backward is NaN as soon as ``g < 0``. ``NaNGrad`` is an identity whose backward returns
NaN at one chosen step. ``guard_eps`` (the guard-op fix) clamps the operand or cleans the
gradient, so none of them can produce a non-finite value.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

FAULT_KEYS = frozenset({"gate", "where_gate", "nan_grad"})  # recipe.arch keys that add a fault


class Gate(nn.Module):
    """``x * sqrt(g)``: NaN in the forward pass once ``g`` crosses zero (unless guarded)."""

    def __init__(self, init: float, guard_eps: float | None = None) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.tensor(float(init)))
        self.guard_eps = guard_eps

    def factor(self) -> torch.Tensor:
        g = self.g if self.guard_eps is None else self.g.clamp_min(self.guard_eps)
        return torch.sqrt(g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor()

    def penalty(self) -> torch.Tensor:
        """L1 sparsity on the gate (drives it through zero at a steady rate under Adam)."""
        return self.g.abs()


class WhereGate(Gate):
    """``x * where(g > 0, sqrt(g), 0)``: finite forward, NaN gradient for ``g`` once ``g < 0``."""

    def factor(self) -> torch.Tensor:
        g = self.g if self.guard_eps is None else self.g.clamp_min(self.guard_eps)
        return torch.where(g > 0, torch.sqrt(g), torch.zeros_like(g))


class _NaNGradFn(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        poison: bool,  # type: ignore[override]
        guard: bool,
    ) -> torch.Tensor:
        ctx.poison, ctx.guard = poison, guard
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        if ctx.poison:
            grad = grad * float("nan")
        if ctx.guard:  # the guard-op fix: a non-finite gradient becomes 0 (skip this update)
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        return grad, None, None


class NaNGrad(nn.Module):
    """Identity in the forward pass; its backward returns NaN at step ``at`` (``step`` is set by
    the probe's training loop through ``set_step``)."""

    def __init__(self, at: int, guard_eps: float | None = None) -> None:
        super().__init__()
        self.at = at
        self.step = -1
        self.guard_eps = guard_eps

    def set_step(self, step: int) -> None:
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _NaNGradFn.apply(x, self.step == self.at, self.guard_eps is not None)


class Wrapped(nn.Module):
    """``fault(inner(x, ...))``: appends a fault to an existing sub-module (e.g. an HF MLP)."""

    def __init__(self, inner: nn.Module, fault: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.fault = fault

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fault(self.inner(*args, **kwargs))


def penalty(model: nn.Module, weight: float) -> torch.Tensor | float:
    """``weight`` x the L1 penalty of every ``Gate`` in ``model`` (0 if there is none)."""
    terms = [m.penalty() for m in model.modules() if isinstance(m, Gate)]
    return weight * torch.stack(terms).sum() if terms and weight else 0.0


def set_step(model: nn.Module, step: int) -> None:
    """Tell every step-triggered fault which step is running."""
    for m in model.modules():
        if isinstance(m, NaNGrad):
            m.set_step(step)
