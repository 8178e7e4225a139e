"""The rule engine: every rule is a pure function of a Run returning Findings."""

from __future__ import annotations

from typing import Any

from resdoctor.findings import Finding
from resdoctor.run import Run


def run_rules(run: Run, **kwargs: Any) -> tuple[list[Finding], list[str]]:
    """Placeholder until the rule catalogue lands (issue 3)."""
    return [], []
