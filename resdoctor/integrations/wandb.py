"""Weights & Biases integration: live signals, panels, findings and alerts in a W&B run.

``resdoctor.watch(model, opt, wandb=True)`` adds a ``WandbLogger``; ``attach_report`` adds a
report to an existing run (``resdoctor analyze RUN --wandb``). Needs ``pip install
resdoctor[wandb]``; wandb is imported only when one of these is used. See docs/wandb.md.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from resdoctor.findings import Finding
from resdoctor.integrations import _wandb_panels as panels
from resdoctor.integrations._wandb_html import heatmap_page, report_html
from resdoctor.recording.integration import Context

__all__ = ["CHART_FIELDS", "WandbLogger", "attach_report", "publish_report", "vega_spec"]

INSTALL_HINT = "resdoctor's W&B integration needs wandb: pip install resdoctor[wandb]"
# fields of the shipped Vega-Lite specs (resdoctor/vega/<name>.json) -> table columns
CHART_FIELDS: dict[str, dict[str, str]] = {
    "gradient_flow": {
        "step": "step",
        "module": "module",
        "depth": "depth",
        "value": "log10_grad_norm",
        "nonfinite": "nonfinite",
    },
    "branch_ratio": {"step": "step", "site": "site", "depth": "depth", "value": "branch_ratio"},
}
_TITLES = {
    "gradient_flow": "resdoctor: gradient flow (log10 gradient norm)",
    "branch_ratio": "resdoctor: branch ratio ‖F(x)‖/‖x‖ per site",
}


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return wandb


def vega_spec(name: str) -> dict[str, Any]:
    """The shipped Vega-Lite spec ``name`` (a key of ``CHART_FIELDS``), to save as a W&B custom
    chart preset; its ``${field:...}`` placeholders are the keys of ``CHART_FIELDS[name]``."""
    if name not in CHART_FIELDS:
        raise KeyError(f"no resdoctor chart {name!r}; one of {sorted(CHART_FIELDS)}")
    text = (resources.files("resdoctor") / "vega" / f"{name}.json").read_text("utf-8")
    return json.loads(text)


def _table(wandb: Any, data: panels.TableData) -> Any:
    return wandb.Table(columns=data.columns, data=data.rows)


def _builtin_charts(wandb: Any, run: Any, prefix: str) -> dict[str, Any]:
    """Charts from W&B's built-in presets: they render with no setup."""
    out: dict[str, Any] = {}
    ratio = panels.site_lines(run, "branch_ratio")
    if ratio.keys:
        out[f"{prefix}/charts/branch_ratio"] = wandb.plot.line_series(
            xs=ratio.xs, ys=ratio.ys, keys=ratio.keys, title=_TITLES["branch_ratio"], xname="step"
        )
    profile = panels.gradient_profile(run)
    if profile.keys:
        out[f"{prefix}/charts/gradient_profile"] = wandb.plot.line_series(
            xs=profile.xs,
            ys=profile.ys,
            keys=profile.keys,
            title="resdoctor: log10 gradient norm by depth (input → output)",
            xname="depth",
        )
    return out


def publish_report(
    run: Any,
    report: Any,
    *,
    prefix: str = "resdoctor",
    charts: Mapping[str, str] | None = None,
    max_rows: int = 20_000,
    commit: bool = True,
) -> None:
    """Log ``report`` into the W&B ``run``: the findings table, the panel tables and charts, the
    HTML summary, and the verdict in the run summary.

    Args:
        charts: custom chart presets saved in W&B from ``vega_spec`` (``{"gradient_flow":
            "entity/resdoctor-gradient-flow"}``); each is logged with ``wandb.plot_table``.
    """
    wandb = _import_wandb()
    flow = panels.gradient_flow(report.run, max_rows)
    data: dict[str, Any] = {
        f"{prefix}/findings": _table(wandb, panels.findings_table(report.findings)),
        f"{prefix}/tables/gradient_flow": _table(wandb, flow),
        f"{prefix}/tables/branch_ratio": _table(
            wandb, panels.site_table(report.run, max_rows=max_rows)
        ),
        f"{prefix}/report": wandb.Html(report_html(report, flow), inject=False),
        # the heatmap as its own panel, with no custom-chart preset to save first
        f"{prefix}/charts/gradient_flow": wandb.Html(heatmap_page(flow), inject=False),
        **_builtin_charts(wandb, report.run, prefix),
    }
    for name, spec in (charts or {}).items():
        table = data[f"{prefix}/tables/{name}"]  # KeyError: not a resdoctor chart
        data[f"{prefix}/charts/{name}_custom"] = wandb.plot_table(
            spec, table, dict(CHART_FIELDS[name]), {"title": _TITLES[name]}
        )
    if report.run.steps:
        data[f"{prefix}/step"] = report.run.steps - 1
    run.log(data, commit=commit)
    run.summary.update(
        {
            f"{prefix}/verdict": report.verdict,
            f"{prefix}/findings_count": len(report.findings),
            f"{prefix}/critical_count": sum(f.severity == "critical" for f in report.findings),
        }
    )


