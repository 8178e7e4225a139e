"""stalled-training: the loss stays at its initial level while the gradients are neither
vanishing nor exploding: the optimiser moves, nothing is learnt (AUTOTRAINER's "slow
convergence"; Karpathy's recipe: first check the model can overfit one batch)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from resdoctor import fixes
from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import sig
from resdoctor.rules._common import grad_total, median_update_ratio
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import timeline
from resdoctor.runfile.run import Run


@rule("stalled-training", requires=("scalar:loss",))
def stalled_training(
    run: Run,
    *,
    min_drop: float = 0.05,
    min_steps: int = 50,
    window_fraction: float = 0.1,
    max_grad_growth: float = 100.0,
    min_grad: float = 1e-7,
) -> list[Finding]:
    """The smoothed loss never fell ``min_drop`` below its start in ``min_steps`` or more.

    Args:
        min_drop: the loss must at some point fall by at least this share of its initial level
            (rolling medians over ``window_fraction`` of the steps).
        min_steps: logged losses needed before a run can be called stalled.
        window_fraction: share of the steps in the first and last windows.
        max_grad_growth: gradients that grew this much are exploding, not stalled.
        min_grad: a median global gradient norm below this is vanishing, not stalled.
    """
    tl = timeline(run)
    loss = tl.healthy_series(run.scalar("loss"))
    if len(loss) < min_steps:
        return []
    k = max(3, int(window_fraction * len(loss)))
    smooth = loss.rolling(k, min_periods=k).median().dropna()
    start, end = float(smooth.iloc[0]), float(smooth.iloc[-1])
    best = float(smooth.min())
    drop = (start - best) / abs(start) if start else 0.0  # the progress ever made: a run
    # that learnt and then diverged is not stalled
    if not math.isfinite(drop) or drop >= min_drop:
        return []
    g = tl.healthy_series(grad_total(run))
    if not g.empty:
        g = g[g > 0]
        growth = float(g.iloc[-k:].median() / g.iloc[:k].median()) if len(g) >= 2 * k else 1.0
        if float(g.median()) < min_grad or growth >= max_grad_growth:
            return []  # vanishing or exploding: their rules speak
    update = median_update_ratio(run, tl, None)
    chance = _chance(start)
    evidence: dict[str, Any] = {
        "loss_start": sig(start, 4),
        "loss_best": sig(best, 4),
        "loss_end": sig(end, 4),
        "drop": sig(drop, 3),
        "steps": int(loss.index[-1]) + 1,
        "median_grad_norm": sig(float(g.median()), 3) if not g.empty else None,
        "median_update_ratio": sig(update, 3) if update is not None else None,
    }
    at_chance = ""
    if chance is not None:
        evidence["chance_classes"] = chance
        at_chance = f" (ln {chance} = {math.log(chance):.3g}: chance level for {chance} classes)"
    return [
        Finding(
            code="stalled-training",
            severity="warning",
            title=f"The loss never fell {min_drop:.0%} below its start ({start:.3g}) in "
            f"{len(loss)} steps",
            message=(
                f"The loss went from {start:.4g} to {end:.4g}{at_chance} while the gradients "
                "are neither vanishing nor exploding: the weights move, nothing is learnt."
            ),
            step=None,  # no onset: it never moved
            phase="optimizer",
            evidence=evidence,
            fixes=tuple(_fixes(run, update)),
            rule="stalled-training",
            thresholds={"min_drop": min_drop, "min_steps": min_steps},
        )
    ]


def _chance(loss: float, tolerance: float = 0.03) -> int | None:
    """The number of classes k whose chance-level cross-entropy ln(k) is ``loss`` (2..100000)."""
    if not (math.isfinite(loss) and loss > 0.5):
        return None
    k = int(round(math.exp(loss)))
    return k if 2 <= k <= 100_000 and abs(math.log(k) - loss) <= tolerance * loss else None


def _fixes(run: Run, update: float | None) -> list[Fix]:
    out = [fixes.overfit_batch()]
    if update is not None and update < fixes.TARGET_UPDATE_RATIO / 10:
        lr = run.scalar("lr")
        current = float(lr.iloc[-1]) if not lr.empty and np.isfinite(lr.iloc[-1]) else None
        out.insert(0, fixes.raise_lr(fixes.TARGET_UPDATE_RATIO / update, update, current))
    return out
