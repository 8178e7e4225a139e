"""HookSet: the one owner of torch hook handles. Everything registered through it is removed by
``remove()``, which never raises and is safe to call twice.

The recorder holds the root set; the tracer and the attribution router get a ``group()`` of it,
so they can remove their own hooks early while the recorder's ``remove()`` still removes all.
Hooks on a step's tensors and autograd nodes die with that step's graph: they are kept as
*transient* handles, dropped (not removed) when the step ends, removed if still held at close.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class HookSet:
    """Registers module, optimizer, tensor and autograd-node hooks and removes exactly those."""

    def __init__(self) -> None:
        self._handles: list[Any] = []
        self._transient: list[Any] = []
        self._groups: list[HookSet] = []

    def __len__(self) -> int:
        return len(self._handles) + sum(len(g) for g in self._groups)

    def group(self) -> HookSet:
        """A child set: its ``remove()`` removes its own hooks; this set's removes them too."""
        child = HookSet()
        self._groups.append(child)
        return child

    def forward_pre(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self._handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))

    def forward(self, module: nn.Module, fn: Callable[..., Any], always: bool = False) -> None:
        self._handles.append(module.register_forward_hook(fn, with_kwargs=True, always_call=always))

    def step_pre(self, optimizer: torch.optim.Optimizer, fn: Callable[..., Any]) -> None:
        self._handles.append(optimizer.register_step_pre_hook(fn))

    def step_post(self, optimizer: torch.optim.Optimizer, fn: Callable[..., Any]) -> None:
        self._handles.append(optimizer.register_step_post_hook(fn))

    def tensor(self, t: torch.Tensor, fn: Callable[[torch.Tensor], Any]) -> None:
        """A gradient hook on one step's tensor (transient)."""
        self._transient.append(t.register_hook(fn))

    def node(self, node: Any, fn: Callable[..., Any]) -> None:
        """A hook on one step's autograd node (transient)."""
        self._transient.append(node.register_hook(fn))

    def forget_transient(self) -> None:
        """The step is over: its graph's hooks go with the graph."""
        self._transient.clear()

    def remove(self) -> None:
        handles, self._handles = self._handles + self._transient, []
        self._transient = []
        groups, self._groups = self._groups, []
        for group in groups:
            group.remove()
        for handle in handles:
            try:
                handle.remove()
            except Exception:  # noqa: BLE001 - removal must never fail the caller
                pass
