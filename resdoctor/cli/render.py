"""Terminal rendering of a Report and a Comparison with rich. Draws only; computes nothing."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from resdoctor.findings import Finding, Fix
from resdoctor.report.analysis import Report
from resdoctor.report.compare import Comparison

COLORS = {"healthy": "green", "info": "blue", "warning": "yellow", "critical": "red"}


# the one parameter that says most about each fix, for the one-line "then" list
KEY_PARAM = {
    "lower-lr": ("factor", "x{}"),
    "clip-gradients": ("max_norm", "max_norm {}"),
    "lr-warmup": ("warmup_steps", "{} steps"),
    "residual-scaling": ("scale", "alpha {}"),
    "initial-residual": ("alpha", "alpha {}"),
    "reduce-depth": ("depth", "to {} blocks"),
}


def report(console: Console, rep: Report, snippets: bool = True, verbose: bool = False) -> None:
    """The verdict and where the run went non-finite; the root cause, its story and the first
    fix of the plan (with its snippet); the other findings one line each; the timeline. With
    ``verbose``: every finding's evidence and every fix of the plan."""
    console.print(_header(rep))
    if not rep.findings and rep.complete:
        console.print(Text("No findings: training looks healthy.", style="green"))
    elif not rep.findings:
        console.print(
            Text(
                f"No findings in what was measured; {len(rep.gaps)} signal gap(s), "
                "listed below: the verdict does not cover them.",
                style="yellow",
            )
        )
    elif rep.root_cause is not None:
        _root_and_plan(console, rep, snippets, verbose)
        _others(console, rep, verbose)
    if len(rep.chain) > 1:  # the causal chain, compact (the note with locations: -v)
        timed = sorted((f for f in rep.chain if f.step is not None), key=lambda f: f.step or 0)
        chain = " -> ".join(f"{f.code}@{f.step}" for f in timed)
        console.print(Text.assemble(("Timeline  ", "bold"), chain))
    for note in rep.notes:
        if note.startswith("timeline:"):
            if verbose:
                console.print(Text(f"· {note}", style="dim"))
        elif verbose or not _routine(note):
            console.print(Text(f"· {note}", style="dim"))


def _root_and_plan(console: Console, rep: Report, snippets: bool, verbose: bool) -> None:
    root = rep.root_cause
    assert root is not None
    console.print(
        Text.assemble(
            ("Root cause  ", "bold"),
            (root.code, f"bold {COLORS[root.severity]}"),
            f"  {_when_where(root)}",
        )
    )
    # the story opens with the root cause's title
    console.print(Padding(Text(rep.story or root.title), (0, 0, 0, 2)))
    if verbose:
        console.print(Padding(Text(root.message), (0, 0, 0, 2)))
        if root.evidence:
            console.print(Padding(_evidence(root.evidence), (0, 0, 0, 2)))
    if not rep.plan:
        return
    console.print(_fix("First fix", rep.plan[0], snippets, brief=not verbose))
    rest = rep.plan[1:]
    if rest and not verbose:
        console.print(Text.assemble(("Then  ", "bold"), " · ".join(_fix_line(f) for f in rest)))
    for i, fix in enumerate(rest if verbose else ()):
        console.print(_fix(f"Fix {i + 2}", fix, snippets))


def _others(console: Console, rep: Report, verbose: bool) -> None:
    others = [f for f in rep.findings if f is not rep.root_cause]
    if others:
        console.print(Text("Also", style="bold"))
    for f in others:
        console.print(_finding_line(f))
        if verbose:
            console.print(Padding(Text(f.message), (0, 0, 0, 4)))
            if f.evidence:
                console.print(Padding(_evidence(f.evidence), (0, 0, 0, 4)))


def one_line(rep: Report) -> str:
    """``-q``: the verdict and the root cause, for scripts."""
    head = f"{rep.verdict.upper()} {rep.run.path or '<run>'}"
    if not rep.complete:
        head += f" (incomplete: {len(rep.gaps)} signal gap(s))"
    root = rep.root_cause
    if root is None:
        return head
    first = f"; first fix: {_fix_line(rep.plan[0])}" if rep.plan else ""
    return f"{head}: {root.code} {_when_where(root)}: {root.title}{first}"


