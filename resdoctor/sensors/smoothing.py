"""Smoothing: over-smoothing of a representation, measured on a fixed sample of positions."""

from __future__ import annotations

import torch


class Smoothing:
    """Mean pairwise cosine similarity and normalised Dirichlet energy of sampled positions.

    Positions are tokens ``[B, T, D]`` (sample 0), nodes/rows ``[N, D]`` or spatial positions
    ``[B, C, H, W]`` (sample 0, channels as features). ``samples`` positions are taken with a fixed
    stride, so no random number is drawn (training stays bit-identical).

    similarity -> 1 and energy -> 0 mean every position carries the same vector (Oono & Suzuki
    2020; Dong et al. 2021, "Attention is not all you need: pure attention loses rank").
    energy = mean_ij ||x_i - x_j||^2 / (2 mean_i ||x_i||^2), the Dirichlet energy of the complete
    graph normalised to 1 for orthogonal zero-mean positions.
    """

    def __init__(self, samples: int = 64) -> None:
        self.samples = samples

    def positions(self, x: torch.Tensor) -> torch.Tensor | None:
        if x.dim() == 4:
            x = x[0].flatten(1).transpose(0, 1)  # [H*W, C]
        elif x.dim() == 3:
            x = x[0]  # [T, D]
        elif x.dim() != 2:
            return None
        n = x.shape[0]
        if n < 2:
            return None
        if n > self.samples:
            x = x[:: -(-n // self.samples)]
        return x.detach().float()

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(similarity, energy)`` as 0-d tensors on x's device, or None for unsupported shapes."""
        pos = self.positions(x)
        if pos is None:
            return None
        n = pos.shape[0]
        unit = torch.nn.functional.normalize(pos, dim=1)
        gram = unit @ unit.T
        similarity = (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))
        sq = pos.pow(2).sum(1)  # [n]
        spread = (pos - pos.mean(0, keepdim=True)).pow(2).sum(1).mean()
        energy = spread / sq.mean().clamp_min(1e-30)
        return similarity, energy
