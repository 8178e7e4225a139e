"""OperandRouter: reach the two operands of every residual addition during a forward pass.

Attribution needs the operands of each residual addition ``a + b`` as tensors of their own. They
often are not a module output: an identity skip is the block input, which also feeds the branch,
so attributing to that input would mix both paths. During an attribution forward the router (a
``TorchFunctionMode``) finds each site's addition by its skip operand, captured at the site's
skip tap, and adds ``route(slot, a, b)`` instead: e.g. both operands passed through an
``OperandTap`` module that captum's layer methods attribute to, or both scaled by gates that
captum ablates. The model is not modified; with identity routes the values are the same.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from resdoctor.recording.discovery import Site
from resdoctor.recording.hooks import HookSet
from resdoctor.recording.pytree import call_inputs, get_path
from resdoctor.recording.trace import Tap

# (slot, skip, branch) -> what to add instead, or None to leave the addition alone
Route = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor] | None]
_ADD = frozenset({"add", "__add__", "__radd__"})
_INPLACE_ADD = frozenset({"add_", "__iadd__"})


class OperandTap(nn.Module):
    """A fresh copy of an operand: the activation captum saves stays the value that was added,
    whatever the model does in place afterwards (``out += x; relu_(out)``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class OperandRouter(TorchFunctionMode):
    """At the addition of ``sites[i]``, ``i`` in ``routed``, add ``route(slot, skip, branch)``
    instead of ``(skip, branch)`` (``slot``: position of ``i`` in ``routed``).

    Every site with a skip tap is tracked, routed or not, so that nested sites sharing a skip
    tensor are told apart by forward order. ``matched`` lists the sites routed in the last forward.
    A route may return None (e.g. operands without a batch dimension): the addition then runs
    unchanged.
    """

    def __init__(
        self, model: nn.Module, sites: list[Site], routed: list[int], route: Route
    ) -> None:
        super().__init__()
        self.model = model
        self.sites = sites
        self.routed = {i: k for k, i in enumerate(routed)}  # site -> its slot among the routed
        self.route = route
        self.matched: set[int] = set()
        self._waiting: list[tuple[int, torch.Tensor]] = []  # skips seen, addition not yet
        self._calls: dict[str, int] = {}
        self._hooks = HookSet()

    # -- skip taps ---------------------------------------------------------------------------
    def attach(self) -> None:
        by_module: dict[str, list[tuple[int, Tap]]] = {}
        for i, site in enumerate(self.sites):
            if site.skip is not None:
                by_module.setdefault(site.skip.module, []).append((i, site.skip))
        modules = dict(self.model.named_modules())
        for name, items in by_module.items():
            module = modules.get(name)
            if module is None:
                continue
            self._hooks.forward_pre(
                module, self._pre(name, [x for x in items if x[1].where == "input"])
            )
            outs = [x for x in items if x[1].where == "output"]
            if outs:
                self._hooks.forward(module, self._post(name, outs))

    def detach(self) -> None:
        """Remove the router's hooks (``matched`` still tells what the last forward routed)."""
        self._hooks.remove()
        self._waiting.clear()

    def reset(self) -> None:
        """Forget the previous forward (call before each one)."""
        self._waiting.clear()
        self._calls.clear()
        self.matched = set()

    def _pre(self, name: str, items: list[tuple[int, Tap]]) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            call = self._calls.get(name, -1) + 1
            self._calls[name] = call
            if items:
                self._capture(items, call_inputs(args, kwargs), call)

        return hook

    def _post(self, name: str, items: list[tuple[int, Tap]]) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            self._capture(items, output, self._calls.get(name, 0))

        return hook

    def _capture(self, items: list[tuple[int, Tap]], container: Any, call: int) -> None:
        for i, tap in items:
            if tap.call == call:
                t = get_path(container, tap.path)
                if t is not None:
                    self._waiting.append((i, t))
        self._waiting.sort(key=lambda x: x[0])  # sites are numbered in forward order

    # -- additions ---------------------------------------------------------------------------
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self._waiting and len(args) >= 2 and (name in _ADD or name in _INPLACE_ADD):
            hit = self._match(args)
            if hit is not None and hit[0] in self.routed:
                out = self._route(name, args, kwargs, *hit)
                if out is not None:
                    return out
        return func(*args, **kwargs)

    def _match(self, args: Any) -> tuple[int, int] | None:
        """(site, position of its skip operand) when ``args`` is a waiting site's addition."""
        a, b = args[0], args[1]
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return None
        if a.shape != b.shape or not (a.is_floating_point() and b.is_floating_point()):
            return None
        for k, (i, skip) in enumerate(self._waiting):
            for pos in (0, 1):
                if _same(args[pos], skip):
                    del self._waiting[k]
                    return i, pos
        return None

    def _route(self, name: str, args: Any, kwargs: dict[str, Any], i: int, pos: int) -> Any:
        routed = self.route(self.routed[i], args[pos], args[1 - pos])
        if routed is None:
            return None
        self.matched.add(i)
        operands = [args[0], args[1]]
        operands[pos], operands[1 - pos] = routed
        total = torch.add(operands[0], operands[1], **kwargs)
        if name in _INPLACE_ADD:  # the model keeps (and may reuse) the tensor it added into
            return args[0].copy_(total)
        return total  # floating-point addition commutes, so __radd__ needs no swap


def _same(t: torch.Tensor, ref: torch.Tensor) -> bool:
    """The same tensor, or a view of exactly the same memory (``x.view_as(x)``, ``x.detach()``)."""
    if t is ref:
        return True
    try:
        return (
            t.data_ptr() == ref.data_ptr()
            and t.shape == ref.shape
            and t.stride() == ref.stride()
            and t.dtype == ref.dtype
        )
    except (RuntimeError, NotImplementedError):  # tensors without storage (meta, functional)
        return False
