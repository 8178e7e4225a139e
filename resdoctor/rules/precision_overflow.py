"""precision-overflow: under float16 (autocast or float16 weights) a module's output nears the
format's largest value, 65504, before the first Inf: the warning that comes with lead time.

HF transformers' ``DebugUnderflowOverflow`` keeps the abs-max of every module's output and
reports the frames before the first Inf; Transformer Engine keeps a per-GEMM amax history to
pick fp8 scales. resdoctor keeps the largest |output| per parameterised module from the
forward NaN/Inf check's min/max (``act_absmax``): no extra reduction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from resdoctor import fixes
from resdoctor.findings import Finding
from resdoctor.fixes.snippets import sig
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import timeline
from resdoctor.runfile.run import Run

LIMITS = {"float16": 65504.0, "bfloat16": 3.3895e38}


def low_precision(run: Run) -> str | None:
    """The reduced-precision format the run computed in: autocast's dtype, else the
    parameters' (None for float32 / float64)."""
    for key in ("autocast", "param_dtype"):
        dtype = run.state.get(key)
        if isinstance(dtype, str) and dtype in LIMITS:
            return dtype
    return None


@rule("precision-overflow", requires=("act_absmax",))
def precision_overflow(run: Run, *, headroom: float = 0.25) -> list[Finding]:
    """A module's largest |output| reaches ``headroom`` of the format's limit (float16: 65504)
    on a step before the first non-finite one.

    Args:
        headroom: share of the limit (dimensionless) at which a module is flagged: at 0.25 a
            value has less than a factor 4 of room left, one more layer of growth.
    """
    dtype = low_precision(run)
    if dtype is None:
        return []
    limit = LIMITS[dtype]
    tl = timeline(run)
    amax = run.series("act_absmax", "max")
    if amax.empty:
        return []
    healthy = tl.healthy(amax)
    if tl.skipped:  # a GradScaler-skipped step is an overflow too: the headroom ran out there
        healthy = amax[amax.index < (tl.failure_step if tl.failure_step is not None else 1 << 62)]
        healthy = healthy.where(np.isfinite(healthy))
    hot = healthy >= headroom * limit
    if not hot.to_numpy().any():
        return []
    steps = hot.any(axis=1)
    onset = int(steps.index[steps.to_numpy()][0])
    row = healthy.loc[onset]
    module = str(row.idxmax())
    peak = float(healthy.max().max())
    worst = str(healthy.max().idxmax())
    failure = tl.failure_step
    lead = failure - onset if failure is not None else None
    evidence: dict[str, Any] = {
        "dtype": dtype,
        "limit": limit,
        "module": module,
        "absmax_at_onset": sig(float(row.max()), 3),
        "peak_absmax": sig(peak, 3),
        "peak_module": worst,
        "headroom_at_peak": sig(limit / max(peak, 1e-30), 3),
        "first_nonfinite_step": failure,
        "lead_steps": lead,
        "amp_skipped_steps": len(tl.skipped),
    }
    after = f"; the first Inf came {lead} steps later" if lead is not None else ""
    return [
        Finding(
            code="precision-overflow",
            severity="warning",
            title=f"{module} output reaches {row.max():.3g} of {dtype}'s {limit:g}",
            message=(
                f"Under {dtype}, {module}'s largest |output| was {row.max():.3g} at step "
                f"{onset} ({row.max() / limit:.0%} of the format's limit); the peak was "
                f"{peak:.3g} in {worst}{after}."
            ),
            step=onset,
            location=module,
            phase="forward",
            evidence=evidence,
            fixes=(
                fixes.mixed_precision(
                    f"{module} nears float16's limit ({row.max():.3g} of {limit:g}).",
                    max_finite=peak,
                ),
            ),
            rule="precision-overflow",
            thresholds={"headroom": headroom},
        )
    ]
