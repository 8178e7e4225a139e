"""SiteMagnitude: skip / branch / stream magnitudes at one residual addition.

Operands are reduced as they arrive (an in-place update of the stream after the addition must
not change what was measured) into raw sums on the device, one BLAS dot each: ``||skip||^2``,
``||branch||^2``, and ``||skip + branch||^2`` or, when the sum is not tapped, ``<skip, branch>``
(``||a + b||^2 = ||a||^2 + ||b||^2 + 2 <a, b>``, so the sum is never materialised). ``decode``
takes the roots on the host, where they cost nothing; branch_ratio = ||branch|| / ||skip||.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from resdoctor.recording.discovery import Site
from resdoctor.recording.segment import Segment, const
from resdoctor.recording.sensors.kernels import (
    TensorCache,
    inner_into,
    sum_squares,
    sum_squares_into,
)
from resdoctor.recording.sensors.needs import Needs

Operands = dict[str, Any]  # role -> tensor, role + "_fn" -> its grad_fn, raw-sum slots


class SiteMagnitude:
    """Pools each site's raw sums; ``row`` records them once the site is complete."""

    needs = Needs(frozenset({"site_operands"}))
    kind = "site"

    def __init__(self) -> None:
        self._cache = TensorCache()

    def reset(self) -> None:
        self._cache.clear()

    def operand(self, seg: Segment, site: Site, p: Operands, role: str, t: torch.Tensor) -> bool:
        """Measure operand ``role`` of ``site`` into ``p``; True once the site is complete."""
        if role == "skip":
            p["skip_ss"] = self._sum_squares(seg, t)
        elif role == "branch":
            p["branch_ss"] = self._sum_squares(seg, t)
            if site.result is None and "skip" in p:
                p["cross"] = inner_into(seg, p["skip"], t)
        elif role == "result":
            p["sum_ss"] = self._sum_squares(seg, t)
            if site.branch is None and "skip" in p:
                p["branch_ss"] = seg.put(sum_squares(t.detach() - p["skip"].detach()))
                p["branch"] = None
        return "skip_ss" in p and "branch_ss" in p and ("sum_ss" in p or "cross" in p)

    def row(self, seg: Segment, i: int, p: Operands) -> None:
        """``[skip ss, branch ss, sum ss, <skip, branch>, n_skip, n_branch, n_sum]``."""
        n = p["skip"].numel()
        total = p.get("result")
        seg.add_row(
            self.kind,
            i,
            (
                p["skip_ss"],
                p["branch_ss"],
                p.get("sum_ss", -1),
                p.get("cross", -1),
                const(n),
                const(n if p.get("branch") is None else p["branch"].numel()),
                const(0 if total is None else total.numel()),
            ),
        )

    def row_of_sums(self, seg: Segment, i: int, sums: tuple[torch.Tensor, ...], n: int) -> None:
        """The same row from ``(||skip||^2, ||branch||^2, ||sum||^2)`` already reduced (the
        tracer's, at the addition), every operand of ``n`` elements."""
        skip_ss, branch_ss, sum_ss = (seg.put(s) for s in sums)
        seg.add_row(self.kind, i, (skip_ss, branch_ss, sum_ss, -1, const(n), const(n), const(n)))

    @staticmethod
    def decode(v: np.ndarray) -> np.ndarray:
        """Rows of raw sums (``n_sum = 0`` when the sum was not tapped) -> ``[skip, branch,
        stream]`` RMS."""
        has_sum = v[..., 6] > 0
        ss_sum = np.where(has_sum, v[..., 2], np.maximum(v[..., 0] + v[..., 1] + 2 * v[..., 3], 0))
        n = np.stack([v[..., 4], v[..., 5], np.where(has_sum, v[..., 6], v[..., 4])], axis=-1)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return np.sqrt(np.stack([v[..., 0], v[..., 1], ss_sum], axis=-1) / np.maximum(n, 1))

    def _sum_squares(self, seg: Segment, t: torch.Tensor) -> int:
        return self._cache.get(t, lambda t: sum_squares_into(seg, t))
