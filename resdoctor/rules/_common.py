"""Helpers the rules share: ordered views of the run and the fixes measured from it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from resdoctor import fixes
from resdoctor.findings import Fix
from resdoctor.fixes import NORM_TYPES
from resdoctor.fixes.optim import TARGET_UPDATE_RATIO, lr_factor_from_updates
from resdoctor.fixes.snippets import sig
from resdoctor.rules._timeline import Timeline
from resdoctor.runfile.run import Run


def grad_total(run: Run) -> pd.Series:
    """Global gradient norm by step: the logged ``grad_norm_total`` or the per-module norms."""
    g = run.scalar("grad_norm_total")
    if g.empty and run.has("grad_norm"):
        df = run.series("grad_norm")
        g = np.sqrt((df**2).sum(axis=1, min_count=1))
    return g.astype(float)


def site_frame(run: Run, signal: str, tl: Timeline, start: int = 0) -> pd.DataFrame:
    """Healthy rows of a per-site signal, columns in forward (depth) order."""
    df = tl.healthy(run.series(signal), start)
    order = [n for n in run.sites.sort_values("index")["name"] if n in df.columns]
    return df[order] if order else df


def site_dicts(run: Run, names: list[str]) -> list[dict[str, Any]]:
    by_name = {s["name"]: s for s in run.site_records}
    return [by_name[n] for n in names if n in by_name]


def first_run(mask: pd.Series, length: int) -> Any:
    """Index of the first row starting ``length`` consecutive True values (or True to the end)."""
    values = mask.to_numpy(dtype=bool)
    count = 0
    for i, v in enumerate(values):
        count = count + 1 if v else 0
        if count >= length or (v and i == len(values) - 1):
            return mask.index[i - count + 1]
    return None


def module_types(run: Run) -> dict[str, str]:
    return dict(zip(run.modules["name"], run.modules["type"], strict=False))


def post_norm_sites(run: Run) -> list[str]:
    """Sites whose sum goes straight into a normalisation that the stream does not bypass
    (post-LN / post-BN): the next site's skip is not that sum."""
    types = module_types(run)
    sites = sorted(run.site_records, key=lambda s: s["index"])
    out = []
    for i, site in enumerate(sites):
        res: Mapping[str, Any] = site.get("result") or {}
        if res.get("where") != "input" or types.get(res.get("module", "")) not in NORM_TYPES:
            continue
        nxt = sites[i + 1].get("skip") if i + 1 < len(sites) else None
        if nxt != res:
            out.append(site["name"])
    return out


def has_norm(run: Run, owner: str) -> bool:
    """True when the module ``owner`` contains a normalisation layer."""
    prefix = owner + "." if owner else ""
    return any(
        t in NORM_TYPES for n, t in module_types(run).items() if n.startswith(prefix) or n == owner
    )


def clip_fix(run: Run, tl: Timeline, onset: int | None) -> Fix | None:
    g = tl.healthy_series(grad_total(run))
    if onset is not None:
        g = g[g.index < onset]
    if g.empty:
        return None
    return fixes.clip_gradients(g.to_numpy(), int(g.index[0]), int(g.index[-1]))


def median_update_ratio(run: Run, tl: Timeline, before: int | None) -> float | None:
    df = tl.healthy(run.series("update_ratio"))
    if before is not None:
        df = df[df.index < before]
    values = df.median(axis=0).dropna()
    values = values[values > 0]
    return float(values.median()) if not values.empty else None


def lr_fix(run: Run, tl: Timeline, onset: int | None) -> Fix:
    """Lower-LR fix: bring the update ratio to ~1e-3 (Karpathy), else use the LR at the best
    loss before the onset, else a conventional 10x cut."""
    lr = run.scalar("lr")
    lr_before = lr[lr.index < onset] if onset is not None and not lr.empty else lr
    current = float(lr_before.iloc[-1]) if not lr_before.empty else None
    upd = median_update_ratio(run, tl, onset)
    if upd is not None and upd > TARGET_UPDATE_RATIO:
        factor = lr_factor_from_updates(upd)
        basis = (
            f"The median update ratio ||dW||/||W|| before step {onset} was {upd:.2g} per "
            f"step; ~{TARGET_UPDATE_RATIO:g} is the usual healthy level (Karpathy, CS231n), "
            f"so scale the LR by {TARGET_UPDATE_RATIO:g}/{upd:.2g}."
        )
        return fixes.lower_lr(factor, basis, current, upd)
    if current and not lr_before.empty and lr_before.nunique() > 1:
        loss = tl.healthy_series(run.scalar("loss"))
        loss = loss[loss.index < onset] if onset is not None else loss
        if not loss.empty:
            best_step = int(loss.idxmin())
            lr_best = (
                float(lr_before[lr_before.index <= best_step].iloc[-1])
                if (lr_before.index <= best_step).any()
                else current
            )
            if 0 < lr_best < current:
                basis = (
                    f"The loss was best at step {best_step} with lr {lr_best:.3g}; it "
                    f"diverged after the LR reached {current:.3g}: cap the LR at "
                    f"{sig(lr_best / 2):g}."
                )
                return fixes.lower_lr(lr_best / 2 / current, basis, current, upd)
    basis = (
        "No update ratio above the 1e-3 target was recorded before the onset "
        "(watch with an optimizer to measure it): a conventional 10x cut."
    )
    return fixes.lower_lr(0.1, basis, current, upd)


def warmup_fix(run: Run, onset: int | None, early_fraction: float = 0.1) -> Fix | None:
    """A warm-up fix when the trouble began in the first ``early_fraction`` of the run."""
    if onset is None or onset > max(early_fraction * run.steps, 10):
        return None
    lr = run.scalar("lr")
    return fixes.lr_warmup(onset, float(lr.iloc[0]) if not lr.empty else None)


def compact(values: dict[str, float], limit: int = 8, digits: int = 3) -> dict[str, float]:
    """The ``limit`` largest entries, rounded, for evidence."""
    items = sorted(values.items(), key=lambda kv: -abs(kv[1]))[:limit]
    return {k: sig(float(v), digits) for k, v in items}
