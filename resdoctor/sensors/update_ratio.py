"""UpdateRatio: ||w_after - w_before|| / ||w_before|| per module for one optimizer step."""

from __future__ import annotations

import torch

from resdoctor.sensors.grad_norm import GradNorm


class UpdateRatio:
    """Snapshot the parameters before ``optimizer.step()``; compare after it.

    The snapshot is one fused copy of the parameters, taken only on sampled steps.
    """

    def __init__(self, grouping: GradNorm) -> None:
        self.grouping = grouping
        self._before: list[torch.Tensor] | None = None
        self._old_norm = torch.zeros(0)

    def before(self) -> None:
        with torch.no_grad():
            params = self.grouping.local_params()
            self._before = list(torch._foreach_mul(params, 1.0))
            self._old_norm = self.grouping.norms(params)

    def after(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(param_norm [M], non-finite parameter count [M], update_ratio [M] or None when
        no snapshot was taken)``."""
        params = self.grouping.local_params()
        with torch.no_grad():
            norm, bad = self.grouping.measure(list(params))
            if self._before is None:
                return norm, bad, None
            before, self._before = self._before, None
            torch._foreach_sub_(before, params)
            delta = self.grouping.norms(before)
            return norm, bad, delta / self._old_norm.clamp_min(1e-12)
