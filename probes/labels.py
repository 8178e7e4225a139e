"""Measured labels: which conditions a ``Measurement`` shows, computed without resdoctor.

Each condition is ``present``, ``absent`` or ``borderline`` (between the two thresholds). A probe's
declared truth must agree: expected codes are present, forbidden codes are absent, and a code
that is present or borderline must be expected or allowed. Thresholds are keyword constants
below, each with its reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from probes.measure import Measurement

Status = Literal["present", "absent", "borderline"]

EXPLODE_GROWTH = (10.0, 100.0)  # grad-norm growth over the run, or first/last depth ratio
VANISH_RATIO = (1e-1, 1e-2)  # dL/dh at the first vs the last site ("orders of magnitude")
CONVERGED = 0.1  # final loss below this fraction of the initial loss: converged, not vanishing
DOMINANCE = (2.5, 5.0)  # median ||F(x)|| / ||x|| at the worst site ("much greater than 1")
DEAD = (0.05, 0.01)  # ratio below 0.01 for 90% of steps after warm-up; absent if all >= 0.05
WAKE = 3.0  # ... and not growing by x3 over those steps (a zero-init branch waking is not dead)
GROWTH = (4.0, 10.0)  # stream RMS last/first site; present also needs x1.2 per site (log-linear
# fit) sustained over depth: at least half of the consecutive sites grow by more than x1.1 (a
# single jump followed by a flat stream is borderline: it grew, but not exponentially)
SMOOTH = (0.8, 0.9)  # cosine similarity of positions at the last site
DIVERGE = (0.25, 0.5)  # fraction of the loss progress lost after the best (smoothed) loss


@dataclass(frozen=True)
class Label:
    """``step`` / ``location``: where a present condition was first measured, for the codes
    whose finding must name them (the evaluator compares the finding's step and location)."""

    code: str
    status: Status
    value: float
    note: str
    step: int | None = None
    location: str | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "code": self.code,
            "status": self.status,
            "value": self.value,
            "note": self.note,
        }
        if self.step is not None:
            out.update(step=self.step, location=self.location)
        return out


def _status(value: float, low: float, high: float, up: bool = True) -> Status:
    """``up``: present at or above ``high``, absent below ``low``; reversed when not ``up``."""
    if math.isnan(value):
        return "absent"
    if up:
        return "present" if value >= high else "absent" if value < low else "borderline"
    return "present" if value <= high else "absent" if value > low else "borderline"


def _before_onset(m: Measurement, name: str) -> np.ndarray:
    """Rows before the first non-finite step, without the steps an AMP GradScaler skipped."""
    arr = m.array(name)
    keep = np.ones(len(arr), bool)
    keep[[s for s in m.skipped if s < len(arr)]] = False
    if m.onset is not None:
        keep[m.onset.step :] = False
    return arr[keep]


def nonfinite(m: Measurement) -> Label:
    o = m.onset
    note = f"step {o.step}, {o.module}, {o.phase}" if o else "all finite"
    return Label("nonfinite", "present" if o else "absent", float(o.step) if o else math.nan, note)


def _depth_ratio(m: Measurement) -> float:
    """Median over steps of RMS(dL/dh) at the first site / at the last site."""
    g = _before_onset(m, "act_grad")
    if g.ndim < 2 or g.shape[1] < 2 or len(g) == 0:
        return math.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        r = g[:, 0] / g[:, -1]
    r = r[np.isfinite(r)]
    return float(np.median(r)) if len(r) else math.nan


def _surge(x: np.ndarray) -> float:
    """Largest value relative to the median of the values before it (from the 4th step on)."""
    if len(x) < 4:
        return math.nan
    prior = np.array([np.median(x[:t]) for t in range(3, len(x))])
    return float(np.max(x[3:] / np.maximum(prior, 1e-30)))


def exploding(m: Measurement) -> Label:
    g = _before_onset(m, "grad")
    total = np.sqrt(np.sum(g**2, 1)) if len(g) else np.array([])
    finite = total[np.isfinite(total)]
    growth = _surge(finite)
    depth = _depth_ratio(m)
    value = max(growth if not math.isnan(growth) else 0.0, depth if not math.isnan(depth) else 0.0)
    if len(total) and not np.all(np.isfinite(total)):
        value = math.inf
    status = _status(value, *EXPLODE_GROWTH)
    return Label(
        "exploding-gradients",
        status,
        value,
        f"grad-norm growth x{growth:.3g}, first/last site dL/dh x{depth:.3g}",
    )


