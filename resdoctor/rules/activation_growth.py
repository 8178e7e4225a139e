"""activation-growth: the residual stream grows exponentially with depth (not like sqrt)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from resdoctor import fixes
from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import sig
from resdoctor.rules._common import has_norm, post_norm_sites, site_dicts, site_frame
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import timeline
from resdoctor.runfile.run import Run


@rule("activation-growth", requires=("stream_norm",))
def activation_growth(
    run: Run,
    *,
    per_block: float = 1.15,
    total: float = 10.0,
    min_sites: int = 4,
    min_fraction: float = 0.5,
    critical_total: float = 1e4,
) -> list[Finding]:
    """Fit log(stream RMS) against site depth: exponential growth fires, power-law growth
    (a pre-activation ResNet's ~sqrt(depth)) does not.

    Args:
        per_block: stream RMS growth factor per residual site (from the log-linear fit) at or
            above which growth is exponential. An unnormalised ResNet doubles its variance per
            block, x1.41 in RMS (De & Smith 2020; Hanin & Rolnick 2018); sqrt(depth) growth
            fits a power law better, and its log-linear factor is ~x1.1 over 12 sites.
        total: growth over all sites (last / first, from the fit) needed as well: an order of
            magnitude (sqrt(depth) needs 100 sites to get there).
        min_sites: residual sites needed for a fit.
        min_fraction: share of recorded steps that must show exponential growth (or the last
            step before a failure).
        critical_total: total growth at which the finding is critical.
    """
    tl = timeline(run)
    sn = site_frame(run, "stream_norm", tl, start=1)
    sn = sn.where(sn > 0)
    if sn.shape[1] < min_sites or sn.empty:
        return []
    fits = _fits(sn).dropna()
    if fits.empty:
        return []
    hot = (fits["factor"] >= per_block) & (fits["total"] >= total) & fits["exponential"]
    failed_hot = tl.failure_step is not None and bool(hot.iloc[-1])
    if hot.mean() < min_fraction and not failed_hot:
        return []
    onset = int(hot.index[hot.to_numpy()][0])
    at = fits.loc[onset]
    worst = fits.loc[hot[hot].index, "total"].max()
    row = sn.loc[onset].dropna()
    jumps = (row / row.shift(1)).iloc[1:]
    location = str(jumps.idxmax()) if not jumps.empty else str(row.index[0])
    evidence: dict[str, Any] = {
        "per_block_growth": sig(float(at["factor"]), 3),
        "total_growth": sig(float(at["total"]), 3),
        "max_total_growth": sig(float(worst), 3),
        "r2_exponential": sig(float(at["r2_exp"]), 3),
        "r2_power": sig(float(at["r2_pow"]), 3),
        "stream_first": sig(float(row.iloc[0]), 3),
        "stream_last": sig(float(row.iloc[-1]), 3),
        "sites": int(len(row)),
        "fraction_of_steps": sig(float(hot.mean()), 3),
        "largest_jump_site": location,
    }
    severe = worst >= critical_total  # its own threshold, not the run's fate
    return [
        Finding(
            code="activation-growth",
            severity="critical" if severe else "warning",
            title=(  # the worst total, which sets the severity, is in the title too
                f"Residual stream grows x{at['factor']:.3g} per block "
                f"({at['total']:.3g}x over depth"
                + (f", up to {worst:.3g}x)" if worst > 1.5 * at["total"] else ")")
            ),
            message=(
                f"At step {onset} the stream RMS rises from {row.iloc[0]:.3g} at "
                f"{row.index[0]} to {row.iloc[-1]:.3g} at {row.index[-1]}: exponential in "
                f"depth (R^2 {at['r2_exp']:.2f} vs {at['r2_pow']:.2f} for a power law), "
                f"largest jump at {location}."
            ),
            step=onset,
            location=location,
            phase="forward",
            evidence=evidence,
            fixes=tuple(_fixes(run, float(fits.loc[hot, "factor"].median()))),
            rule="activation-growth",
            thresholds={
                "per_block": per_block,
                "total": total,
                "min_fraction": min_fraction,
                "critical_total": critical_total,
            },
        )
    ]


def _fits(sn: pd.DataFrame) -> pd.DataFrame:
    """Per step: exponential (log y ~ depth) vs power-law (log y ~ log depth) least squares."""
    y = np.log(sn.to_numpy(dtype=float))  # [R, S]
    mask = np.isfinite(y)
    d = np.arange(1, y.shape[1] + 1, dtype=float)
    slope, r2_exp = _linfit(np.broadcast_to(d, y.shape), y, mask)
    _, r2_pow = _linfit(np.broadcast_to(np.log(d), y.shape), y, mask)
    span = np.where(mask, d, np.nan)
    with np.errstate(invalid="ignore", over="ignore"):
        with warnings.catch_warnings():  # all-NaN rows (a run that ended in NaN) stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            total = np.exp(slope * (np.nanmax(span, axis=1) - np.nanmin(span, axis=1)))
    out = pd.DataFrame(
        {
            "factor": np.exp(slope),
            "total": total,
            "r2_exp": r2_exp,
            "r2_pow": r2_pow,
            "exponential": r2_exp >= r2_pow,
        },
        index=sn.index,
    )
    return out[mask.sum(axis=1) >= 3]


def _linfit(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise slope and R^2 of y ~ x over the masked cells."""
    w = mask.astype(float)
    y0 = np.where(mask, y, 0.0)
    n = np.maximum(w.sum(axis=1, keepdims=True), 1.0)
    xm, ym = (w * x).sum(1, keepdims=True) / n, (w * y0).sum(1, keepdims=True) / n
    dx, dy = w * (x - xm), w * (y0 - ym)
    sxx = (dx * dx).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (dx * dy).sum(1) / sxx
        resid = dy - slope[:, None] * dx
        ss = (dy * dy).sum(1)
        r2 = np.where(ss > 0, 1.0 - (resid * resid).sum(1) / np.where(ss > 0, ss, 1.0), 0.0)
    return slope, r2


def _fixes(run: Run, growth: float) -> list[Fix]:
    names = list(run.sites.sort_values("index")["name"])
    sites = site_dicts(run, names)
    reason = "The stream multiplies at every block."
    out = [
        fixes.residual_scaling(
            sites, len(names), post_norm=bool(post_norm_sites(run)), reason=reason, growth=growth
        )
    ]
    norm = fixes.add_normalization(sites, reason=reason)
    if norm.params["branches"] and not any(has_norm(run, s["owner"]) for s in sites):
        out.append(norm)
    return out
