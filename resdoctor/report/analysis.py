"""Report: the diagnosis of one run (DESIGN.md section 6). Built by ``analyze()``."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from resdoctor.findings import SEVERITY_RANK, Finding, Fix
from resdoctor.report.diagnosis import diagnose
from resdoctor.runfile.run import Run
from resdoctor.version import __version__

VERDICTS = ("healthy", "warning", "critical")


@dataclass(frozen=True)
class Report:
    """Findings of every rule on one run: the root cause and its consequences first, then the
    rest worst first; the story and the fix plan (see ``report.diagnosis``)."""

    run: Run
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. rules skipped for missing signals
    root_cause: Finding | None = None
    story: str = ""
    plan: tuple[Fix, ...] = ()
    chain: tuple[Finding, ...] = ()  # root cause and what it led to, by onset
    failure: dict[str, Any] | None = None  # where the run first went non-finite
    gaps: tuple[str, ...] = ()  # the notes saying a signal could not be measured (also in notes)

    @property
    def complete(self) -> bool:
        """Every signal the rules read was measured: a healthy verdict covers the whole run."""
        return not self.gaps

    @property
    def healthy_steps(self) -> int:
        """Steps before the first non-finite value (every step when there is none)."""
        if self.failure is None:
            return self.run.steps
        return min(int(self.failure["step"]), self.run.steps)

    @property
    def verdict(self) -> str:
        worst = max((SEVERITY_RANK[f.severity] for f in self.findings), default=0)
        return VERDICTS[worst]

    @property
    def codes(self) -> list[str]:
        """Finding codes, worst first, without repeats."""
        return list(dict.fromkeys(f.code for f in self.findings))

    def by_severity(self, severity: str) -> list[Finding]:
        return [f for f in self.findings if f.severity == severity]

    def fails(self, fail_on: str) -> bool:
        """True when a finding is at or above ``fail_on`` ("info", "warning" or "critical")."""
        floor = SEVERITY_RANK[fail_on]
        return any(SEVERITY_RANK[f.severity] >= floor for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        """Exactly the JSON object of DESIGN.md section 6 (plus extra keys: notes, counts,
        each finding's rule and thresholds, each fix's params); JSON-safe (NaN -> null)."""
        return plain(
            {
                "resdoctor": __version__,
                "run": self.run.path or "",
                "steps": self.run.steps,
                "verdict": self.verdict,
                "sites": [
                    {"name": s["name"], "kind": s["kind"], "module": s["module"]}
                    for s in self.run.site_records
                ],
                "findings": [f.to_dict() for f in self.findings],
                "notes": list(self.notes),
                "complete": self.complete,
                "gaps": list(self.gaps),
                "counts": {s: len(self.by_severity(s)) for s in ("critical", "warning", "info")},
                "root_cause": self.root_cause.to_dict() if self.root_cause else None,
                "story": self.story,
                "plan": [f.to_dict() for f in self.plan],
                "healthy_steps": self.healthy_steps,
                "failure": self.failure,
            }
        )

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _unmeasured(run: Run) -> list[str]:
    """Inputs the checks could not read, and per-module signals recorded on no step."""
    notes = []
    inputs = run.state.get("unmeasured_inputs")
    if isinstance(inputs, list) and inputs:
        shown = ", ".join(str(x)[:60] for x in inputs[:4])
        notes.append(
            f"not checked for NaN/Inf: the model input(s) {shown} (sparse tensors; the "
            "sensors read dense tensors only, so a bad value there is seen where it "
            "reaches a dense one)"
        )
    if not run.steps:
        notes.append(
            "no training step was recorded (the optimizer never stepped, or the run stopped "
            "before its first flush): there is nothing to judge yet"
        )
    elif len(run.modules) and not run.state.get("compiled") and "grad_norm" not in run.signals:
        notes.append(
            "not measured on any step: grad_norm (no gradient could be read: no backward ran "
            "while watched, or reading failed); the rules that read gradients judged nothing"
        )
    return notes


def plain(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python numbers, NaN/inf to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (int, str, bool)):
        return obj
    return str(obj)


def _order(f: Finding) -> tuple[int, int, str]:
    return (-SEVERITY_RANK[f.severity], f.step if f.step is not None else 1 << 62, f.code)


def analyze(run: Run | str | os.PathLike[str], **kwargs: Any) -> Report:
    """Run every registered rule on ``run`` (a ``Run`` or a run-file path).

    Keyword arguments tune thresholds (``**{"exploding-gradients.surge_factor": 20}`` or
    ``exploding_gradients={"surge_factor": 20}``) or name a ``config`` file / mapping; see
    ``resdoctor.rules``. The root cause and its consequences come first (by onset), then the
    other findings worst first; ``report.plan`` is the one fix plan.
    """
    if not isinstance(run, Run):
        run = Run.load(run)
    from resdoctor.rules import run_rules, timeline

    findings, notes = run_rules(run, **kwargs)
    findings.sort(key=_order)
    d = diagnose(findings, run.architecture, run.steps)
    tl = timeline(run)
    failure = None
    if tl.failure_step is not None:
        at = tl.failure or {}
        failure = {
            "step": int(tl.failure_step),
            "location": at.get("module"),
            "phase": at.get("phase"),
        }
    gaps = coverage_notes(run)
    return Report(
        run,
        d.findings,
        tuple(gaps + notes),
        d.root_cause,
        d.story,
        d.plan,
        d.chain,
        failure,
        tuple(gaps),
    )


def coverage_notes(run: Run) -> list[str]:
    """What the run could not measure, said up front: residual sites found but never measured,
    and errors resdoctor caught while recording (a verdict is only as good as its signals)."""
    notes = []
    if run.state.get("compiled"):
        notes.append(
            "torch.compile'd model: only its boundary was hooked (loss, gradients, updates, "
            "NaN/Inf in its inputs and output); residual sites, activations and NaN origins "
            "inside it were not recorded"
        )
    unseen = int(run.state.get("steps_without_forward") or 0)
    if unseen:
        notes.append(
            f"{unseen} of {run.steps} steps ran no forward pass resdoctor could see (a model "
            "compiled after watch() runs its hooks inside the compiled graph, where they are "
            "skipped): watch the compiled module instead, or the uncompiled one"
        )
    if not len(run.sites) and not run.state.get("compiled"):
        layers = list(run.state.get("layers") or [])
        where = (
            f"; over-smoothing was sampled at the outputs of its {len(layers)} repeated layers "
            f"({layers[0]} .. {layers[-1]}) instead"
            if layers
            else ", nor was over-smoothing"
        )
        notes.append(
            "no residual signals: no residual addition (skip + branch on the model's stream) "
            "was found, so branch ratio, stream growth and gradient share were not measured" + where
        )
    if len(run.sites):
        measured = run.measured("branch_ratio")  # a measured NaN counts as measured
        names = list(run.sites["name"])
        stride = run.stride("branch_ratio")
        missing = [  # measured on fewer than half of the steps (or never)
            n
            for n in names
            if n not in measured.columns or measured[n].sum() * stride < 0.5 * run.steps
        ]
        if missing:
            shown = ", ".join(missing[:4]) + (
                f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""
            )
            notes.append(
                f"residual signals missing: {len(missing)} of {len(names)} sites were found but "
                f"not measured on most steps ({shown}); rules that read them judge the rest only"
            )
    notes += _unmeasured(run)
    errors = run.errors
    if not errors.empty:
        first = errors.iloc[0]
        notes.append(
            f"resdoctor caught {int(errors['count'].sum())} error(s) of its own while recording "
            f"(training went on); first at step {first['first_step']}: {first['where']}: "
            f"{first['type']}: {str(first['message'])[:160]}"
        )
    return notes
