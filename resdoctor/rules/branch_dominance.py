"""branch-dominance: residual branches overwhelm the skip path (||F(x)|| / ||x|| >> 1)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from resdoctor import fixes
from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import short_list, sig
from resdoctor.rules._common import compact, has_norm, post_norm_sites, site_dicts, site_frame
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import timeline
from resdoctor.runfile.run import Run


@rule("branch-dominance", requires=("branch_ratio",))
def branch_dominance(
    run: Run,
    *,
    ratio: float = 5.0,
    critical_ratio: float = 50.0,
    min_fraction: float = 0.5,
    attribution_share: float = 0.9,
) -> list[Finding]:
    """Sites whose branch/skip norm ratio stays above ``ratio``, or ends there before a failure.

    Args:
        ratio: ||branch|| / ||skip|| (dimensionless) above which the branch dominates: at 5 the
            skip carries under 4% of the sum's energy and the block no longer starts near the
            identity that makes deep residual nets trainable (De & Smith 2020; Liu et al. 2020).
        critical_ratio: median ratio at which the finding is critical.
        min_fraction: share of the recorded steps a site must spend above ``ratio``.
        attribution_share: when the run carries ``attribution_share``, a site whose branch takes
            at least this share of the output attribution confirms the finding.
    """
    tl = timeline(run)
    br = site_frame(run, "branch_ratio", tl, start=1)
    if br.empty:
        return []
    above = br > ratio
    frac = above.sum() / br.notna().sum().clip(lower=1)
    last = br.ffill().iloc[-1]
    ends_above = (last > ratio) & (tl.failure_step is not None)
    hit = [c for c in br.columns if frac[c] >= min_fraction or bool(ends_above[c])]
    if not hit:
        return []
    onsets = {c: int(above.index[above[c].to_numpy()][0]) for c in hit}
    first = min(hit, key=lambda c: (onsets[c], -float(br[c].max())))
    medians = br[hit].median()
    severe = float(medians.max()) >= critical_ratio  # its own threshold, not the run's fate
    evidence: dict[str, Any] = {
        "sites": hit,
        "median_ratio": compact(medians.to_dict()),
        "max_ratio": sig(float(br[hit].max().max()), 3),
        "first_site": first,
        "first_step": onsets[first],
        "fraction_above": compact(frac[hit].to_dict()),
    }
    evidence.update(_attribution(run, hit, attribution_share))
    n = len(run.sites)
    return [
        Finding(
            code="branch-dominance",
            severity="critical" if severe else "warning",
            title=f"Residual branches dominate the skip path in {len(hit)} of {n} sites",
            message=(
                f"||F(x)||/||x|| rises above {ratio:g} at {short_list(hit, 4)} (median "
                f"{float(medians.max()):.3g}, max {float(br[hit].max().max()):.3g}); {first} "
                f"drifted first, at step {onsets[first]}. The identity highway is lost, so "
                "signals and gradients are multiplied block after block."
            ),
            step=onsets[first],
            location=first,
            phase="forward",
            evidence=evidence,
            fixes=tuple(_fixes(run, hit, float(medians.max()))),
            rule="branch-dominance",
            thresholds={
                "ratio": ratio,
                "critical_ratio": critical_ratio,
                "min_fraction": min_fraction,
            },
        )
    ]


def _attribution(run: Run, sites: list[str], share: float) -> dict[str, Any]:
    if not run.has("attribution_share"):
        return {}
    att = run.series("attribution_share")
    cols = [s for s in sites if s in att.columns]
    if not cols:
        return {}
    med = att[cols].median()
    return {
        "attribution_share": compact(med.to_dict()),
        "attribution_confirms": bool((med >= share).any()),
    }


def _fixes(run: Run, sites: list[str], worst_ratio: float) -> list[Fix]:
    all_sites = list(run.sites.sort_values("index")["name"])
    post = [s for s in post_norm_sites(run) if s in sites]
    reason = f"The branches of {short_list(sites, 3)} outgrow the skip path."
    out = [
        fixes.residual_scaling(
            site_dicts(run, all_sites),
            len(all_sites),
            post_norm=bool(post),
            reason=reason,
            branch_ratio=worst_ratio,
        )
    ]
    owners = pd.Series(site_dicts(run, sites)).map(lambda s: s.get("owner", ""))
    if not any(has_norm(run, o) for o in owners):
        norm = fixes.add_normalization(site_dicts(run, sites), reason=reason)
        if norm.params["branches"]:
            out.append(norm)
    return out
