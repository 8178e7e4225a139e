"""GradNorm: the L2 norm of each module's own parameter gradients, in one fused pass.

The device part (``raw``) is two fused calls over the parameters and leaves one value per
parameter; the host part (``fold``) combines them into modules after the step's single
transfer, so no per-module arithmetic (and no float64) runs on the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class GradNorm:
    """Per-module gradient norms ``sqrt(sum_p ||grad_p||^2)`` over the module's own parameters.

    ``torch._foreach_norm`` computes every parameter's norm in one fused call; the host folds
    them into modules. Parameters without a gradient contribute 0.
    """

    def __init__(self, groups: list[list[nn.Parameter]]) -> None:
        self.params = [p for group in groups for p in group]
        self.owner = np.array([i for i, group in enumerate(groups) for _ in group], np.int64)
        self.modules = len(groups)

    def local_params(self) -> list[torch.Tensor]:
        """The parameters as plain tensors (this rank's shard of a DTensor)."""
        return [_local(p) for p in self.params]

    def raw(self, tensors: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per parameter on the device: ``([P] L2 norms in float32, [P] max)``; absent or empty
        tensors read 0. None when no tensor is present.

        The L2 norm alone cannot tell overflow from Inf (a finite tensor with norm > 1.8e19
        squares past float32), so ``fold`` calls a parameter non-finite when its norm is NaN or
        its max is not finite: exact except for a tensor whose only non-finite values are -inf.
        """
        tensors = [None if t is None else _local(t) for t in tensors]
        present = [t for t in tensors if t is not None and t.numel()]
        if not present:
            return None
        l2 = _stack(tensors, torch._foreach_norm(present))
        top = _stack(tensors, torch._foreach_max(present))
        return l2, top

    def norms(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """``[P]`` float32 L2 norms of per-parameter tensors (all present), on the device."""
        return torch.stack(torch._foreach_norm(tensors))

    def fold(self, l2: np.ndarray) -> np.ndarray:
        """Host: per-parameter norms -> ``[M]`` per-module norms. Squares and sums in float64,
        so per-parameter norms up to float32's range combine without overflow."""
        return np.sqrt(np.bincount(self.owner, l2.astype(np.float64) ** 2, self.modules))

    def bad(self, l2: np.ndarray, top: np.ndarray) -> np.ndarray:
        """Host: ``[M]`` count of parameters holding NaN/Inf, per module."""
        with np.errstate(invalid="ignore"):
            flags = np.isnan(l2) | ~np.isfinite(top)
        return np.bincount(self.owner, flags.astype(np.float64), self.modules)

    def __call__(self, scale: torch.Tensor | None = None) -> tuple[torch.Tensor,
                                                                    torch.Tensor] | None:
        """Raw gradient norms; ``scale`` (an AMP loss scale, on device) is divided out first, so
        loss-scaled gradients cannot overflow float32 inside the norm."""
        grads = [None if p.grad is None else _local(p.grad) for p in self.params]  # no_grad
        if scale is not None:
            present = [g for g in grads if g is not None]
            if present:
                unscaled = iter(torch._foreach_mul(present, scale.reciprocal()))
                grads = [next(unscaled) if g is not None else None for g in grads]
        return self.raw(grads)


def _stack(tensors: list[torch.Tensor | None], values: Any) -> torch.Tensor:
    """One value per parameter: the computed ones in order, 0 for absent/empty tensors."""
    values = list(values)
    if len(values) == len(tensors):
        return torch.stack(values)
    it = iter(values)
    zero = values[0].new_zeros(())
    return torch.stack([next(it) if t is not None and t.numel() else zero for t in tensors])


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2, tensor parallel): measured without a collective;
    ``resdoctor.distributed`` combines the shards' norms when it merges the ranks' runs."""
    if type(t) is torch.Tensor or type(t) is nn.Parameter:  # the usual case, without hasattr
        return t
    return t.to_local() if hasattr(t, "to_local") else t
