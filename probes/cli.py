"""``resdoctor probe ...`` / ``python -m probes ...``: list, run, label and evaluate the probes."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

import typer

import probes
from probes.labels import labels


def _parse(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _probe(name: str) -> probes.Probe:
    try:
        return probes.get(name)
    except KeyError as e:
        typer.echo(str(e.args[0]), err=True)
        raise typer.Exit(2) from None


def _markdown(names: list[str]) -> None:
    typer.echo("| probe | family | what | expected (first = primary) | allowed | exact onset |")
    typer.echo("|---|---|---|---|---|---|")
    for name in names:
        p = probes.get(name)
        t = p.truth
        expect = [t.primary] + sorted(t.expect - {t.primary}) if t.primary else []
        onset = f"step {t.onset.step}, `{t.onset.module}`, {t.onset.phase}" if t.onset else "-"
        what = p.summary + (f" ({', '.join(sorted(t.traps))})" if t.traps else "")
        typer.echo(
            f"| `{name}` | {p.family} | {what} | {', '.join(expect) or 'healthy'} | "
            f"{', '.join(sorted(t.allow)) or '-'} | {onset} |"
        )


def list_cmd(
    fast: Annotated[bool, typer.Option(help="Only the fast subset.")] = False,
    markdown: Annotated[bool, typer.Option(help="As a markdown table.")] = False,
) -> None:
    """List the probes with their family and ground truth."""
    if markdown:
        _markdown(probes.names(fast))
        return
    for name in probes.names(fast):
        p = probes.get(name)
        truth = ", ".join(sorted(p.truth.expect)) or "healthy"
        onset = (
            f" @ {p.truth.onset.step} {p.truth.onset.module} ({p.truth.onset.phase})"
            if p.truth.onset
            else ""
        )
        typer.echo(f"{name:28s} {p.family:8s} {truth}{onset}")
        typer.echo(f"{'':28s} {p.summary}")


def run_cmd(
    name: str,
    out: Annotated[str, typer.Option(help="Run file to write.")] = "",
    fix: Annotated[str, typer.Option(help="Apply this fix code first.")] = "",
    param: Annotated[list[str], typer.Option(help="Fix parameter key=value (repeatable).")] = [],  # noqa: B006
) -> None:
    """Record one probe under resdoctor.watch and print its diagnosis."""
    import resdoctor

    p = _probe(name)
    recipe = None
    if fix:
        try:
            recipe = p.fixed(fix, _parse(param))
        except probes.FixNotApplicable as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(2) from None
    path = out or f"probe-{name}{'-' + fix if fix else ''}.pt"
    result = p.record(path, recipe)
    report = resdoctor.analyze(path)
    typer.echo(
        f"{name}: {len(result.losses)} steps, final loss {result.final_loss:.4g}, run file {path}"
    )
    typer.echo(f"expected: {', '.join(sorted(p.truth.expect)) or 'healthy'}")
    typer.echo(f"verdict: {report.verdict}")
    for f in report.findings:
        where = f" at step {f.step}" if f.step is not None else ""
        loc = f" in {f.location}" if f.location else ""
        fixes = ", ".join(x.code for x in f.fixes)
        tail = f"  fixes: {fixes}" if fixes else ""
        typer.echo(f"  [{f.severity}] {f.code}{where}{loc}{tail}")


def label_cmd(name: str) -> None:
    """Measure one probe with plain hooks (no resdoctor) and check its declared label."""
    p = _probe(name)
    m = p.measure().measurement
    assert m is not None
    for code, lab in labels(m).items():
        typer.echo(f"{code:20s} {lab.status:10s} {lab.note}")
    problems = probes.label_problems(p.truth, m)
    for problem in problems:
        typer.echo(f"LABEL PROBLEM: {problem}")
    raise typer.Exit(1 if problems else 0)


def eval_cmd(
    fast: Annotated[bool, typer.Option(help="Only the fast subset.")] = False,
    verify_fixes: Annotated[
        bool, typer.Option(help="Re-run each sick probe with the top fix.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    probe: Annotated[list[str], typer.Option(help="Only these probes (repeatable).")] = [],  # noqa: B006
    labels_: Annotated[
        bool, typer.Option("--labels/--no-labels", help="Re-measure every label too.")
    ] = True,
    keep: Annotated[str, typer.Option(help="Keep the run files in this folder.")] = "",
    remedies: Annotated[
        bool,
        typer.Option(
            help="Also re-run each sick probe with its known remedy (is it curable at all?)."
        ),
    ] = False,
) -> None:
    """Run the probes and score resdoctor: accuracy, precision/recall, lead time, fixes."""
    from probes.evaluate import evaluate
    from probes.report import render, to_json

    chosen = [_probe(n) for n in (probe or probes.names(fast))]
    if keep:
        os.makedirs(keep, exist_ok=True)
    progress = None if as_json else (lambda line: typer.echo(line, err=True))
    ev = evaluate(
        chosen,
        verify_fixes=verify_fixes,
        check_labels=labels_,
        workdir=keep or None,
        progress=progress,
        remedies=remedies,
    )
    typer.echo(json.dumps(to_json(ev), indent=1) if as_json else render(ev))
    if any(o.label_problems for o in ev.outcomes):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the ``probe`` command group (list, run, label, eval) to a typer app."""
    group = typer.Typer(
        no_args_is_help=True,
        help="Probes: seeded sick runs that score resdoctor's diagnoses and fixes.",
    )
    group.command("list")(list_cmd)
    group.command("run")(run_cmd)
    group.command("label")(label_cmd)
    group.command("eval")(eval_cmd)
    app.add_typer(group, name="probe")


def standalone() -> typer.Typer:
    """The same commands at the top level (``python -m probes``)."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, help="resdoctor probes.")
    app.command("list")(list_cmd)
    app.command("run")(run_cmd)
    app.command("label")(label_cmd)
    app.command("eval")(eval_cmd)
    return app
