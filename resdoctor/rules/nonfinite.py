"""nonfinite: the first NaN/Inf (step, module, phase), and GradScaler skips that never stop."""

from __future__ import annotations

from typing import Any

import numpy as np

from resdoctor import fixes
from resdoctor.findings import Finding, Fix
from resdoctor.fixes.snippets import sig
from resdoctor.rules._common import clip_fix, grad_total, lr_fix, module_types
from resdoctor.rules._registry import rule
from resdoctor.rules._timeline import Timeline, timeline
from resdoctor.runfile.run import Run

FP16_MAX = 65504.0


@rule("nonfinite")
def nonfinite(
    run: Run,
    *,
    overflow_absmax: float = 1e4,
    skip_fraction: float = 0.2,
    skip_streak: int = 25,
    calibration_steps: int = 50,
) -> list[Finding]:
    """NaN/Inf in the forward, backward or optimizer step; persistent AMP skips.

    Args:
        overflow_absmax: largest |input| (activation units) of the NaN-making op above which its
            input was already huge, so the NaN is an overflow of a blow-up rather than a bad op
            (fp16 overflows at 65504).
        skip_fraction: share of steps (after the GradScaler's calibration) an AMP GradScaler may
            skip before it is a finding. A calibrated scaler skips about 1 in ``growth_interval``
            (2000) steps (PyTorch AMP docs; Micikevicius et al. 2018).
        skip_streak: consecutive skipped steps that mean gradients overflow at any loss scale
            (25 halvings take the default scale 2^16 below 1e-3).
        calibration_steps: initial steps whose skips are the scaler finding its scale.
    """
    tl = timeline(run)
    out = []
    if tl.failure_step is not None:
        out.append(_onset(run, tl, overflow_absmax))
    amp = _amp(run, tl, skip_fraction, skip_streak, calibration_steps)
    if amp is not None:
        out.append(amp)
    return out


def _onset(run: Run, tl: Timeline, overflow_absmax: float) -> Finding:
    step = int(tl.failure_step or 0)
    ev = tl.failure or {}
    module, phase = ev.get("module"), ev.get("phase")
    detail = dict(ev.get("detail") or {})
    magnitude = _input_magnitude(detail)
    g = tl.healthy_series(grad_total(run))
    loss = tl.healthy_series(run.scalar("loss"))
    evidence: dict[str, Any] = {"first_step": step, "module": module, "phase": phase}
    if magnitude is not None:
        evidence["input_absmax"] = sig(magnitude, 3)
    if ev.get("rank") is not None and run.world_size > 1:
        evidence["rank"] = int(ev["rank"])
        evidence["seen_by"] = (ev.get("detail") or {}).get("seen_by", [])
    later = [
        f"{e.module or '<model>'}@{int(e.step)} {e.phase}"
        for e in run.nonfinite.itertuples()
        if (e.module, e.phase) != (module, phase)
    ][:5]
    evidence.update(onsets=int(len(run.nonfinite)), later_onsets=later)
    if not g.empty:
        evidence["grad_norm_before"] = sig(float(g.iloc[-1]), 3)
    if not loss.empty:
        evidence["loss_before"] = sig(float(loss.iloc[-1]), 3)
    overflow = (magnitude or 0.0) >= overflow_absmax
    evidence["cause"] = _cause(phase, module, overflow, detail)
    for key in ("values", "samples", "samples_affected", "batch", "seen_as", "received"):
        if key in detail:
            evidence[key] = detail[key]
    where = _where(module, phase)
    message = f"The first non-finite value appeared at step {step} in {where}" + _why(
        phase, module, overflow, magnitude, detail
    )
    return Finding(
        code="nonfinite",
        severity="critical",
        title=f"NaN/Inf at step {step} in {where}",
        message=message,
        step=step,
        location=module or None,
        phase=phase,
        evidence=evidence,
        fixes=tuple(_onset_fixes(run, tl, module, phase, detail, overflow)),
        rule="nonfinite",
        thresholds={"overflow_absmax": overflow_absmax},
    )


def _where(module: str | None, phase: str | None) -> str:
    if phase == "input":
        return f"the input `{module}` the model received"
    if phase == "loss":
        return "the loss computation"
    if phase:
        return f"{module or 'the model'} ({phase} pass)"
    return "the logged loss"


def _cause(phase: str | None, module: str | None, overflow: bool, detail: dict[str, Any]) -> str:
    if phase in ("input", "loss"):
        return phase
    if detail.get("received"):
        return "received"
    return "overflow" if overflow else ("op" if module is not None else "unknown")


