"""AdditionTaps: measure a residual addition at the addition itself, for sites no module
boundary carries (an in-place ``x.add_(h)`` on a tensor that is no module's output, operands
made and consumed inside one ``forward``).

While the site's owner runs, a ``TorchFunctionMode`` counts the addition calls (``add``, ``+``,
``+=``) and, at the one the trace placed the site at (its ordinal within the owner's call),
reduces both operands before the call (an in-place add overwrites its first) and the sum after.
Entered by the owner's forward pre-hook, left by its always-called forward hook; a module with
such a site pays Python dispatch on each of its ops, a module without pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from resdoctor.recording.sensors.kernels import sum_squares
from resdoctor.recording.trace import ADD_NAMES

# site index, ||skip||^2, ||branch||^2, ||sum||^2 (0-d, device), the sum, elements
Measured = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], None]


class AdditionTaps(TorchFunctionMode):
    """Counts one owner call's additions; measures those at ``targets`` (ordinal -> (site,
    skip is the first operand)). ``own()`` is true while resdoctor's own hooks run."""

    def __init__(
        self,
        targets: dict[int, tuple[int, bool]],
        measured: Measured,
        own: Callable[[], bool],
        failed: Callable[[BaseException], None],
    ) -> None:
        super().__init__()
        self.targets, self.measured, self.own, self.failed = targets, measured, own, failed
        self.count = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") not in ADD_NAMES or self.own():
            return func(*args, **kwargs)
        self.count += 1
        target = self.targets.get(self.count)
        before = None
        if target is not None:
            try:
                before = _operand_sums(args, target[1])
            except Exception as e:  # noqa: BLE001 - never raised into the model
                self.failed(e)
        out = func(*args, **kwargs)  # the model's own errors propagate untouched
        if target is not None and before is not None and isinstance(out, torch.Tensor):
            try:
                with torch.no_grad():
                    self.measured(target[0], *before, sum_squares(out), out, out.numel())
            except Exception as e:  # noqa: BLE001
                self.failed(e)
        return out


def _operand_sums(args: Any, skip_first: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    if len(args) < 2:
        return None
    a, b = args[0], args[1]
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape):
        return None  # not the addition the trace saw (control flow changed): not measured
    with torch.no_grad():
        sa, sb = sum_squares(a), sum_squares(b)
    return (sa, sb) if skip_first else (sb, sa)
