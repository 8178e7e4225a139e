"""UpdateRatio: ||w_after - w_before|| / ||w_before|| per module for one optimizer step."""

from __future__ import annotations

import torch

from resdoctor.recording.sensors.grad_norm import GradNorm
from resdoctor.recording.sensors.needs import Needs, every


class UpdateRatio:
    """Snapshot the parameters before ``optimizer.step()``; compare after it.

    The snapshot is one fused copy of the parameters, taken only on sampled steps (parameter
    norms are measured then too); every step only checks the parameters for NaN/Inf. Results
    are per parameter (device); ``GradNorm.fold`` combines them into modules on the host.
    """

    def __init__(self, grouping: GradNorm, every_n: int = 10) -> None:
        self.grouping = grouping
        # the snapshot (``before``) follows the schedule; ``after`` runs every step
        self.needs = Needs(frozenset({"optimizer_step"}), every(every_n))
        self._before: list[torch.Tensor] | None = None
        self._old = torch.zeros(0)

    def before(self) -> None:
        """Snapshot the parameters (once per step: several optimizers share one snapshot)."""
        if self._before is not None:
            return
        with torch.no_grad():
            params = self.grouping.local_params()
            if params:
                self._before = list(torch._foreach_mul(params, 1.0))
                self._old = self.grouping.norms(params)

    def after(self) -> dict[str, torch.Tensor]:
        """Per-parameter vectors: ``param_max`` every step (the non-finite check, one pass);
        after a snapshot also ``param_l2``, ``update_l2`` and ``update_old_l2`` (||w_after||,
        ||w_after - w_before||, ||w_before||)."""
        params = self.grouping.local_params()
        out: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            top = self.grouping.maxima(params)
            if top is not None:
                out["param_max"] = top
            if self._before is not None:
                before, self._before = self._before, None
                out["param_l2"] = self.grouping.norms(params)
                torch._foreach_sub_(before, params)
                out["update_l2"] = self.grouping.norms(before)
                out["update_old_l2"] = self._old
        return out
