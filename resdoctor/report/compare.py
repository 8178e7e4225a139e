"""Compare two diagnoses (before / after a fix): verdicts, finding codes, key metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from resdoctor.findings import SEVERITY_RANK
from resdoctor.fixes.snippets import sig
from resdoctor.report.analysis import VERDICTS, Report, plain
from resdoctor.runfile.run import Run


@dataclass(frozen=True)
class Comparison:
    """What changed from run ``a`` (before) to run ``b`` (after).

    Attributes:
        resolved: finding codes in ``a`` but not in ``b``; ``new``: the reverse; ``persisting``:
            in both, with their severities before and after.
        metrics: name -> {"before", "after", "change"} for the key measurements of each run.
    """

    a: Report
    b: Report
    resolved: tuple[str, ...]
    new: tuple[str, ...]
    persisting: tuple[dict[str, Any], ...]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def improved(self) -> bool:
        """The verdict got better, or stayed and fewer finding codes remain."""
        va, vb = VERDICTS.index(self.a.verdict), VERDICTS.index(self.b.verdict)
        return vb < va or (vb == va and len(self.b.codes) < len(self.a.codes))

    @property
    def outcome(self) -> str:
        """``better``, ``worse`` or ``unchanged``: by verdict, then by finding codes left."""
        va, vb = VERDICTS.index(self.a.verdict), VERDICTS.index(self.b.verdict)
        if vb != va:
            return "better" if vb < va else "worse"
        na, nb = len(self.a.codes), len(self.b.codes)
        return "unchanged" if na == nb else ("better" if nb < na else "worse")

    @property
    def summary(self) -> str:
        parts = [f"{self.a.verdict} -> {self.b.verdict}"]
        if self.resolved:
            parts.append(f"resolved: {', '.join(self.resolved)}")
        if self.new:
            parts.append(f"new: {', '.join(self.new)}")
        if self.persisting:
            parts.append(f"persisting: {', '.join(p['code'] for p in self.persisting)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return plain(
            {
                "before": {
                    "run": self.a.run.path or "",
                    "verdict": self.a.verdict,
                    "codes": self.a.codes,
                },
                "after": {
                    "run": self.b.run.path or "",
                    "verdict": self.b.verdict,
                    "codes": self.b.codes,
                },
                "improved": self.improved,
                "outcome": self.outcome,
                "summary": self.summary,
                "resolved": list(self.resolved),
                "new": list(self.new),
                "persisting": list(self.persisting),
                "metrics": self.metrics,
            }
        )


def compare(a: Report, b: Report) -> Comparison:
    """Compare report ``a`` (before) with report ``b`` (after)."""
    ca, cb = a.codes, b.codes
    persisting = tuple(
        {
            "code": c,
            "before": _worst(a, c),
            "after": _worst(b, c),
            "change": _severity_change(_worst(a, c), _worst(b, c)),
        }
        for c in ca
        if c in cb
    )
    ma, mb = metrics(a.run), metrics(b.run)
    table = {}
    for name in ma:
        before, after = ma[name], mb.get(name)
        table[name] = {"before": before, "after": after, "change": _change(before, after)}
    return Comparison(
        a,
        b,
        tuple(c for c in ca if c not in cb),
        tuple(c for c in cb if c not in ca),
        persisting,
        table,
    )


def _severity_change(before: str, after: str) -> str:
    rb, ra = SEVERITY_RANK[before], SEVERITY_RANK[after]
    return "unchanged" if ra == rb else ("better" if ra < rb else "worse")


def _worst(report: Report, code: str) -> str:
    found = [f.severity for f in report.findings if f.code == code]
    return max(found, key=SEVERITY_RANK.__getitem__)


def _change(before: Any, after: Any) -> float | None:
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return None
    if before and np.isfinite(before) and np.isfinite(after):
        return sig(float(after) / float(before), 3)
    return None


def metrics(run: Run) -> dict[str, Any]:
    """Key measurements of a run: loss, gradient norm, first NaN, branch ratio, stream growth."""
    loss = run.scalar("loss")
    finite = loss[np.isfinite(loss)]
    nan = run.nonfinite
    g = run.scalar("grad_norm_total")
    g = g[np.isfinite(g)]
    br = run.series("branch_ratio")
    sn = run.series("stream_norm")
    out: dict[str, Any] = {
        "steps": run.steps,
        "final_loss": _num(finite.iloc[-1]) if not finite.empty else None,
        "best_loss": _num(finite.min()) if not finite.empty else None,
        "first_nonfinite_step": int(nan["step"].iloc[0]) if not nan.empty else None,
        "max_grad_norm": _num(g.max()) if not g.empty else None,
        "median_grad_norm": _num(g.median()) if not g.empty else None,
        "max_branch_ratio": _num(np.nanmax(br.replace(np.inf, np.nan).to_numpy()))
        if not br.empty and br.notna().to_numpy().any()
        else None,
        "stream_growth": _stream_growth(sn),
        "skipped_steps": int(len(run.skipped_steps)),
    }
    return out


def _num(x: Any) -> float | None:
    x = float(x)
    return sig(x, 4) if np.isfinite(x) else None


def _stream_growth(sn: Any) -> float | None:
    """Median over steps of last-site / first-site stream RMS."""
    if sn.empty or sn.shape[1] < 2:
        return None
    ratio = (sn.iloc[:, -1] / sn.iloc[:, 0]).replace([np.inf, -np.inf], np.nan).dropna()
    return _num(ratio.median()) if not ratio.empty else None
