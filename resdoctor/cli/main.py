"""The ``resdoctor`` command line (typer). Thin: parse, call the core, render.

Exit codes: 0 done, 1 a finding at or above ``--fail-on``, 2 unreadable or invalid input (one
line on stderr, no traceback; set RESDOCTOR_DEBUG=1 to see one): see ``resdoctor.errors``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from resdoctor.cli.errors import fail, one_line_errors

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="resdoctor: a training-health doctor for residual networks.",
)
OPTIONAL_COMMANDS = ("probes.cli", "resdoctor.cli.attribute")


def _version(value: bool) -> None:
    if value:
        from resdoctor.version import __version__

        typer.echo(f"resdoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """resdoctor: a training-health doctor for residual networks."""


class FailOn(str, Enum):
    never = "never"
    info = "info"
    warning = "warning"
    critical = "critical"


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


@app.command()
@one_line_errors()
def analyze(
    runs: list[Path] = typer.Argument(..., help="Run file(s); two or more: what changed."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (DESIGN.md 6)."),
    fail_on: FailOn = typer.Option(
        FailOn.never, "--fail-on", help="Exit 1 when a finding is at or above this severity."
    ),
    settings: list[str] = typer.Option(
        [],
        "--set",
        metavar="RULE.PARAM=VALUE",
        help="Tune a threshold, e.g. oversmoothing.similarity=0.95",
    ),
    config: Path | None = typer.Option(None, "--config", help="TOML or JSON thresholds file."),
    snippets: bool = typer.Option(True, "--snippets/--no-snippets", help="Show fix code."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Every finding's evidence and every fix of the plan."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="One line per run: verdict and root cause (for scripts)."
    ),
    wandb: bool = typer.Option(False, "--wandb", help="Attach the report to a W&B run."),
    wandb_project: str | None = typer.Option(None, "--wandb-project"),
    wandb_run_id: str | None = typer.Option(None, "--wandb-run-id"),
) -> None:
    """Diagnose one or more recorded runs."""
    from resdoctor.report.analysis import analyze as _analyze
    from resdoctor.rules import parse_settings, read_config
    from resdoctor.rules import settings as _settings

    if wandb_run_id and len(runs) > 1:
        fail("--wandb-run-id attaches one report: give one run")
    layered = _settings(read_config(config) if config else None, **_flat(parse_settings(settings)))
    reports = [_analyze(str(p), **_flat(layered)) for p in runs]
    if wandb:
        _attach(reports, wandb_project, wandb_run_id)
    if as_json:
        typer.echo(json.dumps(_json(reports), allow_nan=False))
    elif quiet:
        from resdoctor.cli.render import one_line

        for rep in reports:
            typer.echo(one_line(rep))
    else:
        _render_all(reports, snippets, verbose)
    if fail_on is not FailOn.never and any(r.fails(fail_on.value) for r in reports):
        raise typer.Exit(1)


def _flat(nested: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{code}.{k}": v for code, params in nested.items() for k, v in params.items()}


def _json(reports: list[Any]) -> dict[str, Any]:
    if len(reports) == 1:
        return reports[0].to_dict()
    from resdoctor.report.compare import compare
    from resdoctor.version import __version__

    pairs = [compare(a, b).to_dict() for a, b in zip(reports, reports[1:], strict=False)]
    return {
        "resdoctor": __version__,
        "reports": [r.to_dict() for r in reports],
        "comparison": compare(reports[0], reports[-1]).to_dict(),
        "comparisons": pairs,
    }


def _render_all(reports: list[Any], snippets: bool, verbose: bool = False) -> None:
    """Several runs lead with what changed, then each report."""
    from resdoctor.cli import render as _render
    from resdoctor.report.compare import compare

    console = _console()
    for a, b in zip(reports, reports[1:], strict=False):
        _render.comparison(console, compare(a, b))
        console.print()
    for rep in reports:
        _render.report(console, rep, snippets=snippets, verbose=verbose)
        console.print()


def _attach(reports: list[Any], project: str | None, run_id: str | None) -> None:
    try:
        from resdoctor.integrations.wandb import attach_report
    except ModuleNotFoundError as e:
        missing = "wandb" if e.name == "wandb" else "resdoctor's W&B integration"
        fail(f"--wandb needs {missing}: pip install resdoctor[wandb]")
    for rep in reports:
        attach_report(rep, project=project, run_id=run_id)


@app.command()
@one_line_errors()
def demo(
    out: Path = typer.Option(Path("resdoctor-demo.pt"), "--out", help="Where to save the run."),
    steps: int = typer.Option(80, min=10, help="Training steps."),
    seed: int = typer.Option(0, help="Seed of the model and the data."),
    healthy: bool = typer.Option(False, "--healthy", help="Record the healthy control instead."),
    fixed: bool = typer.Option(
        False, "--fixed", help="Also re-run with the top suggested fix and compare."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    snippets: bool = typer.Option(True, "--snippets/--no-snippets"),
) -> None:
    """Train a small sick residual network under watch, then diagnose it."""
    from resdoctor import demo as _demo
    from resdoctor.report.analysis import analyze as _analyze

    recipe = _demo.HEALTHY if healthy else _demo.SICK
    typer.echo(f"resdoctor demo: training {recipe.description} for {steps} steps...", err=True)
    _demo.record_demo(str(out), steps=steps, seed=seed, healthy=healthy)
    reports = [_analyze(str(out))]
    if fixed and not healthy:
        after = out.with_name(out.stem + "-fixed" + out.suffix)
        fix = _demo.top_fix(str(out))
        typer.echo(
            f"resdoctor demo: re-running with fix {fix.code if fix else '(none)'} "
            f"{fix.params if fix else ''}...",
            err=True,
        )
        _demo.record_demo(str(after), steps=steps, seed=seed, fixed=True, from_run=str(out))
        reports.append(_analyze(str(after)))
    if as_json:
        typer.echo(json.dumps(_json(reports), allow_nan=False))
        return
    _render_all(reports, snippets)
    saved = " ".join(str(r.run.path) for r in reports)
    typer.echo(f"Saved {saved}. Next: resdoctor analyze {saved}", err=True)


@app.command("rules")
def list_rules() -> None:
    """List the rules and their thresholds (tune with --set RULE.PARAM=VALUE)."""
    from rich.table import Table

    from resdoctor.rules import rules

    table = Table("rule", "summary", "thresholds (defaults)", show_lines=False)
    for r in rules():
        params = ", ".join(f"{k}={v!r}" for k, v in r.defaults.items())
        table.add_row(r.code, r.summary, params)
    _console().print(table)


@app.command("app")
@one_line_errors()
def app_command(
    runs: list[Path] = typer.Argument(None, help="Run file, and optionally a second to compare."),
    port: int | None = typer.Option(
        None, "--port", help="Port to serve on (streamlit's default 8501)."
    ),
    headless: bool = typer.Option(False, "--headless", help="Do not open a browser."),
) -> None:
    """Open the visual report (Streamlit) on one run, or two to compare."""
    try:
        import streamlit  # noqa: F401
    except ModuleNotFoundError:
        fail("the app needs streamlit: pip install resdoctor[app]")
    if len(runs or []) > 2:
        fail("give one run, or two to compare")
    page = Path(__file__).resolve().parent.parent / "app" / "main.py"
    cmd = [sys.executable, "-m", "streamlit", "run", str(page)]
    if port is not None:
        cmd += ["--server.port", str(port)]
    if headless:
        cmd += ["--server.headless", "true"]
    cmd += ["--browser.gatherUsageStats", "false", "--", *map(str, runs or [])]
    if os.name == "posix":  # become the server: a SIGTERM to `resdoctor app` stops it
        sys.stdout.flush()
        os.execv(sys.executable, cmd)
    raise typer.Exit(subprocess.call(cmd))


@app.command()
@one_line_errors()
def merge(
    run: Path = typer.Argument(
        ...,
        help="The merged run to write; its per-rank files "
        "(run.rank0.pt, run.rank1.pt, ...) are read.",
    ),
) -> None:
    """Merge the per-rank files of a distributed run (e.g. after a crash) into one run file."""
    from resdoctor.integrations.distributed import main as merge_ranks

    raise typer.Exit(merge_ranks([str(run)]))


@app.command()
@one_line_errors()
def export(
    run: Path = typer.Argument(..., help="The run file to export."),
    tensorboard: Path = typer.Option(
        ..., "--tensorboard", help="Log directory to write TensorBoard event files into."
    ),
) -> None:
    """Write a saved run as TensorBoard event files (scalars, gradient-flow image, report)."""
    from resdoctor.runfile.run import Run

    try:
        from resdoctor.integrations.tensorboard import export as to_tensorboard
    except ImportError as e:  # pragma: no cover - tensorboard is a dev dependency here
        fail(str(e))
    loaded = Run.load(str(run))
    try:
        out = to_tensorboard(loaded, tensorboard)
    except ImportError as e:
        fail(str(e))
    typer.echo(f"Wrote {out}. Next: tensorboard --logdir {out}", err=True)


def _register_optional(name: str) -> None:
    """Add the commands of an optional module (``register(app)``) when it is installed."""
    try:
        mod = importlib.import_module(name)
    except ModuleNotFoundError as e:
        parents = {name[:i] for i in range(len(name)) if name[i] == "."}
        if e.name == name or e.name in parents:
            return
        raise
    mod.register(app)


for _name in OPTIONAL_COMMANDS:
    _register_optional(_name)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
