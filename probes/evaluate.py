"""Score resdoctor on the probes: diagnosis accuracy, localisation, lead time and fix cure rate."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from probes.labels import labels
from probes.probe import CODES, Probe, label_problems
from probes.recipe import FixNotApplicable

FOUND = ("warning", "critical")  # severities that count as a diagnosis (info is a note)


@dataclass
class Outcome:
    """One probe: what was expected, what resdoctor found, and whether that is right."""

    probe: str
    family: str
    healthy: bool
    expect: list[str]
    allow: list[str]
    found: list[str]
    findings: list[dict[str, Any]]
    onset: dict[str, Any] | None  # the declared (and measured) NaN onset
    located: dict[str, Any] | None  # resdoctor's earliest nonfinite finding
    lead_steps: int | None
    label_problems: list[str]
    measured: dict[str, dict[str, Any]]
    final_loss: float
    top_fix: dict[str, Any] | None
    seconds: float
    root_cause: str | None = None  # the report's root cause code
    primary: str | None = None  # the probe's own condition (its label's first code)
    conflicts: list[str] = field(default_factory=list)  # fix parameters with two values

    @property
    def root_ok(self) -> bool | None:
        """The report's root cause is the probe's primary condition (None for healthy)."""
        if self.healthy or self.primary is None:
            return None
        return self.root_cause == self.primary

    @property
    def missed(self) -> list[str]:
        return [c for c in self.expect if c not in self.found]

    @property
    def false(self) -> list[str]:
        return [c for c in self.found if c not in self.expect and c not in self.allow]

    @property
    def localised(self) -> bool | None:
        if self.onset is None:
            return None
        return self.located is not None and all(
            self.located.get(k) == self.onset[k] for k in ("step", "module", "phase")
        )

    @property
    def misplaced(self) -> list[str]:
        """Expected codes whose label measured a step and location (``precision-overflow``)
        and whose first finding names another: ``code: found step@location, measured ...``."""
        out = []
        for code in self.expect:
            label = self.measured.get(code, {})
            if label.get("step") is None:
                continue
            hits = [f for f in self.findings if f["code"] == code and f["step"] is not None]
            if not hits:
                continue  # missed: counted there
            first = min(hits, key=lambda f: f["step"])
            if (first["step"], first["location"]) != (label["step"], label["location"]):
                out.append(
                    f"{code}: found step {first['step']} at {first['location']}, measured "
                    f"step {label['step']} at {label['location']}"
                )
        return out

    @property
    def passed(self) -> bool:
        return (
            not self.missed
            and not self.false
            and self.localised is not False
            and not self.misplaced
        )


@dataclass
class FixOutcome:
    """One pathological probe re-run with resdoctor's top suggested fix."""

    probe: str
    code: str | None
    params: dict[str, Any]
    applied: bool
    reason: str = ""
    primary: str | None = None  # the probe's own condition
    remaining: list[str] = field(default_factory=list)  # expected codes still measured present
    tool_remaining: list[str] = field(default_factory=list)  # ... still found by resdoctor
    loss_before: float = math.inf
    loss_after: float = math.inf
    seconds: float = 0.0

    @property
    def gone(self) -> bool:
        """The probe's primary condition is no longer measured present."""
        return self.applied and self.primary not in self.remaining

    @property
    def all_gone(self) -> bool:
        return self.applied and not self.remaining

    @property
    def better(self) -> bool:
        return self.applied and self.loss_after < self.loss_before

    @property
    def cured(self) -> bool:
        return self.gone and self.better


def _finding_dict(f: Any) -> dict[str, Any]:
    return {
        "code": f.code,
        "severity": f.severity,
        "step": f.step,
        "location": f.location,
        "phase": f.phase,
        "lead_steps": f.evidence.get("lead_steps"),
        "fixes": [{"code": x.code, "params": dict(x.params)} for x in f.fixes],
    }


def _diagnose(path: str) -> list[dict[str, Any]]:
    return _report(path)[0]


