import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _faults import LogBlock
from torch import nn

from resdoctor.rules.nonfinite import nonfinite
from resdoctor.rules.testing import make_run
from tests.rules.conftest import record


def _event_run(input_absmax: float):
    loss = [2.0] * 5 + [float("nan")] * 5
    return make_run(
        10,
        scalars={"loss": loss},
        modules=[("a", "Linear", 10), ("b", "LayerNorm", 4)],
        events=[
            {
                "step": 5,
                "module": "b",
                "phase": "forward",
                "detail": {"input_absmax": input_absmax, "amp_skipped": False},
            }
        ],
    )


def test_onset_step_module_phase_and_cause_below_overflow_threshold():
    (f,) = nonfinite(_event_run(9.9e3))
    assert (f.code, f.severity, f.step, f.location, f.phase) == (
        "nonfinite",
        "critical",
        5,
        "b",
        "forward",
    )
    assert f.evidence["cause"] == "op"
    assert f.fixes[0].code == "guard-op"
    assert f.fixes[0].params["module"] == "b"
    assert "eps = 1e-3" in f.fixes[0].snippet  # a LayerNorm: raise its eps


def test_overflow_just_above_threshold_puts_clip_or_lr_first():
    (f,) = nonfinite(_event_run(1.01e4))
    assert f.evidence["cause"] == "overflow"
    assert f.fixes[0].code in ("clip-gradients", "lower-lr")
    assert f.thresholds == {"overflow_absmax": 1e4}


def test_nan_loss_without_events_is_found_from_the_logged_loss():
    run = make_run(10, scalars={"loss": [1.0] * 7 + [float("nan")] * 3})
    (f,) = nonfinite(run)
    assert f.step == 7 and f.location is None


def test_nan_on_an_amp_skipped_step_is_not_a_failure():
    loss = [1.0] * 10
    grad = [1.0] * 10
    grad[3] = float("inf")
    run = make_run(
        10,
        scalars={"loss": loss, "grad_norm_total": grad},
        skipped_steps=[3],
        events=[{"step": 3, "module": "a", "phase": "backward", "detail": {"amp_skipped": True}}],
    )
    assert nonfinite(run) == []


@pytest.mark.parametrize("streak, fires", [(24, False), (25, True)])
def test_skip_streak_threshold(streak, fires):
    run = make_run(200, scalars={"loss": [1.0] * 200}, skipped_steps=range(60, 60 + streak))
    found = nonfinite(run)
    assert bool(found) is fires
    if fires:
        assert found[0].severity == "warning" and found[0].step == 60
        assert found[0].evidence["longest_streak"] == 25


@pytest.mark.parametrize("count, fires", [(19, False), (21, True)])
def test_skip_fraction_threshold_after_calibration(count, fires):
    # 150 steps, calibration 50: 100 judged steps; scattered skips (no streak)
    skips = list(range(0, 8)) + [52 + 4 * i for i in range(count)]
    run = make_run(150, scalars={"loss": [1.0] * 150}, skipped_steps=skips)
    assert bool(nonfinite(run)) is fires


def test_real_sick_run_names_the_recorded_onset(sick):
    first = sick.nonfinite.iloc[0]
    found = [f for f in nonfinite(sick) if f.severity == "critical"]
    assert len(found) == 1
    f = found[0]
    assert f.step == int(first["step"]) and f.location == first["module"]
    assert f.phase == "forward" and f.evidence["cause"] == "overflow"
    assert {x.code for x in f.fixes} >= {"clip-gradients", "lower-lr"}
    # issue 14: an overflowing Linear runs no NaN-prone op of its own: no guard-op to offer
    assert "guard-op" not in {x.code for x in f.fixes} and not sick.nan_ops.get(f.location)


def test_real_nan_made_by_an_op_points_at_the_block(runs_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), LogBlock(8, at=4), nn.Linear(8, 4))
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    run = record(str(runs_dir / "logblock.pt"), model, (x,), lambda o: F.cross_entropy(o, y), 8)
    (f,) = nonfinite(run)
    assert (f.step, f.location, f.phase) == (4, "1", "forward")
    assert f.evidence["cause"] == "op"
    assert f.fixes[0].code == "guard-op" and "'1'" in f.fixes[0].snippet


def test_gradscaler_calibration_skips_are_quiet(amp):
    assert len(amp.skipped_steps) >= 1  # the trap is real: the scaler did skip
    assert np.all([d.get("amp_skipped") for d in amp.nonfinite["detail"]])
    assert nonfinite(amp) == []
