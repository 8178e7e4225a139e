"""What happened when: the run's failure point and the healthy steps before it, shared by the
rules, and the ordering pass that turns findings into a story with lead times."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from resdoctor.findings import Finding
from resdoctor.runfile.run import Run

_CACHE: weakref.WeakKeyDictionary[Run, Timeline] = weakref.WeakKeyDictionary()
FAILURE_CODES = ("nonfinite", "loss-divergence")


@dataclass(frozen=True)
class Timeline:
    """The first failure of a run and its healthy steps.

    Attributes:
        failure_step: first step with a non-finite value outside an AMP-skipped step (an exact
            onset event, else the first non-finite logged loss or gradient norm); None if none.
        failure: that onset event (kind, step, module, phase, detail) when there is one.
        skipped: steps an AMP GradScaler skipped.
    """

    steps: int
    failure_step: int | None
    failure: dict[str, Any] | None
    skipped: frozenset[int]

    def healthy(self, df: pd.DataFrame, start: int = 0) -> pd.DataFrame:
        """Rows of ``df`` (indexed by step) from ``start`` up to the failure, skipped steps
        dropped, non-finite cells set to NaN."""
        if df.empty:
            return df
        keep = df.index >= start
        if self.failure_step is not None:
            keep &= df.index < self.failure_step
        if self.skipped:
            keep &= ~np.isin(df.index, list(self.skipped))
        out = df[keep]
        return out.where(np.isfinite(out))

    def healthy_series(self, s: pd.Series, start: int = 0) -> pd.Series:
        return self.healthy(s.to_frame(), start).iloc[:, 0].dropna()


def timeline(run: Run) -> Timeline:
    """The run's ``Timeline`` (computed once per ``Run`` object)."""
    cached = _CACHE.get(run)
    if cached is None:
        cached = _CACHE[run] = _build(run)
    return cached


def _build(run: Run) -> Timeline:
    skipped = frozenset(int(s) for s in run.skipped_steps)
    failure = None
    ev = run.nonfinite
    if not ev.empty:
        # a GradScaler skip excuses non-finite *gradients* (the loss scale overflowed them);
        # a NaN/Inf made in the forward pass, the loss or the inputs is a fault even when the
        # scaler then skipped the step: no loss scale can make an Inf activation finite
        real = ev[
            [
                not bool((d or {}).get("amp_skipped")) or phase in ("forward", "input")
                for d, phase in zip(ev["detail"], ev["phase"], strict=True)
            ]
        ]
        if not real.empty:
            failure = real.iloc[0].to_dict()
    step = int(failure["step"]) if failure is not None else _first_bad_scalar(run, skipped)
    return Timeline(run.steps, step, failure, skipped)


def _first_bad_scalar(run: Run, skipped: frozenset[int]) -> int | None:
    """First non-skipped step whose logged loss or gradient norm was measured non-finite
    (pandas views show a measured NaN and a missing value alike, so read the counts)."""
    cols = [c for c in run.columns("scalars") if c in ("loss", "grad_norm_total")]
    if not cols:
        return None
    mean = run.series("scalars")[cols]
    measured = run.measured("scalars")[cols].to_numpy()
    bad = np.any(measured & ~np.isfinite(mean.to_numpy()), axis=1)
    steps = [int(x) for x in mean.index[bad] if int(x) not in skipped]
    return steps[0] if steps else None


def _step(f: Finding) -> int:
    return f.step if f.step is not None else -1


def annotate(findings: list[Finding], tl: Timeline) -> tuple[list[Finding], list[str]]:
    """Add lead times: each earlier finding gets ``lead_steps`` to the first failure, the failure
    gets ``first_warning`` and the ordered ``sequence``. Returns the findings and a note."""
    timed = sorted((f for f in findings if f.step is not None), key=_step)
    failures = [f for f in timed if f.code in FAILURE_CODES and f.severity == "critical"]
    if not failures:
        return findings, []
    # the first NaN is the failure when there is one; else the loss divergence
    fail = min(failures, key=lambda f: (f.code != "nonfinite", _step(f)))
    at = _step(fail)
    before = [f for f in timed if _step(f) < at and f is not fail]
    early = {id(f) for f in before}
    out = []
    for f in findings:
        if id(f) in early:
            f = replace(
                f, evidence={**f.evidence, "lead_steps": at - _step(f), "precedes": fail.code}
            )
        elif f is fail and before:
            first = before[0]
            f = replace(
                f,
                evidence={
                    **f.evidence,
                    "first_warning": {
                        "code": first.code,
                        "step": first.step,
                        "location": first.location,
                    },
                    "lead_steps": at - _step(first),
                    "sequence": [
                        {"code": g.code, "step": g.step, "location": g.location}
                        for g in [*before, fail]
                    ],
                },
            )
        out.append(f)
    if not before:
        return out, [
            f"{fail.code} at step {at} had no earlier warning sign in the recorded signals"
        ]
    chain = " -> ".join(
        f"{g.code}@{g.step}" + (f" ({g.location})" if g.location else "") for g in [*before, fail]
    )
    lead = at - _step(before[0])
    return out, [
        f"timeline: {chain}; first warning {lead} step{'s' * (lead != 1)} before {fail.code}"
    ]
