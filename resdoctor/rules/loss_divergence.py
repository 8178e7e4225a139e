"""loss-divergence: the loss rises, or keeps swinging, away from its best value."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import sig
from resdoctor.rules._common import clip_fix, lr_fix, warmup_fix
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import Timeline, timeline
from resdoctor.runfile.run import Run


@rule("loss-divergence", requires=("scalar:loss",))
def loss_divergence(
    run: Run,
    *,
    rise_fraction: float = 0.5,
    rel_rise: float = 0.1,
    min_rows: int = 3,
    min_steps: int = 8,
    oscillations: int = 2,
    window_fraction: float = 0.1,
    max_window: int = 50,
    noise_sigmas: float = 3.0,
) -> list[Finding]:
    """The smoothed loss climbs above its best so far by a share of the progress made.

    Args:
        rise_fraction: a rise above the best smoothed loss of this fraction of the progress
            made so far (initial - best) is divergence (loss units cancel; Chowdhery et al. 2022
            and Wortsman et al. 2023 on loss spikes and divergence).
        rel_rise: also at least this fraction of the best value itself, so a run that never
            improved must rise 10% above its start.
        min_rows: consecutive recorded steps above the line for an episode (one noisy batch is
            not divergence).
        min_steps: logged losses needed.
        oscillations: episodes that recover, at or above which the loss "oscillates".
        window_fraction: rolling-median smoothing window as a fraction of the logged steps
            (at least 3): wide enough to average out batch-to-batch swings of the loss.
        max_window: cap on that window (recorded rows), so a long run's divergence is seen
            within at most 25 rows.
        noise_sigmas: the rise must also exceed this many standard errors of the smoothed loss
            (robust sigma of the batch-to-batch residuals / sqrt(window)): swings of a noisy or
            batch-cycling loss are not divergence.
    """
    tl = timeline(run)
    loss = tl.healthy_series(run.scalar("loss"))
    if len(loss) < min_steps:
        return []
    w = max(3, min(max_window, int(window_fraction * len(loss))))
    smooth = loss.rolling(w, min_periods=w // 2 + 1).median().dropna()
    start = float(loss.iloc[:w].median())
    best = smooth.cummin()
    noise = 1.4826 * float(
        (loss - loss.rolling(w, min_periods=1, center=True).median()).abs().median()
    )
    line = np.maximum(
        np.maximum(rise_fraction * (start - best), rel_rise * best.abs()),
        noise_sigmas * noise / np.sqrt(w),
    )
    above = smooth - best > line
    episodes = _episodes(above, min_rows)
    ends_failed = tl.failure_step is not None and bool(above.iloc[-1])
    if not episodes and not ends_failed:
        return []
    if not episodes:
        episodes = [(_tail_start(above), int(above.index[-1]), False)]
    unrecovered = (not episodes[-1][2]) or ends_failed
    # a divergence starts with the excursion it never came back from; earlier excursions that
    # recovered are oscillation before it (in the evidence)
    onset = episodes[-1][0] if unrecovered else episodes[0][0]
    if not unrecovered and len(episodes) < oscillations:
        return []
    best_step = (
        int(smooth[smooth.index < onset].idxmin())
        if (smooth.index < onset).any()
        else int(smooth.index[0])
    )
    evidence: dict[str, Any] = {
        "onset_step": onset,
        "best_loss": sig(float(smooth.loc[best_step]), 4),
        "best_step": best_step,
        "loss_at_onset": sig(float(loss.loc[onset]), 4),
        "final_loss": sig(float(loss.iloc[-1]), 4),
        "initial_loss": sig(start, 4),
        "episodes": len(episodes),
        "recovered": not unrecovered,
        "smoothing_window": w,
    }
    lr = run.scalar("lr")
    if not lr.empty and (lr.index <= onset).any():
        evidence["lr_at_onset"] = sig(float(lr[lr.index <= onset].iloc[-1]), 3)
    kind = "diverged" if unrecovered else f"oscillated ({len(episodes)} excursions)"
    return [
        Finding(
            code="loss-divergence",
            severity="critical" if unrecovered else "warning",
            title=f"Loss {kind} from step {onset}",
            message=(
                f"The smoothed loss was best at step {best_step} ({evidence['best_loss']:g}) and "
                f"rose to {evidence['loss_at_onset']:g} at step {onset}"
                + (", never recovering." if unrecovered else ", then came back.")
                + (" The run then hit NaN." if tl.failure_step is not None else "")
            ),
            step=onset,
            location=None,
            phase=None,
            evidence=evidence,
            fixes=tuple(_fixes(run, tl, onset)),
            rule="loss-divergence",
            thresholds={
                "rise_fraction": rise_fraction,
                "rel_rise": rel_rise,
                "min_rows": min_rows,
                "smoothing_window": w,
                "noise": sig(noise, 3),
            },
        )
    ]


def _episodes(above: pd.Series, min_rows: int) -> list[tuple[int, int, bool]]:
    """(start step, last step, recovered) of each run of >= ``min_rows`` True values."""
    out: list[tuple[int, int, bool]] = []
    start, count = 0, 0
    idx = above.index
    for i, v in enumerate(above.to_numpy(dtype=bool)):
        if v:
            start = int(idx[i]) if count == 0 else start
            count += 1
        if (not v or i == len(idx) - 1) and count:
            if count >= min_rows:
                out.append((start, int(idx[i - (not v)]), not v))
            count = 0
    return out


def _tail_start(above: pd.Series) -> int:
    values = above.to_numpy(dtype=bool)
    i = len(values) - 1
    while i > 0 and values[i - 1]:
        i -= 1
    return int(above.index[i])


def _fixes(run: Run, tl: Timeline, onset: int) -> list[Fix]:
    return [
        f
        for f in (lr_fix(run, tl, onset), clip_fix(run, tl, onset), warmup_fix(run, onset))
        if f is not None
    ]
