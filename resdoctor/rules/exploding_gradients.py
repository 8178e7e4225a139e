"""exploding-gradients: the global gradient norm surges above its recent level, or keeps
growing by orders of magnitude."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import sig
from resdoctor.rules._common import clip_fix, compact, grad_total, lr_fix, warmup_fix
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import Timeline, timeline
from resdoctor.runfile.run import Run


@rule("exploding-gradients", requires=("scalar:grad_norm_total|grad_norm",))
def exploding_gradients(
    run: Run,
    *,
    surge_factor: float = 10.0,
    window: int = 20,
    min_history: int = 3,
    growth_factor: float = 100.0,
    critical_factor: float = 1000.0,
) -> list[Finding]:
    """Gradient-norm surges (spikes) and unbounded growth, before any NaN.

    Args:
        surge_factor: a step whose global gradient norm is this many times the median of the
            previous ``window`` steps is a surge (Pascanu et al. 2013; loss/gradient spikes:
            Chowdhery et al. 2022, PaLM), if it also exceeds the median of the first ``window``
            steps: near convergence gradients bounce 10x around a level far below where they
            started, harmlessly.
        window: steps in the trailing median baseline.
        min_history: steps needed before a surge can be judged.
        growth_factor: median norm of the last tenth of the healthy run over that of the first
            tenth at or above which the gradients "grow without bound".
        critical_factor: surge ratio (or growth) at which the finding is critical.
    """
    tl = timeline(run)
    g = tl.healthy_series(grad_total(run))
    g = g[g > 0]
    if len(g) < min_history + 1:
        return []
    base = g.rolling(window, min_periods=min_history).median().shift(1)
    early = float(g.iloc[:window].median())
    ratio = g / base
    surges = ratio[(ratio >= surge_factor) & (g > early)]
    k = max(3, len(g) // 10)
    growth = float(g.iloc[-k:].median() / g.iloc[:k].median()) if len(g) >= 2 * k else 1.0
    if surges.empty and growth < growth_factor:
        return []
    # unbounded growth starts where the norm first stands surge_factor x its early level (a
    # slow climb has no surge step, and its midpoint would be late)
    grown = g.to_numpy() >= g.iloc[:k].median() * min(surge_factor, np.sqrt(growth))
    grew_at = int(g.index[np.argmax(grown)]) if growth >= growth_factor else None
    if not surges.empty:
        onset = int(surges.index[0])
        peak, first_ratio = float(surges.max()), float(surges.iloc[0])
        if grew_at is not None and grew_at < onset:
            onset, first_ratio = grew_at, float(g.loc[grew_at] / g.iloc[:k].median())
    else:
        onset = int(grew_at if grew_at is not None else g.index[0])
        peak = first_ratio = growth
    first_module, per_module = _modules(run, tl, onset, window, min_history, surge_factor)
    # critical only past its own threshold: a precursor of a failure is not the failure
    failed = tl.failure_step is not None
    severe = peak >= critical_factor or growth >= critical_factor
    evidence: dict[str, Any] = {
        "onset_step": onset,
        "grad_norm_at_onset": sig(float(g.loc[onset]), 3),
        "baseline": sig(float(base.get(onset, g.iloc[:k].median())), 3),
        "max_surge_ratio": sig(peak, 3),
        "surges": int(len(surges)),
        "growth": sig(growth, 3),
        "first_module": first_module,
        "module_surge_ratios": per_module,
    }
    kind = "surged" if not surges.empty else "grew"
    times = f"{first_ratio:.3g}x"
    where = f"; {first_module} surged first" if first_module else ""
    return [
        Finding(
            code="exploding-gradients",
            severity="critical" if severe else "warning",
            title=f"Gradient norm {kind} {times} at step {onset}"  # the peak sets the severity
            + (f", up to {peak:.3g}x" if peak > 1.5 * first_ratio else ""),
            message=(
                f"The global gradient norm {kind} to {g.loc[onset]:.3g} at step {onset} "
                f"({times} its recent level{where}); {len(surges)} surge step(s), up to "
                f"{peak:.3g}x." + (" A NaN followed." if failed else "")
            ),
            step=onset,
            location=first_module,
            phase="backward",
            evidence=evidence,
            fixes=tuple(_fixes(run, tl, onset)),
            rule="exploding-gradients",
            thresholds={
                "surge_factor": surge_factor,
                "window": window,
                "growth_factor": growth_factor,
                "critical_factor": critical_factor,
            },
        )
    ]


def _modules(
    run: Run, tl: Timeline, onset: int, window: int, min_history: int, surge_factor: float
) -> tuple[str | None, dict[str, float]]:
    """The module that surged first (ties: the larger ratio) and the top ratios at the onset."""
    df = tl.healthy(run.series("grad_norm"))
    if df.empty or onset not in df.index:
        return None, {}
    base = df.rolling(window, min_periods=min_history).median().shift(1)
    ratio = (df / base).replace([np.inf, -np.inf], np.nan)
    at = ratio.loc[onset].dropna()
    hot = ratio[ratio.index <= onset] >= surge_factor
    firsts = {c: hot.index[hot[c].to_numpy()][0] for c in hot.columns if hot[c].any()}
    if not firsts:
        return (str(at.idxmax()) if not at.empty else None), compact(at.to_dict(), 5)
    earliest = min(firsts.values())
    candidates = pd.Series({c: float(ratio.loc[s, c]) for c, s in firsts.items() if s == earliest})
    return str(candidates.idxmax()), compact(at.to_dict(), 5)


# optimizers whose step divides by a running gradient scale: clipping the norm is largely
# normalised away, the learning rate is what sets the step
ADAPTIVE = (
    "Adam",
    "AdamW",
    "NAdam",
    "RAdam",
    "Adamax",
    "Adagrad",
    "Adadelta",
    "RMSprop",
    "Adafactor",
)


def _fixes(run: Run, tl: Timeline, onset: int) -> list[Fix]:
    clip, lower = clip_fix(run, tl, onset), lr_fix(run, tl, onset)
    adaptive = any(o in ADAPTIVE for o in run.optimizers)
    first = (lower, clip) if adaptive else (clip, lower)
    return [f for f in (*first, warmup_fix(run, onset)) if f is not None]