def _why(
    phase: str | None,
    module: str | None,
    overflow: bool,
    magnitude: float | None,
    detail: dict[str, Any],
) -> str:
    if phase == "input":
        return (
            f": {detail.get('values', '?')} NaN/Inf value(s) in "
            f"{detail.get('samples_affected', '?')} sample(s) (batch positions "
            f"{detail.get('samples', [])}) before any module ran: the data made it, not the model."
        )
    if phase == "loss":
        return (
            f": every module output was finite, but {detail.get('seen_as', 'the loss')} was not, "
            "so the loss computation made it (log(0), 0/0 or a non-finite target)."
        )
    if detail.get("received"):
        return (
            ": this rank's own backward stayed finite, so the NaN arrived through the gradient "
            "all-reduce; the merged run names the rank where it began."
        )
    if overflow:
        return (
            f": its inputs already reached {magnitude:.3g}, so values blew up before they "
            "overflowed."
        )
    if module and phase == "backward":
        return ": the gradient reaching it was finite, so its backward made it."
    return ": its inputs were finite, so this op made it." if module else "."


def _onset_fixes(
    run: Run,
    tl: Timeline,
    module: str | None,
    phase: str | None,
    detail: dict[str, Any],
    overflow: bool,
) -> list[Fix]:
    if phase == "input":
        return [
            fixes.check_inputs(
                str(module),
                detail.get("samples", []),
                int(detail.get("values", 0)),
                int(detail.get("batch", 0)),
            )
        ]
    if phase == "loss":
        return [fixes.stable_loss(str(detail.get("seen_as", "the logged loss")))]
    out: list[Fix] = []
    guard = None
    ops = run.nan_ops.get(module or "", [])
    types = module_types(run)
    if module is not None and (ops or types.get(module) in fixes.NORM_TYPES):
        guard = fixes.guard_op(
            module, types.get(module, "module"), phase or "forward", _input_magnitude(detail), ops
        )
    if not overflow and guard is not None:
        out.append(guard)
    clip = clip_fix(run, tl, tl.failure_step)
    if overflow and clip is not None:
        out.append(clip)
    out.append(lr_fix(run, tl, tl.failure_step))
    if overflow and guard is not None:
        out.append(guard)
    if any(bool((d or {}).get("amp_skipped")) for d in run.nonfinite["detail"]) or (
        overflow and (_input_magnitude(detail) or 0.0) < FP16_MAX * 10
    ):
        out.append(
            fixes.mixed_precision(
                "Under float16 autocast values above 65504 overflow: bfloat16 has float32's range."
            )
        )
    return out


def _input_magnitude(detail: dict[str, Any]) -> float | None:
    """Largest |input| of the NaN-making op (older run files recorded an RMS instead)."""
    value = detail.get("input_absmax", detail.get("input_rms"))
    return None if value is None else float(value)


def _amp(
    run: Run, tl: Timeline, skip_fraction: float, skip_streak: int, calibration: int
) -> Finding | None:
    skipped = np.array(sorted(tl.skipped), dtype=np.int64)
    if skipped.size == 0:
        return None
    streak, streak_start = _longest_streak(skipped)
    after = skipped[skipped >= calibration]
    span = max(run.steps - calibration, 1)
    fraction = after.size / span if run.steps > calibration else 0.0
    if streak < skip_streak and fraction < skip_fraction:
        return None
    evidence = {
        "skipped_steps": int(skipped.size),
        "skipped_fraction": sig(fraction, 3),
        "longest_streak": int(streak),
        "streak_start": int(streak_start),
        "first_skip": int(skipped[0]),
    }
    onset = int(streak_start) if streak >= skip_streak else int(after[0])
    msg = (
        f"The AMP GradScaler skipped {skipped.size} steps ({fraction:.0%} after its "
        f"{calibration}-step calibration; longest streak {streak}): the gradients overflow "
        "at every loss scale, so those steps train nothing."
    )
    return Finding(
        code="nonfinite",
        severity="warning",
        title="AMP GradScaler keeps skipping steps",
        message=msg,
        step=onset,
        location=None,
        phase="backward",
        evidence=evidence,
        fixes=(fixes.mixed_precision(msg), lr_fix(run, tl, onset)),
        rule="nonfinite",
        thresholds={
            "skip_fraction": skip_fraction,
            "skip_streak": skip_streak,
            "calibration_steps": calibration,
        },
    )


def _longest_streak(steps: np.ndarray) -> tuple[int, int]:
    best, best_start, count, start = 0, int(steps[0]), 0, int(steps[0])
    prev = None
    for s in steps:
        count = count + 1 if prev is not None and s == prev + 1 else 1
        start = start if count > 1 else int(s)
        if count > best:
            best, best_start = count, start
        prev = s
    return best, best_start
