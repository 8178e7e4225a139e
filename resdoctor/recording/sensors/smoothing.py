"""Smoothing: over-smoothing of a representation, measured on a fixed sample of positions."""

from __future__ import annotations

import torch

from resdoctor.recording.sensors.needs import Needs, every


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

    def __init__(self, samples: int = 64, every_n: int = 10) -> None:
        self.samples = samples
        self.needs = Needs(frozenset({"site_operands", "layer_output"}), every(every_n))

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
        return None if pos is None else self.measure(pos)

    def of_sum(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The same for ``a + b`` without materialising the sum: sampling positions is linear."""
        pa, pb = self.positions(a), self.positions(b)
        if pa is None or pb is None or pa.shape != pb.shape:
            return None
        return self.measure(pa + pb)

    @staticmethod
    def measure(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(similarity, energy)`` of positions ``[n, d]``. The pairwise mean cosine comes from
        ``sum_ij <u_i, u_j> = ||sum_i u_i||^2`` (no Gram matrix), minus the diagonal."""
        n = pos.shape[0]
        sq = (pos * pos).sum(1)  # [n] squared lengths
        unit = pos * sq.clamp_min(1e-24).rsqrt().unsqueeze(1)  # F.normalize's eps=1e-12
        total = unit.sum(0)
        similarity = (total.dot(total) - (unit * unit).sum()) / (n * (n - 1))
        centred = pos - pos.mean(0, keepdim=True)
        energy = (centred * centred).sum() / sq.sum().clamp_min(1e-30)
        return similarity, energy
