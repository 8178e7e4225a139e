"""vanishing-gradients: early layers get gradients orders of magnitude below late layers while
the loss has not converged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from resdoctor import fixes
from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import sig
from resdoctor.rules._common import first_run, post_norm_sites, site_dicts
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import timeline
from resdoctor.runfile.run import Run


@rule("vanishing-gradients", requires=("grad_norm", "scalar:loss"))
def vanishing_gradients(
    run: Run,
    *,
    ratio: float = 1e-2,
    critical_ratio: float = 1e-5,
    converged_fraction: float = 0.05,
    min_modules: int = 4,
    min_rows: int = 3,
    quiet_branch: float = 0.05,
) -> list[Finding]:
    """Per-parameter gradient RMS of the first quarter of layers (forward order) against the
    last quarter.

    Args:
        ratio: early/late gradient RMS ratio (dimensionless) below which gradients vanish:
            two orders of magnitude (Hochreiter 1991; Glorot & Bengio 2010); healthy residual
            nets measure 0.4-5. Embedding tables are left out: their gradients are sparse.
        critical_ratio: ratio below which the early layers effectively do not train.
        converged_fraction: the loss counts as converged, and tiny gradients as normal, when its
            final level is at most this fraction of its initial level.
        min_modules: parameterised modules needed to compare early and late layers.
        min_rows: consecutive recorded steps below ``ratio`` for the onset.
        quiet_branch: modules inside residual branches whose median branch ratio is below
            this are left out: a zero-initialised or layer-scaled branch (gamma = 1e-6) scales
            its own layers' gradients down by design, the stream's gradient does not vanish.
    """
    tl = timeline(run)
    rms, early, late = _layer_rms(run, min_modules, _scaled_blocks(run, quiet_branch))
    rms = tl.healthy(rms)
    if rms.empty:
        return []
    per_step = (rms[early].median(axis=1) / rms[late].median(axis=1)).replace(np.inf, np.nan)
    per_step = per_step.dropna()
    if per_step.empty:
        return []
    value = float(per_step.median())
    loss = tl.healthy_series(run.scalar("loss"))
    k = max(1, len(loss) // 10)
    start = float(loss.iloc[:k].median()) if not loss.empty else float("nan")
    end = float(loss.iloc[-k:].median()) if not loss.empty else float("nan")
    converged = bool(np.isfinite(start) and end <= converged_fraction * start)
    if value >= ratio or converged:
        return []
    onset = first_run(per_step < ratio, min_rows)
    onset = int(onset if onset is not None else per_step.index[0])
    evidence: dict[str, Any] = {
        "ratio": sig(value, 3),
        "early_rms": sig(float(rms[early].median(axis=1).median()), 3),
        "late_rms": sig(float(rms[late].median(axis=1).median()), 3),
        "early_modules": early[:6],
        "late_modules": late[-6:],
        "loss_start": sig(start, 4),
        "loss_end": sig(end, 4),
    }
    orders = -np.log10(value)
    return [
        Finding(
            code="vanishing-gradients",
            severity="critical" if value < critical_ratio else "warning",
            title=f"Early layers get {orders:.1f} orders of magnitude less gradient",
            message=(
                f"Per-parameter gradient RMS in the first layers ({', '.join(early[:3])}) is "
                f"{value:.2g}x that of the last layers while the loss only went from "
                f"{start:.3g} to {end:.3g}: the early layers barely train."
            ),
            step=onset,
            location=early[0],
            phase="backward",
            evidence=evidence,
            fixes=tuple(_fixes(run, early)),
            rule="vanishing-gradients",
            thresholds={
                "ratio": ratio,
                "critical_ratio": critical_ratio,
                "converged_fraction": converged_fraction,
            },
        )
    ]


def _scaled_blocks(run: Run, quiet: float) -> list[str]:
    """Owners all of whose residual branches stay below ``quiet`` x the skip (median)."""
    if not len(run.sites) or not run.has("branch_ratio"):
        return []
    ratio = run.series("branch_ratio").median()
    owners: dict[str, bool] = {}
    for site in run.site_records:
        low = bool(ratio.get(site["name"], np.nan) < quiet)
        owners[site["owner"]] = owners.get(site["owner"], True) and low
    return [o for o, low in owners.items() if low and o]


def _layer_rms(
    run: Run, min_modules: int, scaled: Sequence[str] = ()
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Gradient RMS per parameter (step x module, forward order) and the early / late quarters;
    modules inside the ``scaled`` blocks are left out."""
    mods = run.modules[
        (run.modules["params"] > 0)
        & (run.modules["order"] >= 0)
        & ~run.modules["type"].str.contains("Embedding")
    ]
    mods = mods.sort_values("order")
    gn = run.series("grad_norm")
    inside = tuple(o + "." for o in scaled)
    names = [n for n in mods["name"] if n in gn.columns and not n.startswith(inside)]
    if len(names) < min_modules:
        return pd.DataFrame(), [], []
    size = mods.set_index("name").loc[names, "params"].to_numpy(dtype=float)
    rms = gn[names] / np.sqrt(size)
    q = max(1, len(names) // 4)
    return rms, names[:q], names[-q:]


def _fixes(run: Run, early: list[str]) -> list[Fix]:
    sites = run.sites.sort_values("index")
    post = post_norm_sites(run)
    out: list[Fix] = []
    if post:
        out.append(fixes.pre_layernorm(post, _dim(run, post)))
    if sites.empty:
        out.append(fixes.add_residual(early))
    else:
        out.append(
            fixes.residual_scaling(
                site_dicts(run, list(sites["name"])),
                len(sites),
                post_norm=bool(post),
                reason="Balance the branches against the skip path.",
            )
        )
    out.append(fixes.add_normalization_layers(early, _types(run, early)))
    return out


def _dim(run: Run, names: list[str]) -> int | None:
    shapes = [s.get("shape") for s in site_dicts(run, names)]
    return int(shapes[0][-1]) if shapes and shapes[0] else None


def _types(run: Run, names: list[str]) -> list[str]:
    types = dict(zip(run.modules["name"], run.modules["type"], strict=False))
    return [types.get(n, "Module") for n in names]