def vanishing(m: Measurement) -> Label:
    ratio = _depth_ratio(m)
    loss = m.array("loss")
    loss = loss[np.isfinite(loss)]
    converged = len(loss) > 5 and np.mean(loss[-5:]) < CONVERGED * np.median(loss[:3])
    status = "absent" if converged else _status(ratio, *VANISH_RATIO, up=False)
    return Label(
        "vanishing-gradients",
        status,
        ratio,
        f"first/last site dL/dh {ratio:.3g}" + (" (loss converged)" if converged else ""),
    )


def _after_warmup(m: Measurement, name: str) -> np.ndarray:
    arr = _before_onset(m, name)
    return arr[max(1, len(arr) // 10) :]


def dominance(m: Measurement) -> Label:
    r = _after_warmup(m, "ratio")
    worst = float(np.nanmax(np.nanmedian(r, 0))) if r.size and not np.isnan(r).all() else math.nan
    return Label(
        "branch-dominance",
        _status(worst, *DOMINANCE),
        worst,
        f"worst site median ||F(x)||/||x|| = {worst:.3g}",
    )


def dead(m: Measurement) -> Label:
    r = _after_warmup(m, "ratio")
    if not r.size or np.isnan(r).all():
        return Label("dead-branch", "absent", math.nan, "no residual site")
    dead_share = np.nanmean(r < DEAD[1], 0)  # [sites]
    lowest = float(np.nanmin(np.nanmedian(r, 0)))
    low = dead_share >= 0.9
    waking = np.array([_growth(r[:, j]) >= WAKE for j in range(r.shape[1])])
    if (low & ~waking).any():
        status: Status = "present"
    elif low.any():  # near zero but growing steadily: a zero-init / layer-scaled branch waking
        status = "borderline"
    else:
        status = "absent" if lowest >= DEAD[0] else "borderline"
    return Label(
        "dead-branch",
        status,
        lowest,
        f"{int((low & ~waking).sum())} dead sites ({int((low & waking).sum())} low but waking), "
        f"lowest median ratio {lowest:.3g}",
    )


def _growth(ratio: np.ndarray) -> float:
    """Factor by which a site's ratio grows over the window: least-squares fit of log ratio."""
    ok = np.isfinite(ratio) & (ratio > 0)
    if ok.sum() < 3:
        return 1.0
    x = np.flatnonzero(ok).astype(float)
    slope = np.polyfit(x, np.log10(ratio[ok]), 1)[0]
    return float(10 ** (slope * (x[-1] - x[0])))


def growth(m: Measurement) -> Label:
    s = _before_onset(m, "stream")
    s = s[:, ~np.isnan(s).all(0)] if s.size else s
    if s.ndim < 2 or s.shape[1] < 3:
        return Label("activation-growth", "absent", math.nan, "fewer than 3 sites")
    prof = np.maximum(np.nanmedian(s, 0), 1e-30)
    total = float(prof[-1] / prof[0])
    rate = float(np.exp(np.polyfit(np.arange(len(prof)), np.log(prof), 1)[0]))
    sustained = float(np.mean(prof[1:] / prof[:-1] > 1.1))
    status = _status(total, *GROWTH)
    if status == "present" and (rate < 1.2 or sustained < 0.5):
        status = "borderline"
    return Label(
        "activation-growth",
        status,
        total,
        f"stream RMS last/first x{total:.3g}, x{rate:.3g} per site, "
        f"{sustained:.0%} of sites grow > x1.1",
    )


def smoothing(m: Measurement) -> Label:
    sim = _before_onset(m, "similarity")
    sim = sim[~np.isnan(sim).all(1)] if sim.size else sim
    if not sim.size:
        return Label("oversmoothing", "absent", math.nan, "not measured")
    prof = np.nanmedian(sim, 0)
    return Label(
        "oversmoothing",
        _status(float(prof[-1]), *SMOOTH),
        float(prof[-1]),
        f"similarity first {prof[0]:.3f} -> last {prof[-1]:.3f}",
    )


def divergence(m: Measurement) -> Label:
    loss = m.array("loss")
    stop = m.onset.step if m.onset else len(loss)
    finite = loss[:stop]
    if not np.all(np.isfinite(finite)):
        return Label("loss-divergence", "present", math.inf, "loss overflowed to inf")
    if len(finite) < 6:
        return Label("loss-divergence", "absent", math.nan, "too short")
    w = max(5, len(finite) // 8)  # mini-batch noise must not read as divergence
    sm = np.convolve(finite, np.ones(w) / w, mode="valid")
    best, start, end = float(sm.min()), float(sm[0]), float(sm[-1])
    if start - best >= 0.05 * abs(start):
        lost = min((end - best) / (start - best), 1e6)
    else:  # no real progress to lose: diverging means rising above the start (10% -> 0.5)
        lost = max(0.0, 5 * (end - start) / max(abs(start), 1e-30))
    return Label(
        "loss-divergence",
        _status(lost, *DIVERGE),
        lost,
        f"smoothed loss {start:.3g} -> best {best:.3g} -> end {end:.3g}",
    )


# a step over the median of the 20 before it (x2 borderline, x3 present) and above it + 6
# robust sigma (OLMo-core's 6 sigma), back under 1.5x that median within 10 steps, after the
# first 10% of the run
SPIKE = (2.0, 3.0)


def _spikes(x: np.ndarray, label: str, code: str) -> Label:
    start = max(10, len(x) // 10)
    worst, count = 1.0, 0
    for t in range(start, len(x)):
        past = x[max(0, t - 20) : t]
        past = past[np.isfinite(past)]
        if len(past) < 5 or not np.isfinite(x[t]):
            continue
        base = float(np.median(past))
        # OLMo-core's bar, robust: above the recent median + 6 sigma (1.4826 MAD) of the 20
        # steps before, so one spike does not hide the next
        sigma = 1.4826 * float(np.median(np.abs(past - base)))
        if base <= 0 or x[t] <= base + 6 * sigma:
            continue
        ratio = float(x[t] / base)
        back = x[t + 1 : t + 11]
        if ratio >= SPIKE[0] and len(back) and bool((back < 1.5 * base).any()):
            worst, count = max(worst, ratio), count + (ratio >= SPIKE[1])
    return Label(code, _status(worst, *SPIKE), worst, f"{count} {label} spikes >= x{SPIKE[1]:g}")


def loss_spike(m: Measurement) -> Label:
    loss = m.array("loss")
    stop = m.onset.step if m.onset else len(loss)
    return _spikes(loss[:stop], "loss", "loss-spike")


def grad_spike(m: Measurement) -> Label:
    g = m.array("grad")
    stop = m.onset.step if m.onset else len(g)
    total = np.sqrt(np.nansum(g[:stop] ** 2, axis=1)) if g.size else np.zeros(0)
    return _spikes(total, "gradient-norm", "grad-spike")


STALL = (0.05, 0.02)  # the loss fell less than this share of its start (5% borderline, 2%)


def stalled(m: Measurement) -> Label:
    loss = m.array("loss")
    stop = m.onset.step if m.onset else len(loss)
    loss = loss[:stop]
    if len(loss) < 30 or not np.all(np.isfinite(loss)):
        return Label("stalled-training", "absent", math.nan, "too short or not finite")
    k = 8  # the probes' data sets cycle through 8 batches: compare whole cycles
    means = np.convolve(loss, np.ones(k) / k, mode="valid")
    start, best = float(means[0]), float(means.min())
    drop = (start - best) / abs(start) if start else 0.0  # the progress ever made
    g = m.array("grad")
    total = np.sqrt(np.nansum(g[:stop] ** 2, axis=1)) if g.size else np.ones(1)
    moving = float(np.median(total)) > 1e-7 and float(total[-k:].mean() / total[:k].mean()) < 100
    status = _status(drop, *STALL, up=False) if moving else "absent"
    return Label(
        "stalled-training", status, drop, f"loss {start:.4g} -> best {best:.4g} ({drop:.1%})"
    )


DEAD_UNITS = (0.5, 0.7)  # the largest share of a ReLU layer's units dead on the whole batch,
# median over the steps after the first 10% (DeepDiagnosis / AUTOTRAINER: 0.7)


def _median_share(
    m: Measurement, name: str, code: str, band: tuple[float, float], none: str, what: str
) -> Label:
    """The median, over the steps after the first 10% and before the onset, of a per-step
    share measured at activation modules (absent when no such module ran)."""
    x = m.array(name)
    stop = m.onset.step if m.onset else len(x)
    x = x[len(x) // 10 : stop]
    x = x[np.isfinite(x)]
    if not x.size:
        return Label(code, "absent", math.nan, none)
    share = float(np.median(x))
    return Label(code, _status(share, *band), share, f"median {share:.0%} {what}")


def dead_units(m: Measurement) -> Label:
    return _median_share(m, "dead", "dead-units", DEAD_UNITS, "no ReLU module", "dead")


SATURATED = (0.3, 0.5)  # the largest share of a sigmoid / tanh module's inputs beyond +-5,
# median over the steps after the first 10% (DeepDiagnosis' saturated activation)


def saturated(m: Measurement) -> Label:
    return _median_share(
        m, "saturated", "saturation", SATURATED, "no sigmoid / tanh module", "saturated"
    )


FLOAT16_MAX = 65504.0
HALF_HEADROOM = (1 / 16, 1 / 4)  # a float16 output's largest finite |value| as a share of
# 65504, before the first non-finite value: within 4x of the limit is an overflow in the making
# (HF DebugUnderflowOverflow prints the abs-max trail of the frames before the first Inf)


def precision_overflow(m: Measurement) -> Label:
    """The first step (before any NaN/Inf) at which a module's float16 output came within
    a quarter of float16's largest value, and that module."""
    peak = m.array("half_peak")
    stop = m.onset.step if m.onset else len(peak)
    peak = peak[:stop]
    if not np.isfinite(peak).any():
        return Label("precision-overflow", "absent", math.nan, "no float16 output")
    share = peak / FLOAT16_MAX
    status = _status(float(np.nanmax(share)), *HALF_HEADROOM)
    if status != "present":
        return Label("precision-overflow", status, float(np.nanmax(share)), "headroom left")
    step = int(np.argmax(share >= HALF_HEADROOM[1]))
    where = m.half_module[step]
    note = f"step {step}, {where}: |x| {peak[step]:.0f} of 65504"
    return Label("precision-overflow", status, float(share[step]), note, step, where)


RULES = (
    nonfinite,
    exploding,
    vanishing,
    dominance,
    dead,
    growth,
    smoothing,
    divergence,
    loss_spike,
    grad_spike,
    stalled,
    dead_units,
    saturated,
    precision_overflow,
)


def labels(m: Measurement) -> dict[str, Label]:
    """Every condition's measured label, by finding code."""
    return {label.code: label for label in (rule(m) for rule in RULES)}


def present(m: Measurement) -> set[str]:
    return {code for code, label in labels(m).items() if label.status == "present"}


def trap_problems(traps: frozenset[str], m: Measurement) -> list[str]:
    """Check that a healthy control really is the trap it claims to be.

    ``amp-skips``: an AMP GradScaler skipped at least one overflow step. ``zero-init``: every
    branch starts at exactly 0 and wakes up (median ratio >= 0.05 after warm-up). ``converged``:
    the final loss is below 1e-3 of the initial one and gradients shrank 100x.
    """
    problems = []
    if "amp-skips" in traps and not m.skipped:
        problems.append("amp-skips: no step was skipped by the GradScaler")
    if "zero-init" in traps:
        r = m.array("ratio")
        if not (
            np.nanmax(r[0]) < 1e-6
            and np.nanmin(np.nanmedian(_after_warmup(m, "ratio"), 0)) >= DEAD[0]
        ):
            problems.append("zero-init: branches do not start at 0 and wake up")
    if "converged" in traps:
        loss, g = m.array("loss"), m.array("grad")
        total = np.sqrt(np.sum(g**2, 1))
        if not (np.mean(loss[-5:]) < 1e-3 * loss[0] and np.mean(total[-5:]) < 1e-2 * total[0]):
            problems.append("converged: the loss or the gradients did not shrink enough")
    return problems
