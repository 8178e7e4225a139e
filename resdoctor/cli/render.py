"""Terminal rendering of a Report and a Comparison with rich. Draws only; computes nothing."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from resdoctor.findings import Finding, Fix
from resdoctor.report.analysis import Report
from resdoctor.report.compare import Comparison

COLORS = {"healthy": "green", "info": "blue", "warning": "yellow", "critical": "red"}


def report(console: Console, rep: Report, snippets: bool = True) -> None:
    """Verdict, then findings by severity with evidence, location, step and fixes."""
    color = COLORS[rep.verdict]
    run = rep.run
    head = Text.assemble(
        (f" {rep.verdict.upper()} ", f"bold white on {color}"),
        f"  {run.path or '<run>'}  ·  {run.steps} steps  ·  "
        f"{len(run.sites)} residual sites  ·  {len(run.modules)} modules",
    )
    console.print(head)
    if not rep.findings:
        console.print(Text("No findings: training looks healthy.", style="green"))
    for severity in ("critical", "warning", "info"):
        for finding in rep.by_severity(severity):
            console.print(_finding(finding, snippets))
    for note in rep.notes:
        style = "bold" if note.startswith("timeline:") else "dim"
        console.print(Text(f"· {note}", style=style))


def _finding(f: Finding, snippets: bool) -> Panel:
    color = COLORS[f.severity]
    where = Table.grid(padding=(0, 2))
    where.add_row(
        "step",
        str(f.step) if f.step is not None else "-",
        "location",
        f.location or "-",
        "phase",
        f.phase or "-",
    )
    parts: list[Any] = [where, Text(f.message)]
    if f.evidence:
        parts.append(_evidence(f.evidence))
    for i, fix in enumerate(f.fixes):
        parts.append(_fix(i + 1, fix, snippets and i == 0))  # the JSON has every snippet
    return Panel(
        Group(*parts),
        title=Text(f"{f.severity} · {f.code}", style=f"bold {color}"),
        subtitle=Text(f.title),
        title_align="left",
        border_style=color,
    )


def _evidence(evidence: dict[str, Any]) -> Table:
    table = Table(
        show_header=False,
        box=None,
        padding=(0, 1),
        title="evidence",
        title_justify="left",
        title_style="bold",
    )
    table.add_column(style="cyan", no_wrap=True)
    table.add_column()
    for key, value in evidence.items():
        if key == "sequence":
            value = " -> ".join(f"{s['code']}@{s['step']}" for s in value)
        table.add_row(key, _short(value))
    return table


def _short(value: Any, limit: int = 160) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fix(n: int, fix: Fix, snippet: bool) -> Group:
    lines: list[Any] = [
        Text.assemble((f"fix {n}: ", "bold"), (fix.code, "bold magenta"), f"  {fix.title}"),
        Padding(Text(fix.detail, style="dim"), (0, 0, 0, 2)),
    ]
    if snippet and fix.snippet:
        lines.append(
            Padding(
                Syntax(fix.snippet.rstrip(), "python", theme="ansi_dark", word_wrap=True),
                (0, 0, 0, 2),
            )
        )
    return Group(*lines)


def comparison(console: Console, cmp: Comparison) -> None:
    """What changed between two runs: verdicts, finding codes and key metrics."""
    va, vb = cmp.a.verdict, cmp.b.verdict
    console.print(
        Text.assemble(
            ("CHANGES  ", "bold"),
            (va, COLORS[va]),
            " -> ",
            (vb, COLORS[vb]),
            "  " + ("improved" if cmp.improved else "not improved"),
        )
    )
    codes = Table(show_header=True, box=None, padding=(0, 2))
    codes.add_column("finding")
    codes.add_column("before")
    codes.add_column("after")
    for code in cmp.resolved:
        codes.add_row(code, _sev(cmp.a, code), Text("resolved", style="green"))
    for p in cmp.persisting:
        codes.add_row(p["code"], p["before"], p["after"])
    for code in cmp.new:
        codes.add_row(code, Text("-", style="dim"), Text(f"new {_sev(cmp.b, code)}", style="red"))
    if cmp.resolved or cmp.persisting or cmp.new:
        console.print(codes)
    table = Table(show_header=True, box=None, padding=(0, 2))
    for col in ("metric", "before", "after", "after/before"):
        table.add_column(col)
    for name, m in cmp.metrics.items():
        table.add_row(name, _fmt(m["before"]), _fmt(m["after"]), _fmt(m["change"]))
    console.print(table)


def _sev(rep: Report, code: str) -> str:
    return next((f.severity for f in rep.findings if f.code == code), "-")


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.4g}" if isinstance(x, float) else str(x)
