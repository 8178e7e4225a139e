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

from resdoctor.recording.sensors.needs import Needs


class GradNorm:
    """Per-module gradient norms ``sqrt(sum_p ||grad_p||^2)`` over the module's own parameters.

    ``torch._foreach_norm`` computes every parameter's norm in one fused call; the host folds
    them into modules. Parameters without a gradient contribute 0.
    """

    needs = Needs(frozenset({"gradients"}))

    def __init__(self, groups: list[list[nn.Parameter]]) -> None:
        # a tied parameter (GPT-2's embedding and output head) is listed by both modules but
        # measured once: `params` are unique, (owner[j], index[j]) says module owner[j] has
        # parameter index[j]
        first: dict[int, int] = {}
        self.params: list[nn.Parameter] = []
        owner, index = [], []
        for m, group in enumerate(groups):
            for p in group:
                if id(p) not in first:
                    first[id(p)] = len(self.params)
                    self.params.append(p)
                owner.append(m)
                index.append(first[id(p)])
        self.owner = np.array(owner, np.int64)
        self.index = np.array(index, np.int64)
        # a parameter listed by several modules (tied weights) cannot tell which one made it bad
        self.shared = np.bincount(self.index, minlength=len(self.params))[self.index] > 1
        self.modules = len(groups)

    def local_params(self) -> list[torch.Tensor]:
        """The parameters as plain tensors (this rank's shard of a DTensor)."""
        return [_local(p) for p in self.params]

    def raw(self, tensors: list[torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per parameter on the device: ``([P] L2 norms in float32, [P] finiteness)``; absent
        or empty tensors read 0. None when no tensor is present.

        The L2 norm cannot tell overflow from Inf (a finite tensor with norm > 1.8e19 squares
        past float32), so ``bad`` reads a value that is finite exactly when the tensor is
        (``_finiteness``): NaN, +inf and -inf all show. (A plain max missed a gradient whose
        only non-finite values were -inf: an AMP overflow step was read as finite.)
        """
        tensors = [None if t is None else _local(t) for t in tensors]
        present = [t for t in tensors if t is not None and t.numel()]
        if not present:
            return None
        norms = torch._foreach_norm(present)
        return _stack(tensors, norms), _stack(tensors, _finiteness(present, norms))

    def maxima(self, tensors: list[torch.Tensor]) -> torch.Tensor | None:
        """``[P]`` per tensor on the device, finite exactly when the tensor is: enough for
        ``bad``."""
        present = [t for t in tensors if t.numel()]
        if not present:
            return None
        return _stack(list(tensors), _finiteness(present))

    def norms(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """``[P]`` float32 L2 norms of per-parameter tensors (all present), on the device."""
        return torch.stack(torch._foreach_norm(tensors))

    def fold(self, l2: np.ndarray) -> np.ndarray:
        """Host: per-parameter norms ``[..., P]`` -> per-module norms ``[..., M]``. Squares and
        sums in float64, so per-parameter norms up to float32's range combine without
        overflow."""
        return np.sqrt(self._per_module(l2.astype(np.float64)[..., self.index] ** 2))

    def bad(self, top: np.ndarray) -> np.ndarray:
        """Host: ``[..., M]`` count of parameters holding NaN/Inf, per module, from their
        maxima."""
        return self._per_module((~np.isfinite(top)).astype(np.float64)[..., self.index])

    def bad_own(self, top: np.ndarray) -> np.ndarray:
        """Host: ``[..., M]`` count of the module's own (untied) parameters holding NaN/Inf."""
        flags = ~np.isfinite(top[..., self.index]) & ~self.shared
        return self._per_module(flags.astype(np.float64))

    def _per_module(self, values: np.ndarray) -> np.ndarray:
        """Sums over each module's entries (in entry order), over the last axis."""
        if values.ndim == 1:
            return np.bincount(self.owner, values, self.modules)
        rows = values.reshape(-1, values.shape[-1])
        out = np.zeros((len(rows), self.modules))
        np.add.at(out.T, self.owner, rows.T)  # out[:, owner] += rows, in entry order
        return out.reshape(*values.shape[:-1], self.modules)

    def __call__(
        self, scale: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Raw gradient norms; ``scale`` (an AMP loss scale, on device) is divided out first, so
        loss-scaled gradients cannot overflow float32 inside the norm."""
        grads = [None if p.grad is None else _dense(_local(p.grad)) for p in self.params]
        if scale is not None:
            present = [g for g in grads if g is not None]
            if present:
                unscaled = iter(torch._foreach_mul(present, scale.reciprocal()))
                grads = [next(unscaled) if g is not None else None for g in grads]
        return self.raw(grads)


def _finiteness(tensors: list[torch.Tensor], norms: Any = None) -> Any:
    """Per (non-empty) tensor, a value that is finite exactly when every value of the tensor
    is: what ``bad`` reads. NaN, +inf and -inf all show.

    CUDA: the fused inf-norm, max |value| (one launch; no decision on the host). CPU, where
    reading a value waits for nothing: the L2 norm (one fused call, or the ``norms`` already
    taken) where it is finite, since then every value is; max |value| (``max(-min, max)``)
    only for the others: a NaN/Inf, or a finite tensor whose norm overflows. One fused call
    instead of an ``aminmax`` per tensor. (The CPU inf-norm is a scalar loop, ~4x slower.)
    """
    if any(t.device.type != "cpu" or t.is_complex() for t in tensors):
        return torch._foreach_norm(tensors, ord=float("inf"))
    values = torch.stack(norms if norms is not None else torch._foreach_norm(tensors)).float()
    bad = ~torch.isfinite(values)
    if bad.any():
        values = values.clone()
        for k in torch.nonzero(bad).flatten().tolist():
            lo, hi = torch.aminmax(tensors[k])
            values[k] = torch.maximum(lo.float().neg(), hi.float())
    return values


def _stack(tensors: list[torch.Tensor | None], values: Any) -> torch.Tensor:
    """One value per parameter: the computed ones in order, 0 for absent/empty tensors."""
    if isinstance(values, torch.Tensor):  # already one value per present tensor
        if len(values) == len(tensors):
            return values
        values = values.unbind()
    values = list(values)
    if len(values) == len(tensors):
        return torch.stack(values)
    it = iter(values)
    zero = values[0].new_zeros(())
    return torch.stack([next(it) if t is not None and t.numel() else zero for t in tensors])


def _dense(t: torch.Tensor) -> torch.Tensor:
    """A tensor whose norm and extrema are the gradient's: a sparse gradient (``Embedding(
    sparse=True)``) is coalesced and read through its values (duplicates summed first, the
    implicit zeros add nothing). Coalescing sizes its result from the data, so on an accelerator
    this one case waits for the device."""
    if t.layout == torch.strided:
        return t
    if t.layout == torch.sparse_coo:
        return t.coalesce().values()
    return t.values() if t.layout == torch.sparse_csr else t.to_dense()


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (FSDP2, tensor parallel): measured without a collective;
    ``resdoctor.integrations.distributed`` combines the shards' norms when it merges the ranks'
    runs."""
    if type(t) is torch.Tensor or type(t) is nn.Parameter:  # the usual case, without hasattr
        return t
    return t.to_local() if hasattr(t, "to_local") else t