def _report(path: str) -> tuple[list[dict[str, Any]], str | None, dict[str, Any] | None, list[str]]:
    """Findings, the root cause code, the plan's first fix and the fix-parameter conflicts."""
    import resdoctor

    rep = resdoctor.analyze(path)
    findings = [_finding_dict(f) for f in rep.findings]
    top: dict[str, Any] | None = None
    if rep.plan:
        top = {"finding": rep.root_cause.code if rep.root_cause else None}
        top.update({"code": rep.plan[0].code, "params": dict(rep.plan[0].params)})
    return findings, rep.root_cause.code if rep.root_cause else None, top, conflicts(rep)


def conflicts(rep: Any) -> list[str]:
    """``code.param`` of every fix parameter that holds two different values in one report
    (across the plan and every finding's fixes): there must be none."""
    values: dict[str, set[str]] = {}
    fixes = [*rep.plan, *(x for f in rep.findings for x in f.fixes)]
    for fix in fixes:
        for key, value in fix.params.items():
            values.setdefault(f"{fix.code}.{key}", set()).add(repr(value))
    return sorted(k for k, v in values.items() if len(v) > 1)


def _found(findings: list[dict[str, Any]]) -> list[str]:
    return sorted({f["code"] for f in findings if f["severity"] in FOUND})


def _lead(findings: list[dict[str, Any]]) -> int | None:
    """Steps from the first warning to the failure (the failure finding's ``lead_steps``)."""
    fails = [
        f
        for f in findings
        if f["code"] in ("nonfinite", "loss-divergence")
        and f["severity"] == "critical"
        and f["step"] is not None
    ]
    if not fails:
        return None
    fail = min(fails, key=lambda f: (f["code"] != "nonfinite", f["step"]))
    return int(fail["lead_steps"] or 0)


def evaluate_probe(probe: Probe, workdir: str, check_labels: bool = True) -> Outcome:
    """Record the probe under resdoctor, diagnose it, and (optionally) re-measure its label."""
    start = time.perf_counter()
    path = os.path.join(workdir, f"{probe.name}.pt")
    recorded = probe.record(path)
    findings, root, top, clashes = _report(path)
    problems: list[str] = []
    measured: dict[str, dict[str, Any]] = {}
    loss = recorded.final_loss
    if check_labels:
        m = probe.measure().measurement
        assert m is not None
        problems = label_problems(probe.truth, m)
        measured = {c: lab.to_dict() for c, lab in labels(m).items()}
    nan = sorted(
        (f for f in findings if f["code"] == "nonfinite" and f["step"] is not None),
        key=lambda f: f["step"],
    )
    t = probe.truth
    return Outcome(
        probe.name,
        probe.family,
        t.healthy,
        sorted(t.expect),
        sorted(t.allow),
        _found(findings),
        findings,
        {"step": t.onset.step, "module": t.onset.module, "phase": t.onset.phase}
        if t.onset
        else None,
        {"step": nan[0]["step"], "module": nan[0]["location"], "phase": nan[0]["phase"]}
        if nan
        else None,
        _lead(findings),
        problems,
        measured,
        loss,
        top,
        time.perf_counter() - start,
        root,
        t.primary,
        clashes,
    )


def verify_fix(probe: Probe, outcome: Outcome, workdir: str) -> FixOutcome:
    """Re-run ``probe`` with the top fix resdoctor suggested; measure whether it cured it."""
    top = outcome.top_fix
    if top is None:
        return FixOutcome(probe.name, None, {}, False, "no fix suggested")
    return try_fix(probe, top["code"], dict(top["params"]), outcome.final_loss, workdir)


def try_fix(
    probe: Probe,
    code: str,
    params: dict[str, Any],
    loss_before: float,
    workdir: str,
    tag: str = "fixed",
) -> FixOutcome:
    """Apply fix ``code`` with ``params``, re-measure the condition (plain hooks) and re-record
    the run (resdoctor) to compare the final loss with ``loss_before``."""
    start = time.perf_counter()
    try:
        recipe = probe.fixed(code, params)
    except FixNotApplicable as e:
        return FixOutcome(probe.name, code, params, False, str(e))
    try:
        measured = probe.measure(recipe).measurement
    except FixNotApplicable as e:  # the family cannot build this variant
        return FixOutcome(probe.name, code, params, False, str(e))
    assert measured is not None
    present = {c for c, lab in labels(measured).items() if lab.status == "present"}
    path = os.path.join(workdir, f"{probe.name}.{tag}.pt")
    after = probe.record(path, recipe)  # losses compared like for like: both runs under watch
    tool = set(_found(_diagnose(path)))
    expect = sorted(probe.truth.expect)
    return FixOutcome(
        probe.name,
        code,
        params,
        True,
        "",
        probe.truth.primary,
        [c for c in expect if c in present],
        [c for c in expect if c in tool],
        loss_before,
        after.final_loss,
        time.perf_counter() - start,
    )


