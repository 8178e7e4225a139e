"""dead-branch: a residual branch that contributes nothing for most of training."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from resdoctor import fixes
from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import short_list, sig
from resdoctor.rules._common import compact, site_dicts, site_frame
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import timeline
from resdoctor.runfile.run import Run


@rule("dead-branch", requires=("branch_ratio",))
def dead_branch(
    run: Run,
    *,
    ratio: float = 1e-2,
    min_fraction: float = 0.8,
    warmup_steps: int = 10,
    warmup_fraction: float = 0.1,
    min_rows: int = 5,
    attribution_share: float = 0.01,
    zero_ratio: float = 1e-6,
    wake_growth: float = 3.0,
) -> list[Finding]:
    """Sites whose branch/skip ratio stays near 0 after warm-up (zero-init branches that wake up
    are healthy).

    Args:
        ratio: ||branch|| / ||skip|| (dimensionless) below which a branch adds nothing: under 1%
            of the skip (Veit et al. 2016: such blocks can be removed; ReZero / Fixup branches
            start at 0 and must grow: Bachlechner et al. 2020, Zhang et al. 2019).
        min_fraction: share of post-warm-up steps a site must spend below ``ratio``.
        warmup_steps, warmup_fraction: the warm-up ignored: the larger of the two (steps, or a
            fraction of the run).
        min_rows: post-warm-up recorded steps needed to judge.
        attribution_share: with ``attribution_share`` recorded, a site whose branch takes at
            most this share of the output attribution confirms the finding.
        zero_ratio: median ||branch|| / ||skip|| at or below which a dead branch outputs
            (numerically) zero, e.g. ReLUs that never fire (Lu et al. 2019, dying ReLU): no
            branch scale can revive a zero, so normalising before its last activation comes
            first; above it the branch is alive but scaled down, and a larger scale revives it.
        wake_growth: a branch below ``ratio`` whose ratio grows steadily by at least this factor
            over the judged steps (robust Theil-Sen slope of log ratio vs step, Sen 1968) is
            waking, not dead: zero-initialised and layer-scaled branches (SkipInit, ReZero,
            Fixup, zero-init last BN, layer-scale 1e-6; De & Smith 2020, Touvron et al. 2021)
            start at ~0 and grow.
    """
    tl = timeline(run)
    end = tl.failure_step if tl.failure_step is not None else run.steps
    warm = int(max(warmup_steps, warmup_fraction * end))
    br = site_frame(run, "branch_ratio", tl, start=warm)
    if len(br) < min_rows:
        return []
    below = br < ratio
    frac = below.sum() / br.notna().sum().clip(lower=1)
    dead = [c for c in br.columns if frac[c] >= min_fraction and not _waking(br[c], wake_growth)]
    if not dead:
        return []
    medians = br[dead].median()
    evidence: dict[str, Any] = {
        "sites": dead,
        "median_ratio": compact(medians.to_dict()),
        "fraction_below": compact(frac[dead].to_dict()),
        "warmup_steps": warm,
        "max_ratio": sig(float(br[dead].max().max()), 3),
    }
    if run.has("grad_branch_share"):
        share = site_frame(run, "grad_branch_share", tl, start=warm)
        cols = [c for c in dead if c in share.columns]
        if cols:
            evidence["grad_branch_share"] = compact(share[cols].median().to_dict())
    if run.has("attribution_share"):
        att = run.series("attribution_share")
        cols = [c for c in dead if c in att.columns]
        if cols:
            med = att[cols].median()
            evidence["attribution_share"] = compact(med.to_dict())
            evidence["attribution_confirms"] = bool((med <= attribution_share).all())
    n = len(run.sites)
    return [
        Finding(
            code="dead-branch",
            severity="warning",
            title=f"{len(dead)} of {n} residual branches are dead",
            message=(
                f"After step {warm}, ||F(x)||/||x|| stays below {ratio:g} at "
                f"{short_list(dead, 4)} for {float(frac[dead].min()):.0%}+ of the steps: those "
                "blocks compute ~the identity and waste depth."
            ),
            step=warm,
            location=dead[0],
            phase="forward",
            evidence=evidence,
            fixes=tuple(_fixes(run, dead, float(medians.median()) <= zero_ratio)),
            rule="dead-branch",
            thresholds={
                "ratio": ratio,
                "min_fraction": min_fraction,
                "warmup_steps": warm,
                "zero_ratio": zero_ratio,
            },
        )
    ]


def _waking(ratio: pd.Series, growth: float) -> bool:
    """The ratio grows steadily: the robust log-linear trend over the window reaches ``growth``."""
    from scipy.stats import theilslopes

    r = ratio.dropna()
    r = r[r > 0]
    if len(r) < 3:
        return False
    steps = r.index.to_numpy(dtype=float)
    slope = theilslopes(np.log10(r.to_numpy(dtype=float)), steps)[0]
    return bool(slope > 0 and slope * (steps[-1] - steps[0]) >= np.log10(growth))


def _fixes(run: Run, dead: list[str], zero: bool) -> list[Fix]:
    """Revive the branches first (a scale, or a norm when they output zero); drop them last."""
    sites = site_dicts(run, dead)
    n = len(run.sites)
    names = short_list(dead, 3)
    scale = fixes.residual_scaling(
        sites,
        n,
        reason=(
            f"The branches of {names} are alive but scaled down (or start at zero, as in ReZero / "
            "SkipInit, and never wake up): replace their current multiplier by one at 1/sqrt(N)."
        ),
    )
    norm = fixes.add_normalization(
        sites,
        before_activation=True,
        reason=(
            f"The branches of {names} output ~zero: their last activation never fires, and "
            "no scale can revive a zero."
        ),
    )
    revive = [norm, scale] if zero and norm.params["branches"] else [scale]
    removable = [
        s["owner"]
        for s in sites
        if s.get("kind") == "identity"
        and (s.get("result") or {}).get("module") == s.get("owner")
        and not (s.get("result") or {}).get("path")
    ]
    removable = sorted(set(removable), key=removable.index)
    # only once reviving them failed: a dead block is wasted depth (never a cut below 2 blocks)
    if removable and n - len(removable) >= 2:
        revive.append(
            fixes.reduce_depth(
                removable, n, n - len(removable), "If they stay dead, their branches add ~nothing."
            )
        )
    return revive
