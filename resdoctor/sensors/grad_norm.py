"""GradNorm: the L2 norm of each module's own parameter gradients, in one fused pass."""

from __future__ import annotations

import torch
from torch import nn


class GradNorm:
    """Per-module gradient norms ``sqrt(sum_p ||grad_p||^2)`` over the module's own parameters.

    ``torch._foreach_norm`` computes every parameter's norm in one fused call; an ``index_add``
    folds them into modules. Parameters without a gradient contribute 0.
    """

    def __init__(self, groups: list[list[nn.Parameter]]) -> None:
        self.params = [p for group in groups for p in group]
        owner = [i for i, group in enumerate(groups) for _ in group]
        self._owner = torch.tensor(owner, dtype=torch.long)
        self._modules = len(groups)
        self._device: torch.device | None = None

    def norms(self, tensors: list[torch.Tensor | None]) -> torch.Tensor:
        """``[M]`` float64 norms of per-parameter tensors (None = absent), grouped by module.

        Absent tensors count as 0 through a masked multiply, so no index list is built on the
        host and copied to the device (which would synchronise on CUDA).
        """
        tensors = [_local(t) for t in tensors]
        present = [t for t in tensors if t is not None]
        if not present:
            return torch.zeros(self._modules, dtype=torch.float64)
        device = present[0].device
        if self._device != device:
            self._owner = self._owner.to(device)
            self._device = device
        if len(present) == len(tensors):
            stacked = torch.stack(torch._foreach_norm(present))
        else:
            norms = iter(torch._foreach_norm(present))
            zero = present[0].new_zeros(())
            stacked = torch.stack([next(norms) if t is not None else zero for t in tensors])
        # fp32 norms (a float64 _foreach_norm is ~100x slower on CPU); squares and sums in
        # float64 so per-parameter norms up to float32's range combine without overflow
        per_param = stacked.double() ** 2  # [P]
        out = torch.zeros(self._modules, device=device, dtype=torch.float64)
        return out.index_add_(0, self._owner, per_param).sqrt_()

    def __call__(self, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Gradient norms; ``scale`` (an AMP loss scale, on device) is divided out first, so
        loss-scaled gradients cannot overflow float32 inside the norm."""
        grads = [_local(p.grad.detach()) if p.grad is not None else None for p in self.params]
        if scale is not None:
            present = [g for g in grads if g is not None]
            if present:
                unscaled = iter(torch._foreach_mul(present, scale.reciprocal()))
                grads = [next(unscaled) if g is not None else None for g in grads]
        return self.norms(grads)


def _local(t: torch.Tensor | None) -> torch.Tensor | None:
    """This rank's shard of a DTensor (FSDP2, tensor parallel): measured without a collective;
    ``resdoctor.distributed`` combines the shards' norms when it merges the ranks' runs."""
    return t.to_local() if t is not None and hasattr(t, "to_local") else t
