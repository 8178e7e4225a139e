"""SiteProbe: skip / branch / stream magnitudes at one residual addition."""

from __future__ import annotations

import torch


def rms(x: torch.Tensor) -> torch.Tensor:
    """Root mean square in float32 (0-d); non-finite when x holds NaN/Inf (or overflows: the
    non-finite checks use ``extrema``, not this)."""
    x = x.detach()
    n = max(x.numel(), 1)
    if x.dtype == torch.float32 and x.is_contiguous():
        flat = x.reshape(-1)
        return torch.dot(flat, flat).sqrt() / (n ** 0.5)  # BLAS sdot: ~25% faster than a norm
    return torch.linalg.vector_norm(x, dtype=torch.float32) / (n ** 0.5)


def extrema(x: torch.Tensor) -> torch.Tensor:
    """``[min, max]`` of x (one fused pass): both finite exactly when every element is finite.

    A norm would overflow float32 for huge but finite values and call them non-finite.
    """
    if x.numel() == 0:
        return x.new_zeros(2)
    lo, hi = torch.aminmax(x.detach().reshape(-1))
    return torch.stack([lo, hi])


class SiteProbe:
    """Given the operands (or one operand and the sum) of ``out = skip + branch``.

    branch_ratio = ||branch|| / ||skip||. The stream RMS is ||skip + branch|| / sqrt(n); when the
    sum is not tapped it comes from ||a||^2 + ||b||^2 + 2<a, b>, one fused dot product instead of
    materialising the sum.
    """

    @staticmethod
    def from_operands(
        skip: torch.Tensor, branch: torch.Tensor, skip_rms: torch.Tensor, branch_rms: torch.Tensor
    ) -> torch.Tensor:
        n = max(skip.numel(), 1)
        a, b = skip.detach(), branch.detach()
        if a.is_contiguous() and b.is_contiguous() and a.dtype == b.dtype:
            dot = torch.dot(a.reshape(-1), b.reshape(-1)).float() / n
        else:
            dot = (a.float() * b.float()).mean()
        return (skip_rms.pow(2) + branch_rms.pow(2) + 2 * dot).clamp_min(0).sqrt()

    @staticmethod
    def branch_from_sum(total: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return rms(total.detach() - skip.detach())