def verify_remedy(probe: Probe, outcome: Outcome, workdir: str) -> FixOutcome | None:
    """The probe's known remedy (its author's choice of fix): shows the probe is curable."""
    if probe.remedy is None:
        return None
    code, params = probe.remedy
    return try_fix(probe, code, dict(params), outcome.final_loss, workdir, "remedy")


@dataclass
class Evaluation:
    outcomes: list[Outcome]
    fixes: list[FixOutcome]
    seconds: float
    remedies: list[FixOutcome] = field(default_factory=list)


def evaluate(
    probes: Iterable[Probe],
    verify_fixes: bool = False,
    check_labels: bool = True,
    workdir: str | None = None,
    progress: Callable[[str], None] | None = None,
    remedies: bool = False,
) -> Evaluation:
    """Run every probe (with ``verify_fixes``, every pathological probe's top fix; with
    ``remedies``, its known remedy)."""
    start = time.perf_counter()
    outcomes, fixes, cures = [], [], []
    with tempfile.TemporaryDirectory(prefix="probes-") as tmp:
        work = workdir or tmp
        for probe in probes:
            out = evaluate_probe(probe, work, check_labels)
            outcomes.append(out)
            if progress:
                progress(f"{probe.name}: {'pass' if out.passed else 'FAIL'} ({out.seconds:.1f}s)")
            if verify_fixes and not out.healthy:
                fix = verify_fix(probe, out, work)
                fixes.append(fix)
                if progress:
                    progress(
                        f"{probe.name}: fix {fix.code}: "
                        f"{'cured' if fix.cured else 'not cured'} ({fix.seconds:.1f}s)"
                    )
            cure = verify_remedy(probe, out, work) if remedies and not out.healthy else None
            if cure is not None:
                cures.append(cure)
    return Evaluation(outcomes, fixes, time.perf_counter() - start, cures)


def per_code(outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    """Precision and recall per finding code (allowed codes count neither way)."""
    out = {}
    for code in CODES:
        tp = sum(code in o.expect and code in o.found for o in outcomes)
        fn = sum(code in o.expect and code not in o.found for o in outcomes)
        fp = sum(code in o.false for o in outcomes)
        out[code] = {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
        }
    return out


def summary(ev: Evaluation) -> dict[str, Any]:
    """Headline figures of an evaluation."""
    outs = ev.outcomes
    healthy = [o for o in outs if o.healthy]
    located = [o for o in outs if o.localised is not None]
    leads = [o.lead_steps for o in outs if o.lead_steps is not None]
    applied = [f for f in ev.fixes if f.applied]
    return {
        "probes": len(outs),
        "passed": sum(o.passed for o in outs),
        "accuracy": sum(o.passed for o in outs) / len(outs) if outs else None,
        "healthy": len(healthy),
        "false_alarms": sum(bool(o.found) for o in healthy),
        "localised": sum(bool(o.localised) for o in located),
        "nan_probes": len(located),
        "mean_lead_steps": sum(leads) / len(leads) if leads else None,
        "lead_probes": len(leads),
        "label_problems": sum(bool(o.label_problems) for o in outs),
        "root_cause_right": sum(bool(o.root_ok) for o in outs),
        "root_cause_probes": sum(o.root_ok is not None for o in outs),
        "fix_conflicts": sum(len(o.conflicts) for o in outs),
        "fixes_tried": len(ev.fixes),
        "fixes_applied": len(applied),
        "cured": sum(f.cured for f in ev.fixes),
        "cured_all_codes": sum(f.cured and f.all_gone for f in ev.fixes),
        "cure_rate": sum(f.cured for f in ev.fixes) / len(ev.fixes) if ev.fixes else None,
        "remedies": len(ev.remedies),
        "remedies_cured": sum(f.cured for f in ev.remedies),
        "seconds": ev.seconds,
    }
