"""HookSet: the one owner of torch hook handles. Everything registered through it is removed by
``remove()``, which never raises and is safe to call twice.

The recorder holds the root set; the tracer and the attribution router get a ``group()`` of it,
so they can remove their own hooks early while the recorder's ``remove()`` still removes all.
Hooks on a step's tensors and autograd nodes die with that step's graph: they are kept as
*transient* handles, dropped (not removed) when the step ends, removed if still held at close.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class Hook:
    """A module hook that runs on the training thread only and stays with the watched model
    only. Another thread's forward (a concurrent evaluation thread) passes through untouched;
    pickling, ``torch.save(model)`` and ``copy.deepcopy`` (``AveragedModel``, EMA copies) turn
    it into ``INERT``, so a copy neither fails to serialise nor records into the run."""

    __slots__ = ("fn", "thread")

    def __init__(self, fn: Callable[..., Any], thread: int) -> None:
        self.fn, self.thread = fn, thread

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # traced by dynamo (compiled after watch): compiled away first, so no graph break
        if torch.compiler.is_compiling() or threading.get_ident() != self.thread:
            return None
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_inert, ())

    def __deepcopy__(self, memo: dict[int, Any]) -> Inert:
        return INERT


class Inert:
    """What a copy of a watched model holds where resdoctor's hooks were: does nothing, and
    the first time a module of the copy runs, removes every inert entry from it and all its
    submodules (a container such as a ``ModuleList`` never runs itself)."""

    def __call__(self, module: nn.Module, *args: Any, **kwargs: Any) -> None:
        for m in module.modules():
            for table in _TABLES:
                hooks = getattr(m, table, None)
                if not isinstance(hooks, dict):
                    continue
                for key in [k for k, v in hooks.items() if isinstance(v, Inert)]:
                    del hooks[key]
                    for extra in _KEYED:
                        getattr(m, extra, {}).pop(key, None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_inert, ())


INERT = Inert()
_TABLES = ("_forward_pre_hooks", "_forward_hooks")
_KEYED = (
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def _inert() -> Inert:
    return INERT


def has_resdoctor_hooks(module: nn.Module) -> bool:
    """Whether any module in ``module`` holds a resdoctor hook (live or inert)."""
    return any(
        isinstance(v, (Hook, Inert))
        for m in module.modules()
        for table in _TABLES
        for v in getattr(m, table, {}).values()
    )


class HookSet:
    """Registers module, optimizer, tensor and autograd-node hooks and removes exactly those."""

    def __init__(self, thread: int | None = None) -> None:
        # module hooks act on this thread only: the one that called watch()
        self.thread = threading.get_ident() if thread is None else thread
        self._handles: list[Any] = []
        self._transient: list[Any] = []
        self._groups: list[HookSet] = []

    def __len__(self) -> int:
        return len(self._handles) + sum(len(g) for g in self._groups)

    def group(self) -> HookSet:
        """A child set: its ``remove()`` removes its own hooks; this set's removes them too."""
        child = HookSet(self.thread)
        self._groups.append(child)
        return child

    def forward_pre(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        self._handles.append(
            module.register_forward_pre_hook(Hook(fn, self.thread), with_kwargs=True)
        )

    def forward(self, module: nn.Module, fn: Callable[..., Any], always: bool = False) -> None:
        self._handles.append(
            module.register_forward_hook(
                Hook(fn, self.thread), with_kwargs=True, always_call=always
            )
        )

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
