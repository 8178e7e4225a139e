"""oversmoothing: positions (tokens, nodes, pixels) become indistinguishable with depth."""

from __future__ import annotations

from typing import Any

import numpy as np

from resdoctor import fixes
from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import sig
from resdoctor.rules._common import first_run, site_dicts, site_frame
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import timeline
from resdoctor.runfile.run import Run


@rule("oversmoothing", requires=("smoothing",))
def oversmoothing(
    run: Run,
    *,
    similarity: float = 0.9,
    energy: float = 0.1,
    depth_rise: float = 0.1,
    min_sites: int = 2,
    min_rows: int = 2,
    min_samples: int = 3,
) -> list[Finding]:
    """Similarity at the deepest site near 1 (and Dirichlet energy near 0), worse than at the
    first site.

    Args:
        similarity: mean pairwise cosine similarity of sampled positions (dimensionless, 1 =
            identical) at or above which the deepest representation is over-smoothed (Oono &
            Suzuki 2020; Dong et al. 2021 rank collapse).
        energy: normalised Dirichlet energy (1 = spread like orthogonal vectors, 0 = all equal)
            at or below which it is collapsed (Rusch, Bronstein & Mishra 2023). Ignored when the
            run has no energy series.
        depth_rise: similarity must rise at least this much from the first to the deepest site:
            smoothing that gets worse with depth, not similar inputs.
        min_sites: sites with a smoothing measurement needed.
        min_rows: consecutive measurements needed for the onset.
        min_samples: measurements (steps sampled) needed at all: one sample of an untrained
            model says nothing about training.
    """
    tl = timeline(run)
    sim = site_frame(run, "smoothing", tl).dropna(axis=1, how="all").dropna(how="all")
    if sim.shape[1] < min_sites or len(sim) < max(min_samples, 1):
        return []
    en = site_frame(run, "smoothing_energy", tl)
    en = en.reindex(index=sim.index, columns=sim.columns)
    first, deep = sim.columns[0], sim.columns[-1]
    rise = sim[deep] - sim[first]
    low = en[deep] <= energy if en[deep].notna().any() else sim[deep] == sim[deep]
    hot = (sim[deep] >= similarity) & low & (rise >= depth_rise)
    half = hot.iloc[len(hot) // 2 :]
    if half.mean() < 0.5:
        return []
    onset = first_run(hot, min_rows)
    onset = int(onset if onset is not None else half[half].index[0])
    late = sim.iloc[len(sim) // 2 :].median()
    late_en = en.iloc[len(en) // 2 :].median()
    collapse = next((c for c in sim.columns if late[c] >= similarity), deep)
    evidence: dict[str, Any] = {
        "similarity_deep": sig(float(late[deep]), 3),
        "similarity_first": sig(float(late[first]), 3),
        "energy_deep": _num(late_en.get(deep)),
        "energy_first": _num(late_en.get(first)),
        "collapse_site": collapse,
        "collapse_depth": int(list(sim.columns).index(collapse)) + 1,
        "sites": int(sim.shape[1]),
    }
    return [
        Finding(
            code="oversmoothing",
            severity="warning",
            title=f"Representations collapse with depth (similarity {late[deep]:.3f} at {deep})",
            message=(
                f"Mean pairwise cosine similarity rises from {late[first]:.2f} at {first} to "
                f"{late[deep]:.3f} at {deep}; it passes {similarity:g} at {collapse}. The deep "
                "layers see nearly the same vector at every position."
            ),
            step=onset,
            location=collapse,
            phase="forward",
            evidence=evidence,
            fixes=tuple(_fixes(run, list(sim.columns), collapse, similarity)),
            rule="oversmoothing",
            thresholds={"similarity": similarity, "energy": energy, "depth_rise": depth_rise},
        )
    ]


def _num(x: Any) -> float | None:
    return sig(float(x), 3) if x is not None and np.isfinite(x) else None


def _fixes(run: Run, sites: list[str], collapse: str, similarity: float) -> list[Fix]:
    # residual sites name their owning blocks; a model without sites was sampled at its layers
    owners = [s["owner"] for s in site_dicts(run, sites)] or list(sites)
    blocks = sorted(set(owners), key=owners.index)
    deep_owner = (
        site_dicts(run, [collapse])[0]["owner"] if site_dicts(run, [collapse]) else collapse
    )
    cut = blocks.index(deep_owner) if deep_owner in blocks else len(blocks) - 1
    keep = max(1, cut)
    deep_sites = sites[sites.index(collapse) :]
    # a cut to fewer than 2 blocks is no model: then no depth cut is offered
    shallower = (
        [
            fixes.reduce_depth(
                blocks[keep:],
                len(blocks),
                keep,
                f"Similarity passes the threshold at {collapse}: keep the first {keep} blocks.",
            )
        ]
        if 2 <= keep < len(blocks)
        else []
    )
    if run.architecture == "graph":  # message passing averages neighbours: GNN remedies
        remedies = [fixes.initial_residual(deep_sites, alpha=0.1), fixes.pairnorm(deep_sites)]
        if not len(run.sites):  # no skip to re-inject x0 along: a drop-in PairNorm layer first
            remedies.reverse()
        return [*remedies, *shallower]
    # attention / convolution / MLP stacks: rank collapse, countered by a dominant skip
    records = site_dicts(run, deep_sites)
    if not records:
        return shallower
    return [
        fixes.residual_scaling(
            records,
            len(blocks),
            reason=(
                f"Token/position similarity reaches {similarity:g} at {collapse}: the branches "
                "overwrite the stream (rank collapse; Dong et al. 2021). Scaled branches keep "
                "the skip, and with it the differences between positions, dominant."
            ),
        ),
        *shallower,
    ]
