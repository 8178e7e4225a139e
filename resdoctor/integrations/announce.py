"""Heard while training: one ``logging`` line at the first NaN/Inf onset, one verdict at close.

On by default (``watch(..., quiet=True)`` silences it). Host-side only: it reads the events the
journal already holds after each ``log()`` (no device sync) and never raises into the loop. The
logger is ``logging.getLogger("resdoctor")``; Python prints its warnings to stderr when no
handler is configured.
"""

from __future__ import annotations

import logging

from resdoctor.recording.integration import Context

LOGGER = logging.getLogger("resdoctor")


class Announcer:
    """The first critical onset as it happens, and the run's verdict at ``close()``."""

    def __init__(self) -> None:
        self._seen = 0
        self._announced = False

    def on_step(self, ctx: Context) -> None:
        if self._announced:
            return
        new = ctx.events(self._seen, pending=False)  # every step: it must cost nothing
        self._seen += len(new)
        for e in new:
            if e.get("kind") == "nonfinite" and not (e.get("detail") or {}).get("amp_skipped"):
                self._announced = True
                LOGGER.warning(
                    "resdoctor: NaN/Inf at step %s in %s (%s)%s; run: resdoctor analyze %s",
                    e.get("step"),
                    e.get("module") or "the model",
                    e.get("phase"),
                    f" on rank {e['rank']}" if ctx.world_size > 1 else "",
                    ctx.path,
                )
                return

    def on_close(self, ctx: Context) -> None:
        if ctx.rank != 0:
            return
        try:
            from resdoctor.report.analysis import analyze
            from resdoctor.runfile.run import Run

            report = analyze(Run(ctx.state(), ctx.path))
        except Exception as e:  # noqa: BLE001 - a verdict is a courtesy, never an error
            ctx.record_error("announce", e)
            return
        root = report.root_cause
        where = ""
        if root is not None and report.verdict != "healthy":
            where = f": {root.title}" + (
                f"; first fix: {report.plan[0].code}" if report.plan else ""
            )
        level = logging.INFO if report.verdict == "healthy" else logging.WARNING
        LOGGER.log(
            level,
            "resdoctor: %s after %d steps%s; details: resdoctor analyze %s",
            report.verdict.upper(),
            report.run.steps,
            where,
            ctx.path,
        )
