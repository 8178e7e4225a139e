"""Finding and Fix: what the rules produce (DESIGN.md sections 6-7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class Fix:
    """A concrete remedy: ``params`` are taken from the run; ``snippet`` is runnable Python."""

    code: str
    title: str
    detail: str
    snippet: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "title": self.title,
            "detail": self.detail,
            "snippet": self.snippet,
            "params": dict(self.params),
        }


@dataclass(frozen=True)
class Finding:
    """One diagnosis with its evidence, where and when it started, and the fixes to try first."""

    code: str
    severity: Severity
    title: str
    message: str
    step: int | None = None
    location: str | None = None
    phase: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    fixes: tuple[Fix, ...] = ()
    rule: str = ""
    thresholds: dict[str, Any] = field(default_factory=dict)
    # the causal chain (report.diagnosis): findings that led here and that this led to, each
    # {"code", "step", "location", "lead_steps"}
    preceded_by: tuple[dict[str, Any], ...] = ()
    leads_to: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "step": self.step,
            "location": self.location,
            "phase": self.phase,
            "evidence": dict(self.evidence),
            "fixes": [f.to_dict() for f in self.fixes],
            "rule": self.rule,
            "thresholds": dict(self.thresholds),
            "preceded_by": [dict(x) for x in self.preceded_by],
            "leads_to": [dict(x) for x in self.leads_to],
        }
