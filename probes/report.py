"""Render an evaluation: markdown tables (pasteable into docs) and a JSON object."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from probes.evaluate import Evaluation, FixOutcome, Outcome, per_code, summary


def _codes(codes: list[str]) -> str:
    return ", ".join(codes) if codes else "-"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _loc(o: Outcome) -> str:
    if o.localised is None:
        return "n/a"
    if o.localised:
        return "yes"
    got = o.located
    return "no (" + (f"{got['step']}, {got['module']}, {got['phase']}" if got else "none") + ")"


def accuracy_table(ev: Evaluation) -> str:
    rows = []
    for o in ev.outcomes:
        lead = "-" if o.lead_steps is None else str(o.lead_steps)
        verdict = "pass" if o.passed else "FAIL"
        if o.label_problems:
            verdict += " (label!)"
        rows.append(
            [
                o.probe,
                o.family,
                _codes(o.expect) if o.expect else "healthy",
                _codes(o.found),
                _root(o),
                _loc(o),
                lead,
                verdict,
            ]
        )
    return _table(
        ["probe", "family", "expected", "found", "root cause", "localised exact", "lead", "result"],
        rows,
    )


def _root(o: Any) -> str:
    if o.root_ok is None:
        return o.root_cause or "-"
    return f"{o.root_cause or '-'} ({'right' if o.root_ok else 'label: ' + str(o.primary)})"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def code_table(ev: Evaluation) -> str:
    rows = [
        [code, str(v["tp"]), str(v["fp"]), str(v["fn"]), _pct(v["precision"]), _pct(v["recall"])]
        for code, v in per_code(ev.outcomes).items()
    ]
    return _table(["code", "TP", "FP", "FN", "precision", "recall"], rows)


def _loss(x: float) -> str:
    return "nan/inf" if not math.isfinite(x) else f"{x:.3g}"


def fix_table(ev: Evaluation, fixes: list[FixOutcome] | None = None) -> str:
    rows = []
    for f in ev.fixes if fixes is None else fixes:
        if not f.applied:
            rows.append([f.probe, f.code or "-", "-", "-", "-", f"not applied: {f.reason}"])
            continue
        others = [c for c in f.remaining if c != f.primary]
        rows.append(
            [
                f.probe,
                f.code or "-",
                f.primary or "-",
                "yes" if f.gone else "no",
                _codes(others),
                _codes(f.tool_remaining),
                f"{_loss(f.loss_before)} -> {_loss(f.loss_after)}",
                "cured" if f.cured else "not cured",
            ]
        )
    return _table(
        [
            "probe",
            "fix",
            "condition",
            "gone (measured)",
            "other codes left",
            "resdoctor still finds",
            "final loss",
            "result",
        ],
        rows,
    )


def _tool_says(o: Outcome, code: str) -> str:
    hits = [f for f in o.findings if f["code"] == code]
    if not hits:
        return "no finding"
    f = hits[0]
    return f"{f['severity']} at step {f['step']}" + (
        f" in {f['location']}" if f["location"] else ""
    )


def mismatches(ev: Evaluation) -> str:
    """Per failing probe: what was missed or wrongly found, with the measured evidence."""
    lines = []
    for o in ev.outcomes:
        for code in o.missed:
            note = o.measured.get(code, {}).get("note")
            lines.append(f"- {o.probe}: missed {code}" + (f" (measured: {note})" if note else ""))
        for code in o.false:
            note = o.measured.get(code, {}).get("note", "")
            lines.append(
                f"- {o.probe}: false {code}, {_tool_says(o, code)} "
                f"(measured {o.measured.get(code, {}).get('status', '?')}: {note})"
            )
        for where in o.misplaced:
            lines.append(f"- {o.probe}: {where}")
        if o.root_ok is False:
            lines.append(f"- {o.probe}: root cause {o.root_cause}, label {o.primary}")
        for clash in o.conflicts:
            lines.append(f"- {o.probe}: fix parameter {clash} holds two values")
        if o.localised is False:
            t, got = o.onset or {}, o.located or {}
            lines.append(
                f"- {o.probe}: NaN onset at step {got.get('step')} in "
                f"{got.get('module')} ({got.get('phase')}); measured step {t.get('step')}"
                f" in {t.get('module')} ({t.get('phase')})"
            )
    return "\n".join(lines)


def summary_text(ev: Evaluation) -> str:
    s = summary(ev)
    lines = [
        f"accuracy: {s['passed']}/{s['probes']} probes pass ({_pct(s['accuracy'])})",
        f"false alarms: {s['false_alarms']}/{s['healthy']} healthy probes",
        f"NaN localisation (step, module, phase exact): {s['localised']}/{s['nan_probes']}",
    ]
    if s["mean_lead_steps"] is not None:
        lines.append(
            f"mean lead time, first warning -> first NaN/divergence: "
            f"{s['mean_lead_steps']:.1f} steps over {s['lead_probes']} failing runs"
        )
    lines.append(
        f"root cause = the probe's label: {s['root_cause_right']}/{s['root_cause_probes']} "
        f"pathological probes; fix parameters with two values in one report: "
        f"{s['fix_conflicts']}"
    )
    if s["label_problems"]:
        lines.append(f"LABEL PROBLEMS: {s['label_problems']} probes (see --json)")
    if ev.fixes:
        lines.append(
            f"first fix of the plan cures: {s['cured']}/{s['fixes_tried']} pathological probes "
            f"({_pct(s['cure_rate'])}; condition gone and final loss lower); applied "
            f"{s['fixes_applied']}; every expected code gone too: "
            f"{s['cured_all_codes']}"
        )
    if ev.remedies:
        lines.append(f"known remedies cure: {s['remedies_cured']}/{s['remedies']}")
    lines.append(f"wall time: {s['seconds']:.0f} s")
    return "\n".join(lines)


def render(ev: Evaluation) -> str:
    parts = [accuracy_table(ev), "", code_table(ev), ""]
    if ev.fixes:
        parts += [fix_table(ev), ""]
    if ev.remedies:
        parts += [
            "known remedies (the probe author's fix, not resdoctor's):",
            fix_table(ev, ev.remedies),
            "",
        ]
    wrong = mismatches(ev)
    if wrong:
        parts += ["mismatches:", wrong, ""]
    return "\n".join(parts + [summary_text(ev)])


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def to_json(ev: Evaluation) -> dict[str, Any]:
    outcomes = [
        {
            **asdict(o),
            "passed": o.passed,
            "missed": o.missed,
            "misplaced": o.misplaced,
            "false": o.false,
            "localised": o.localised,
            "root_ok": o.root_ok,
        }
        for o in ev.outcomes
    ]
    fixes = [
        {**asdict(f), "gone": f.gone, "all_gone": f.all_gone, "better": f.better, "cured": f.cured}
        for f in ev.fixes
    ]
    remedies = [{**asdict(f), "gone": f.gone, "cured": f.cured} for f in ev.remedies]
    return _clean(
        {
            "summary": summary(ev),
            "per_code": per_code(ev.outcomes),
            "probes": outcomes,
            "fixes": fixes,
            "remedies": remedies,
        }
    )
