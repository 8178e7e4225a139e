"""loss-spike and grad-spike: a sudden jump far above the recent level, that may recover (a
jump that never comes back is loss-divergence / exploding-gradients), counted as a rate.

OLMo-core's StabilityMonitor flags a value above mean + 6 sigma of the last 128 steps and
reports the rate over 10,000 steps; Megatron-LM flags a loss above 10x the highest seen. A
spike here must pass both kinds of bar that apply to a noisy series: ``sigmas`` above the
trailing mean, and ``min_ratio`` times the trailing median (a flat, nearly noiseless loss
would otherwise spike at every wiggle).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from resdoctor import fixes
from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import sig
from resdoctor.rules._common import clip_fix, grad_total, lr_fix
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import Timeline, timeline
from resdoctor.runfile.run import Run


@dataclass(frozen=True)
class Spike:
    step: int
    value: float
    sigmas: float
    ratio: float  # to the trailing median
    to_max: float  # to the highest value seen before it
    recovered: bool


def find_spikes(
    s: pd.Series,
    *,
    window: int,
    sigmas: float,
    min_ratio: float,
    warmup: int,
    recover_steps: int,
    min_history: int = 20,
) -> list[Spike]:
    """Spikes of ``s`` (indexed by step): above the median + ``sigmas`` robust sigma of the
    previous ``window`` values (at most a quarter of the run) and ``min_ratio`` x that median,
    after ``warmup`` steps; consecutive spiking steps are one spike (its peak). ``recovered``:
    back under 1.5x that median within ``recover_steps`` steps."""
    s = s.dropna()
    if len(s) <= min_history:
        return []
    # a short run's window is a quarter of it: 128 steps of a learning curve are a trend, not
    # a level; median and MAD (x1.4826 = sigma for normal noise): the spikes themselves and
    # the trend do not inflate the scale the way a mean and a std do
    window = max(min_history, min(window, len(s) // 4))
    past = s.shift(1).rolling(window, min_periods=min_history)
    med = past.median()
    mean = med
    std = 1.4826 * past.apply(lambda w: np.median(np.abs(w - np.median(w))), raw=True)
    prior_max = s.shift(1).cummax()
    values = s.to_numpy()
    hot = (s > mean + sigmas * std.clip(lower=1e-12)) & (s > min_ratio * med) & (s.index >= warmup)
    out: list[Spike] = []
    steps = s.index.to_numpy()
    i = 0
    while i < len(s):
        if not bool(hot.iloc[i]):
            i += 1
            continue
        j = i
        while j + 1 < len(s) and bool(hot.iloc[j + 1]):
            j += 1
        k = i + int(np.argmax(values[i : j + 1]))
        base_mean, base_std = float(mean.iloc[i]), float(std.iloc[i])
        after = s[(s.index > steps[j]) & (s.index <= steps[j] + recover_steps)]
        # back to its level: under 1.5x the median before it (a norm that stays up is a climb)
        recovered = bool(len(after)) and bool((after < 1.5 * float(med.iloc[i])).any())
        out.append(
            Spike(
                int(steps[k]),
                float(values[k]),
                (float(values[k]) - base_mean) / max(base_std, 1e-12),
                float(values[k]) / max(float(med.iloc[i]), 1e-30),
                float(values[k]) / max(float(prior_max.iloc[i]), 1e-30),
                recovered,
            )
        )
        i = j + 1
    return out


def _finding(
    code: str,
    what: str,
    run: Run,
    tl: Timeline,
    spikes: list[Spike],
    n_steps: int,
    thresholds: dict[str, Any],
    extra_fixes: list[Fix],
) -> Finding:
    first, worst = spikes[0], max(spikes, key=lambda x: x.sigmas)
    recovered = sum(x.recovered for x in spikes)
    rate = 10_000 * len(spikes) / max(n_steps, 1)
    evidence: dict[str, Any] = {
        "spikes": len(spikes),
        "steps": [x.step for x in spikes[:20]],
        "rate_per_10k_steps": sig(rate, 3),
        "recovered": recovered,
        "worst_step": worst.step,
        "worst_sigmas": sig(worst.sigmas, 3),
        "worst_ratio_to_median": sig(worst.ratio, 3),
        "worst_ratio_to_running_max": sig(worst.to_max, 3),
    }
    came_back = "all recovered" if recovered == len(spikes) else f"{recovered} recovered"
    return Finding(
        code=code,
        severity="warning",
        title=f"{len(spikes)} {what} spike{'s' * (len(spikes) != 1)} ({came_back})",
        message=(
            f"The {what} jumped to {worst.sigmas:.3g} sigma above its recent mean at step "
            f"{worst.step} ({worst.ratio:.3g}x its recent median, {worst.to_max:.3g}x the "
            f"highest value before); first at step {first.step}. Spikes at steps "
            f"{', '.join(str(x.step) for x in spikes[:8])}: look at those batches."
        ),
        step=first.step,
        phase="loss" if code == "loss-spike" else "backward",
        evidence=evidence,
        fixes=tuple(f for f in _order(run, tl, first, what, thresholds, extra_fixes) if f),
        thresholds=thresholds,
    )


def _recovered(
    s: pd.Series,
    run: Run,
    thresholds: dict[str, Any],
    warmup_fraction: float,
    recover_steps: int,
) -> list[Spike]:
    """The spikes of ``s`` that came back: only those are spikes."""
    spikes = find_spikes(
        s,
        window=int(thresholds["window"]),
        sigmas=float(thresholds["sigmas"]),
        min_ratio=float(thresholds["min_ratio"]),
        warmup=max(10, int(warmup_fraction * run.steps)),
        recover_steps=recover_steps,
    )
    return [x for x in spikes if x.recovered]


def _order(
    run: Run, tl: Timeline, first: Spike, what: str, thresholds: dict[str, Any], extra: list[Fix]
) -> list[Fix | None]:
    """Spikes in a run that kept training are mostly data: skip the batch first, then bound
    the step; spikes in a run that went non-finite or ended far above its best loss are
    instability: the LR first."""
    skip = fixes.skip_batch(what, float(thresholds["sigmas"]), int(thresholds["window"]))
    clip, lower = clip_fix(run, tl, first.step), lr_fix(run, tl, first.step)
    if tl.failure_step is not None or _ended_up(run):
        return [lower, clip, *extra, skip]
    return [skip, clip, *extra, lower]


def _ended_up(run: Run) -> bool:
    """The loss ended far above its best (twice its best rolling median): the run did not
    come back from its instability."""
    loss = run.scalar("loss").dropna()
    loss = loss[np.isfinite(loss.to_numpy())]
    if len(loss) < 10:
        return False
    k = max(3, len(loss) // 10)
    smooth = loss.rolling(k, min_periods=k).median().dropna()
    return bool(len(smooth)) and float(smooth.iloc[-1]) > 2 * float(smooth.min())


def _attention(run: Run) -> list[Fix]:
    """z-loss / QK-norm where the model has attention: logit growth is the usual spike source
    in transformers (Wortsman et al. 2023; Dehghani et al. 2023)."""
    return [fixes.qk_norm()] if run.architecture == "transformer" else []


@rule("loss-spike", requires=("scalar:loss",))
def loss_spike(
    run: Run,
    *,
    sigmas: float = 6.0,
    window: int = 128,
    min_ratio: float = 2.0,
    warmup_fraction: float = 0.1,
    recover_steps: int = 10,
) -> list[Finding]:
    """The loss jumps above its trailing median + ``sigmas`` robust sigma (OLMo-core
    StabilityMonitor: 6 sigma over the last 128 steps).

    Args:
        sigmas: robust standard deviations (1.4826 MAD) above the trailing median.
        window: trailing steps for the median and MAD (at most a quarter of the run).
        min_ratio: also at least this many times the trailing median (a near-noiseless loss).
        warmup_fraction: the first share of the run is not judged: warm-up transients.
        recover_steps: steps within which the loss must come back under 1.5x its median for
            the jump to be a spike (one that stays is loss-divergence).
    """
    tl = timeline(run)
    loss = tl.healthy_series(run.scalar("loss"))
    thresholds = {"sigmas": sigmas, "window": window, "min_ratio": min_ratio}
    spikes = _recovered(loss, run, thresholds, warmup_fraction, recover_steps)
    if not spikes:  # (a jump that stays is loss-divergence)
        return []
    return [_finding("loss-spike", "loss", run, tl, spikes, len(loss), thresholds, _attention(run))]


@rule("grad-spike", requires=("scalar:grad_norm_total|grad_norm",))
def grad_spike(
    run: Run,
    *,
    sigmas: float = 6.0,
    window: int = 128,
    min_ratio: float = 3.0,
    warmup_fraction: float = 0.1,
    recover_steps: int = 10,
) -> list[Finding]:
    """The global gradient norm jumps above its trailing median + ``sigmas`` robust sigma
    and comes back (one that stays up is exploding-gradients).

    Args:
        sigmas: robust standard deviations (1.4826 MAD) above the trailing median.
        window: trailing steps for the median and MAD (at most a quarter of the run).
        min_ratio: also at least this many times the trailing median.
        warmup_fraction: the first share of the run is not judged.
        recover_steps: steps within which the norm must come back.
    """
    tl = timeline(run)
    g = tl.healthy_series(grad_total(run))
    thresholds = {"sigmas": sigmas, "window": window, "min_ratio": min_ratio}
    spikes = _recovered(g, run, thresholds, warmup_fraction, recover_steps)
    if not spikes:  # (a surge that stays is exploding-gradients)
        return []
    return [
        _finding(
            "grad-spike", "gradient norm", run, tl, spikes, len(g), thresholds, _attention(run)
        )
    ]
