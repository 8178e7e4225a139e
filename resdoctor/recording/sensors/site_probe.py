"""Site magnitudes: skip / branch / stream at one residual addition, as fused reductions.

Hooks pool raw sums (``sum_squares``, ``inner``) on the device, one kernel each; ``DECODE``
turns a step's rows into the recorded values on the host, where the roots and ratios cost
nothing. branch_ratio = ||branch|| / ||skip||; when the sum is not tapped its magnitude comes
from ``||a + b||^2 = ||a||^2 + ||b||^2 + 2 <a, b>`` instead of materialising it.
"""

from __future__ import annotations

import numpy as np
import torch


def sum_squares(x: torch.Tensor) -> torch.Tensor:
    """``||x||^2`` in float32 (0-d); non-finite when x holds NaN/Inf (or overflows: the
    non-finite checks use ``extrema``, not this)."""
    x = x.detach()
    if x.dtype == torch.float32 and x.is_contiguous():
        flat = x.view(-1)
        return torch.dot(flat, flat)  # BLAS sdot: ~25% faster than a norm
    return torch.linalg.vector_norm(x, dtype=torch.float32).square()


def inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a, b>`` in float32 (0-d), broadcasting when the shapes differ."""
    a, b = a.detach(), b.detach()
    if (a.shape == b.shape and a.dtype == b.dtype == torch.float32 and a.is_contiguous()
            and b.is_contiguous()):
        return torch.dot(a.view(-1), b.view(-1))
    return (a.float() * b.float()).sum()


def extrema(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of a non-empty x in one fused pass: both finite exactly when every element
    is finite. A norm would overflow float32 for huge but finite values and call them
    non-finite."""
    return torch.aminmax(x.detach())


def decode_site(v: np.ndarray) -> np.ndarray:
    """Rows ``[skip ss, branch ss, sum ss, <skip, branch>, n_skip, n_branch, n_sum]`` (ss: sum of
    squares; n_sum = 0 when the sum was not tapped) -> ``[skip, branch, stream]`` RMS."""
    has_sum = v[:, 6] > 0
    ss_sum = np.where(has_sum, v[:, 2], np.maximum(v[:, 0] + v[:, 1] + 2 * v[:, 3], 0))
    n = np.stack([v[:, 4], v[:, 5], np.where(has_sum, v[:, 6], v[:, 4])], axis=1)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.sqrt(np.stack([v[:, 0], v[:, 1], ss_sum], axis=1) / np.maximum(n, 1))


def decode_grad_share(v: np.ndarray) -> np.ndarray:
    """Rows ``[||g_skip||^2, ||g_branch||^2]`` -> ``[share]``: the branch's part of the gradient
    reaching the site's input, |g_branch| / (|g_branch| + |g_skip|)."""
    with np.errstate(invalid="ignore", over="ignore"):
        skip, branch = np.sqrt(v[:, 0]), np.sqrt(v[:, 1])
        return (branch / np.maximum(branch + skip, 1e-30))[:, None]


# kinds whose pooled rows become their recorded values on the host (see ``_segment.unpack``)
DECODE = {"site": decode_site, "gshare": decode_grad_share}
