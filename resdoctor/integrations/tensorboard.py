"""TensorBoard: resdoctor's signals as grouped scalars, and at close the gradient-flow heatmap
(an image) and the report (text).

``resdoctor.watch(model, opt, tensorboard="runs/exp1")`` (a log directory, or your own
``SummaryWriter``) adds a ``TensorBoardLogger``; ``resdoctor export run.pt --tensorboard DIR``
writes a saved run the same way (``export``). Lightning: the callback hands it the trainer's
``TensorBoardLogger`` writer. Needs the ``tensorboard`` package (``pip install
resdoctor[tensorboard]``); it is imported only when one of these is used. See docs/tensorboard.md.

Tags: ``resdoctor/loss`` (and every logged scalar), ``resdoctor/grad_norm_total``, and one
section per signal, ``resdoctor.grad_norm/<module>``, ``resdoctor.sites.branch_ratio/<site>``
(TensorBoard groups tags by what comes before the first ``/``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from resdoctor.integrations._wandb_panels import DEFAULT_SIGNALS, depth_order, spread
from resdoctor.recording.integration import Context
from resdoctor.runfile.signals import MODULE_SIGNALS

__all__ = ["TensorBoardLogger", "export", "gradient_flow_image", "report_markdown"]

INSTALL_HINT = (
    "resdoctor's TensorBoard output needs tensorboard: pip install resdoctor[tensorboard]"
)


def _writer(target: Any) -> tuple[Any, bool]:
    """``(writer, ours)``: a ``SummaryWriter`` on ``target`` (a log directory) or ``target``."""
    if hasattr(target, "add_scalar"):
        return target, False
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch's writer imports tensorboard
        raise ImportError(INSTALL_HINT) from e
    return SummaryWriter(log_dir=os.fspath(target)), True


def tag(prefix: str, signal: str, name: str) -> str:
    """The tag of a per-module or per-site value (one TensorBoard section per signal)."""
    section = signal if signal in MODULE_SIGNALS else f"sites.{signal}"
    return f"{prefix}.{section}/{name or '(root)'}"


class TensorBoardLogger:
    """Writes the latest step's signals every ``every`` steps; the heatmap and the report at
    close. Host values only (``Context.latest()``): no device sync.

    Args:
        target: a log directory or a ``SummaryWriter`` (yours stays open at close).
        every: write every N-th step (step 0 included).
        prefix: tag prefix.
        signals: per-module and per-site signals to write.
        per_signal: modules or sites per signal, spread over depth (None: all).
    """

    def __init__(
        self,
        target: Any,
        every: int = 10,
        *,
        prefix: str = "resdoctor",
        signals: Sequence[str] = DEFAULT_SIGNALS,
        per_signal: int | None = None,
    ) -> None:
        self.writer, self._ours = _writer(target)
        self.every, self.prefix = max(1, int(every)), prefix
        self.signals, self.per_signal = tuple(signals), per_signal
        self._written = -1

    def on_step(self, ctx: Context) -> None:
        latest = ctx.latest()
        if not latest or ctx.rank != 0:
            return
        step = int(latest["step"])
        if step % self.every == 0 and step != self._written:
            self._write(ctx, latest)

    def on_close(self, ctx: Context) -> None:
        if ctx.rank != 0:
            return
        latest = ctx.latest()
        if latest and int(latest["step"]) != self._written:
            self._write(ctx, latest)
        try:
            from resdoctor.report.analysis import analyze
            from resdoctor.runfile.run import Run

            run = Run(ctx.state(), ctx.path)
            _summary(self.writer, run, analyze(run), self.prefix)
        except Exception as e:  # noqa: BLE001 - a view must never fail the run
            ctx.record_error("tensorboard", e)
        self.writer.flush()
        if self._ours:
            self.writer.close()

    def _write(self, ctx: Context, latest: dict[str, Any]) -> None:
        step = int(latest["step"])
        sites = [s.name for s in ctx.sites or []]
        for key, value in latest.get("scalars", {}).items():
            self.writer.add_scalar(f"{self.prefix}/{key}", float(value), step)
        present = latest.get("present") or {}
        for signal in self.signals:
            values = latest.get(signal)
            names = ctx.param_modules if signal in MODULE_SIGNALS else sites
            if values is None or len(values) != len(names):
                continue
            values = np.asarray(values, dtype=np.float64)
            mask = np.asarray(present.get(signal, ~np.isnan(values)), dtype=bool)
            for i in spread(len(names), self.per_signal):
                if signal in MODULE_SIGNALS or mask[i]:
                    self.writer.add_scalar(
                        tag(self.prefix, signal, names[i]), float(values[i]), step
                    )
        self._written = step


def export(run: Any, logdir: str | os.PathLike[str], prefix: str = "resdoctor") -> str:
    """Write a saved ``Run`` (every recorded row of every signal) as TensorBoard event files
    under ``logdir``, with the heatmap and the report; returns the directory."""
    from resdoctor.report.analysis import analyze

    writer, _ = _writer(logdir)
    try:
        scalars = run.scalars()
        for name in scalars.columns:
            for step, value in scalars[name].dropna().items():
                writer.add_scalar(f"{prefix}/{name}", float(value), int(step))
        for signal in run.signals:
            if signal == "scalars":
                continue
            measured = run.measured(signal)
            frame = run.series(signal)
            for name in frame.columns:
                rows = frame[name][measured[name].to_numpy()] if name in measured else frame[name]
                for step, value in rows.items():
                    writer.add_scalar(tag(prefix, signal, name), float(value), int(step))
        _summary(writer, run, analyze(run), prefix)
    finally:
        writer.close()
    return os.fspath(logdir)


def _summary(writer: Any, run: Any, report: Any, prefix: str) -> None:
    step = max(run.steps - 1, 0)
    image = gradient_flow_image(run)
    if image is not None:
        writer.add_image(f"{prefix}/gradient_flow", image, step, dataformats="HWC")
    writer.add_text(f"{prefix}/report", report_markdown(report), step)


def gradient_flow_image(run: Any, scale: int = 4) -> np.ndarray | None:
    """The gradient-flow heatmap as an RGB array (rows: modules input -> output, columns:
    steps): log10 gradient norm on a blue-to-yellow ramp between its 2nd and 98th percentiles,
    non-finite cells magenta. None without gradient norms."""
    df = run.series("grad_norm")
    if df.empty:
        return None
    names = depth_order(run, list(df.columns))
    values = df[names].to_numpy(dtype=np.float64).T  # modules x steps
    bad = ~np.isfinite(values)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(np.where(bad | (values <= 0), np.nan, values))
    finite = logs[np.isfinite(logs)]
    lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
    t = np.clip((logs - lo) / max(hi - lo, 1e-12), 0, 1)
    t = np.nan_to_num(t, nan=0.0)
    low, high = np.array([0.15, 0.2, 0.55]), np.array([0.98, 0.9, 0.15])
    rgb = low[None, None, :] * (1 - t[..., None]) + high[None, None, :] * t[..., None]
    rgb[bad] = (1.0, 0.0, 1.0)
    rgb = np.repeat(np.repeat(rgb, scale, axis=0), max(1, scale // 2), axis=1)
    return (rgb * 255).astype(np.uint8)


def report_markdown(report: Any) -> str:
    """The report as Markdown for TensorBoard's text tab: verdict, root cause, story, plan,
    findings."""
    lines = [f"**{report.verdict.upper()}**, {report.run.steps} steps"]
    root = report.root_cause
    if root is not None:
        lines += ["", f"**Root cause**: `{root.code}`: {report.story or root.title}"]
    if report.plan:
        lines += ["", "**Plan**", ""]
        lines += [f"{i + 1}. `{f.code}`: {f.title}" for i, f in enumerate(report.plan)]
    if report.findings:
        lines += ["", "| severity | code | step | location | title |", "|---|---|---|---|---|"]
        for f in report.findings:
            step = "-" if f.step is None else str(f.step)
            lines.append(f"| {f.severity} | {f.code} | {step} | {f.location or '-'} | {f.title} |")
    return "\n".join(lines)