def _routine(note: str) -> bool:
    """Notes that only say a rule had nothing to read (shown with -v)."""
    return ": skipped, needs " in note or note.endswith(": disabled")


def _header(rep: Report) -> Text:
    run = rep.run
    steps = f"{run.steps} steps"
    if rep.failure is not None:
        where = rep.failure.get("location")
        phase = rep.failure.get("phase")
        at = f" in {where}" if where else ""
        at += f" ({phase})" if phase else ""
        steps += f", {rep.healthy_steps} healthy; non-finite from step {rep.failure['step']}{at}"
    gaps = ("", "") if rep.complete else (f"  ·  INCOMPLETE: {len(rep.gaps)} gap(s)", "bold yellow")
    return Text.assemble(
        (f" {rep.verdict.upper()} ", f"bold white on {COLORS[rep.verdict]}"),
        f"  {run.path or '<run>'}  ·  {steps}  ·  "
        f"{len(run.sites)} residual sites  ·  {len(run.modules)} modules",
        gaps,
    )


def _when_where(f: Finding) -> str:
    bits: list[str] = [f.severity]
    if f.step is not None:
        bits.append(f"step {f.step}")
    if f.location:
        bits.append(f"in {f.location}" + (f" ({f.phase})" if f.code == "nonfinite" else ""))
    return " · ".join(bits)


def _finding_line(f: Finding) -> Text:
    after = ""
    if f.preceded_by:
        cause = f.preceded_by[0]
        lead = cause.get("lead_steps")
        after = f"  <- {cause['code']}" + (f" (+{lead} steps)" if lead else "")
    at = f"@{f.step}" if f.step is not None else ""
    return Text.assemble(
        "  ",
        (f"{f.severity:<8}", COLORS[f.severity]),
        (f" {f.code}{at}", "bold"),
        f"  {f.title}",
        (after, "dim"),
    )


def _fix_line(fix: Fix) -> str:
    key = KEY_PARAM.get(fix.code)
    if key and fix.params.get(key[0]) is not None:
        return f"{fix.code} ({key[1].format(num(fix.params[key[0]]))})"
    return fix.code


def _fix(label: str, fix: Fix, snippet: bool, brief: bool = False) -> Group:
    detail = first_sentences(fix.detail) if brief else fix.detail
    lines: list[Any] = [
        Text.assemble((f"{label}  ", "bold"), (fix.code, "bold magenta"), f"  {fix.title}"),
        Padding(Text(detail), (0, 0, 0, 2)),
    ]
    if snippet and fix.snippet:
        lines.append(
            Padding(
                Syntax(fix.snippet.rstrip(), "python", theme="ansi_dark", word_wrap=True),
                (0, 0, 0, 2),
            )
        )
    return Group(*lines)


def _evidence(evidence: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="cyan", no_wrap=True)
    table.add_column()
    for key, value in evidence.items():
        if key == "sequence":
            value = " -> ".join(f"{s['code']}@{s['step']}" for s in value)
        table.add_row(key, _short(show(value)))
    return table


def first_sentences(text: str, limit: int = 160) -> str:
    """The opening sentences of ``text`` that fit ``limit`` characters (at least one)."""
    out = ""
    for sentence in text.replace(". ", ".\n").splitlines():
        if out and len(out) + len(sentence) + 1 > limit:
            break
        out = f"{out} {sentence}".strip()
    return out


def num(x: Any) -> str:
    """A number to 3 significant digits (ints as they are)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    return f"{x:.3g}"


def show(value: Any) -> str:
    """Evidence as text people read: numbers to 3 significant digits, no Python reprs."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {show(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(show(v) for v in value)
    if value is None:
        return "-"
    return num(value)


def _short(value: str, limit: int = 160) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def comparison(console: Console, cmp: Comparison) -> None:
    """What changed between two runs: verdicts, finding codes and key metrics."""
    va, vb = cmp.a.verdict, cmp.b.verdict
    console.print(
        Text.assemble(
            ("CHANGES  ", "bold"),
            (va, COLORS[va]),
            " -> ",
            (vb, COLORS[vb]),
            "  " + cmp.outcome,
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
