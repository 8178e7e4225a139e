"""HookSet: the one owner of torch hook handles. Everything registered through it is removed by
``remove()``, which never raises and is safe to call twice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """Registers module, tensor-free and optimizer hooks and removes exactly those."""

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []

    def __len__(self) -> int:
        return len(self._handles)

    def forward_pre(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def forward(self, module: nn.Module, fn: Callable[..., Any], always: bool = False) -> None:
        self._handles.append(
            module.register_forward_hook(fn, with_kwargs=True, always_call=always)
        )

    def step_pre(self, optimizer: torch.optim.Optimizer, fn: Callable[..., Any]) -> None:
        self._handles.append(optimizer.register_step_pre_hook(fn))

    def step_post(self, optimizer: torch.optim.Optimizer, fn: Callable[..., Any]) -> None:
        self._handles.append(optimizer.register_step_post_hook(fn))

    def remove(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            try:
                handle.remove()
            except Exception:  # noqa: BLE001 - removal must never fail the caller
                pass
