"""Report: the diagnosis of one run (DESIGN.md section 6). Built by ``analyze()``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from resdoctor._version import __version__
from resdoctor.findings import SEVERITY_RANK, Finding
from resdoctor.run import Run


@dataclass(frozen=True)
class Report:
    """Findings of every rule on one run, worst first."""

    run: Run
    findings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. rules skipped for missing signals

    @property
    def verdict(self) -> str:
        worst = max((SEVERITY_RANK[f.severity] for f in self.findings), default=0)
        return {0: "healthy", 1: "warning", 2: "critical"}[worst]

    def to_dict(self) -> dict[str, Any]:
        """Exactly the JSON object of DESIGN.md section 6 (plus optional extra keys)."""
        return {
            "resdoctor": __version__,
            "run": self.run.path or "",
            "steps": self.run.steps,
            "verdict": self.verdict,
            "sites": [{"name": s["name"], "kind": s["kind"], "module": s["module"]}
                      for s in self.run.state["sites"]],
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
        }


def analyze(run: Run | str | os.PathLike[str], **kwargs: Any) -> Report:
    """Run every registered rule on ``run``; see ``resdoctor.rules``."""
    if not isinstance(run, Run):
        run = Run.load(run)
    from resdoctor.rules import run_rules

    findings, notes = run_rules(run, **kwargs)
    findings.sort(key=lambda f: (-SEVERITY_RANK[f.severity], f.step if f.step is not None else 0))
    return Report(run, tuple(findings), tuple(notes))