def _diagnose(ctx: Context, at_close: bool = False) -> Any:
    """Diagnose what the watcher has recorded so far (host memory only: no device sync); None
    (error recorded) when the diagnosis itself fails, so alerts can still fall back on events.
    At close under torch.distributed, rank 0 diagnoses the merged run file instead."""
    from resdoctor.report.analysis import analyze
    from resdoctor.runfile.run import Run

    try:
        if at_close and ctx.world_size > 1 and os.path.exists(ctx.path):
            return analyze(Run.load(ctx.path))
        return analyze(Run(ctx.state(), ctx.path))
    except Exception as e:  # noqa: BLE001 - reported, never raised into the training loop
        ctx.record_error("wandb.analyze", e)
        return None


class WandbLogger:
    """Streams resdoctor into a W&B run: the per-step signals every ``every`` steps, an alert as
    soon as a critical problem (a NaN/Inf onset) shows up, and the report at close.

    Args:
        run: ``True`` for the active run (``wandb.run``, looked up when first needed), a wandb
            ``Run``, or a dict of these arguments with the run under ``"run"``.
        every: log the signals at every N-th step (the latest completed step at each multiple).
        prefix: key prefix; every key uses ``{prefix}/step`` (the watcher's step) as its x-axis.
        signals: per-module and per-site signals to log; default ``DEFAULT_SIGNALS``.
        alerts: send a ``wandb.alert`` (with the fix) for each critical finding.
        charts: custom chart presets saved in W&B (see ``publish_report``).
        analyze_every: also run the rules every N steps while training (0: only at a NaN/Inf
            onset and at close); host-side, but it costs a diagnosis each time.
        commit: None (default): resdoctor's rows ride on your own ``wandb.log`` rows
            (``commit=False``), so it never advances W&B's ``_step``; when you do not log to W&B
            yourself it notices (``_step`` stood still since its last row) and commits its own.
            True / False force either.
        per_signal: modules or sites logged per signal, spread over depth (None: all of them).
        max_rows: rows at most in each panel table.
    """

    def __init__(
        self,
        run: Any = True,
        every: int = 10,
        *,
        prefix: str = "resdoctor",
        signals: Sequence[str] = panels.DEFAULT_SIGNALS,
        alerts: bool = True,
        charts: Mapping[str, str] | None = None,
        analyze_every: int = 0,
        commit: bool | None = None,
        per_signal: int | None = 12,
        max_rows: int = 20_000,
    ) -> None:
        if isinstance(run, Mapping):
            self.__init__(**{"every": every, **run})  # type: ignore[misc]
            return
        self._wandb = _import_wandb()
        unknown = sorted(set(charts or {}) - set(CHART_FIELDS))
        if unknown:
            raise ValueError(f"unknown resdoctor chart(s) {unknown}; known: {sorted(CHART_FIELDS)}")
        self.target, self.every, self.prefix = run, max(1, int(every)), prefix
        self.signals, self.alerts_on, self.charts = tuple(signals), alerts, dict(charts or {})
        self.analyze_every, self.commit, self.max_rows = analyze_every, commit, max_rows
        self.per_signal = per_signal
        self._run_step: int | None = None  # W&B's _step right after our last row
        self._pending = False  # our last row rides on a row nobody has committed yet
        self.alerts: list[dict[str, Any]] = []  # every alert sent, also in the run summary
        self._alerted: set[tuple[str, str | None]] = set()
        self._used: Any = None  # the run we log to (its metrics are defined)
        self._logged, self._next_due, self._seen_events = -1, 0, 0
        self._live_gate = self._next_analysis = 0
        self._warned = False

    # -- the run ---------------------------------------------------------------------------
    def _resolve(self, ctx: Context) -> Any:
        run = self.target
        if run is True:  # the active run; if it went away, the one we logged to (finished)
            run = self._wandb.run or self._used
        if run is None or getattr(run, "_is_finished", False):
            if not self._warned and ctx.rank == 0:
                self._warned = True
                why = (
                    "the wandb run has finished: close the watcher before wandb.finish()"
                    if run is not None
                    else "no wandb run is active: call wandb.init() before training"
                )
                warnings.warn(
                    f"resdoctor: {why}. Nothing more is logged to W&B; the run file "
                    "is still written.",
                    stacklevel=3,
                )
            return None
        if self._used is not run:
            run.define_metric(f"{self.prefix}/step")
            run.define_metric(f"{self.prefix}/*", step_metric=f"{self.prefix}/step")
            self._used = run
        return run

    def _safely(self, ctx: Context, where: str, fn: Callable[..., Any], *args: Any) -> None:
        """One failing part (a table, an alert) must not stop the others nor the training."""
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - reported, never raised into the training loop
            ctx.record_error(f"wandb.{where}", e)
            if ctx.closed:
                warnings.warn(f"resdoctor: W&B {where} failed: {e}", stacklevel=3)

    # -- integration protocol ----------------------------------------------------------------
    def on_step(self, ctx: Context) -> None:
        """After each ``log()``: log the latest step when due; react to new NaN/Inf onsets."""
        latest = ctx.latest()
        if not latest:
            return
        run = self._resolve(ctx)
        if run is None:
            return
        step = int(latest["step"])
        if step >= self._next_due and step != self._logged:
            self._safely(ctx, "log", self._log_step, run, ctx, latest)
            self._next_due = (step // self.every + 1) * self.every
        if ctx.events(self._seen_events) and step >= self._live_gate:
            self._live_gate = step + self.every  # at most one diagnosis per `every` steps
            self._on_events(run, ctx)
        elif self.analyze_every and step >= self._next_analysis:
            self._next_analysis = step + self.analyze_every
            self._check(run, ctx, [], log_table=False)

    def on_close(self, ctx: Context) -> None:
        """Log the last step, then the report (tables, charts, HTML) and the critical alerts."""
        run = self._resolve(ctx)
        if run is None:
            return
        latest = ctx.latest()
        if latest and int(latest["step"]) != self._logged:
            self._safely(ctx, "log", self._log_step, run, ctx, latest)
        report = _diagnose(ctx, at_close=True)
        if report is not None:
            self._safely(
                ctx,
                "report",
                lambda: publish_report(
                    run,
                    report,
                    prefix=self.prefix,
                    charts=self.charts,
                    max_rows=self.max_rows,
                    # at close: one row with the last step, committed by your wandb.finish()
                    commit=bool(self.commit),
                ),
            )
        self._alert_findings(run, ctx, report, self._new_onsets(ctx))

    # -- parts ---------------------------------------------------------------------------------
    def _commit(self, run: Any) -> bool:
        """Whether our row is a row of its own: only when you do not log to W&B yourself
        (W&B's step stood still since our last row, which is then still pending)."""
        if self.commit is not None:
            return self.commit
        still = self._run_step is not None and getattr(run, "step", None) == self._run_step
        if still and self._pending:  # commit our previous row first, or this one replaces it
            run.log({}, commit=True)
            self._pending = False
        return still

    def _log(self, run: Any, row: dict[str, Any]) -> None:
        commit = self._commit(run)
        run.log(row, commit=commit)
        self._pending = not commit
        self._run_step = getattr(run, "step", None)

    def _log_step(self, run: Any, ctx: Context, latest: dict[str, Any]) -> None:
        sites = [s.name for s in ctx.sites or []]
        row = panels.step_metrics(
            latest, ctx.param_modules, sites, self.prefix, self.signals, self.per_signal
        )
        self._log(run, row)
        self._logged = int(latest["step"])

    def _new_onsets(self, ctx: Context) -> list[dict[str, Any]]:
        """Non-finite onsets not seen yet; AMP-skipped overflows are normal and left out."""
        new = ctx.events(self._seen_events)
        self._seen_events += len(new)
        return [
            e
            for e in new
            if e.get("kind") == "nonfinite" and not (e.get("detail") or {}).get("amp_skipped")
        ]

    def _on_events(self, run: Any, ctx: Context) -> None:
        onsets = self._new_onsets(ctx)
        if onsets:
            self._check(run, ctx, onsets, log_table=True)

    def _check(self, run: Any, ctx: Context, onsets: list[dict[str, Any]], log_table: bool) -> None:
        """Diagnose now and alert new critical findings (the findings table is logged once,
        with the report at close)."""
        self._alert_findings(run, ctx, _diagnose(ctx), onsets)

    def _alert_findings(
        self, run: Any, ctx: Context, report: Any, onsets: list[dict[str, Any]]
    ) -> int:
        """Alert each critical finding once, or the raw onset when no rule reported it."""
        if not self.alerts_on:
            return 0
        findings = report.findings if report is not None else ()
        critical = [f for f in findings if f.severity == "critical"]
        root = report.root_cause if report is not None else None
        if critical and root is not None and root not in critical:
            critical.insert(0, root)  # the root cause first, whatever its own severity
        sent = 0
        for f in critical:
            title, body = panels.alert_text(f, ctx.path, root_cause=f is root)
            sent += self._alert(run, ctx, (f.code, f.location), title, body, finding=f)
        if onsets and not any(f.code == "nonfinite" for f in critical):
            e = onsets[0]
            title, text = panels.event_alert(e, ctx.path)
            sent += self._alert(
                run,
                ctx,
                ("nonfinite", None),
                title,
                text,
                step=e.get("step"),
                location=e.get("module"),
            )
        return sent

    def _alert(
        self,
        run: Any,
        ctx: Context,
        key: tuple[str, str | None],
        title: str,
        text: str,
        finding: Finding | None = None,
        step: int | None = None,
        location: str | None = None,
    ) -> int:
        if key in self._alerted:
            return 0
        self._alerted.add(key)
        record = {
            "title": title,
            "text": text,
            "level": "ERROR",
            "code": key[0],
            "step": finding.step if finding else step,
            "location": finding.location if finding else location,
        }
        self.alerts.append(record)
        level = self._wandb.AlertLevel.ERROR
        self._safely(ctx, "alert", lambda: run.alert(title=title, text=text, level=level))
        self._safely(
            ctx, "summary", run.summary.update, {f"{self.prefix}/alerts": list(self.alerts)}
        )
        return 1


def attach_report(
    report: Any, project: str | None = None, run_id: str | None = None, entity: str | None = None
) -> str:
    """Attach ``report`` (findings table, panels, HTML summary, verdict) to a W&B run.

    With ``run_id`` that run is resumed (it must exist); otherwise the active run is used, or a
    new run is started in ``project`` (default "resdoctor"). Returns where it went: the run's URL,
    or its local directory in offline mode (``wandb sync`` it). A run opened here is finished here.
    """
    wandb = _import_wandb()
    run, own = _open_run(wandb, report, project, run_id, entity)
    try:
        run.define_metric("resdoctor/step")
        run.define_metric("resdoctor/*", step_metric="resdoctor/step")
        publish_report(run, report)
        return run.url or os.path.dirname(run.dir)
    finally:
        if own:
            run.finish()


def _open_run(
    wandb: Any, report: Any, project: str | None, run_id: str | None, entity: str | None
) -> tuple[Any, bool]:
    """The run to attach to, and whether it was opened here (then it is finished here)."""
    active = wandb.run
    if active is not None and run_id in (None, active.id):
        return active, False
    if run_id is not None:  # "create_new": an active run of the user's stays as it is
        return wandb.init(
            project=project, entity=entity, id=run_id, resume="must", reinit="create_new"
        ), True
    name = os.path.basename(str(report.run.path or "run"))
    return wandb.init(
        project=project or "resdoctor",
        entity=entity,
        job_type="resdoctor-analyze",
        name=f"resdoctor {name}",
    ), True
