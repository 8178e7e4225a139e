import numpy as np
import pytest

from resdoctor.rules.loss_divergence import loss_divergence
from resdoctor.rules.testing import make_run


def _curve(rise: float, tail: int = 10, recover_after: int | None = None):
    down = list(np.linspace(2.0, 0.2, 30))  # best 0.2, progress 1.8 -> line 0.9
    up = [0.2 + rise] * tail
    back = [0.2] * 10 if recover_after is not None else []
    loss = down + up + back
    return make_run(len(loss), scalars={"loss": loss})


@pytest.mark.parametrize("rise, fires", [(0.85, False), (0.95, True)])
def test_rise_threshold(rise, fires):
    found = loss_divergence(_curve(rise))
    assert bool(found) is fires
    if fires:
        f = found[0]
        # the loss jumped at step 30; a rolling median lags by at most half its window
        assert f.severity == "critical"
        assert 30 <= f.step <= 30 + f.evidence["smoothing_window"] // 2
        assert f.evidence["best_step"] == 29 and f.evidence["recovered"] is False


def test_one_recovered_spike_is_quiet_two_are_oscillation():
    down = list(np.linspace(2.0, 0.2, 30))
    spike = [2.0] * 4 + [0.2] * 6
    assert loss_divergence(make_run(40, scalars={"loss": down + spike})) == []
    (f,) = loss_divergence(make_run(50, scalars={"loss": down + spike + spike}))
    assert f.severity == "warning" and f.evidence["episodes"] == 2


def test_noise_around_a_converged_loss_is_quiet():
    rng = np.random.default_rng(0)
    loss = list(np.geomspace(2.0, 1e-4, 60)) + list(1e-4 * (1 + rng.random(60) * 5))
    assert loss_divergence(make_run(120, scalars={"loss": loss})) == []


def test_never_improving_run_must_rise_a_tenth_above_its_start():
    flat = [2.0] * 20
    assert loss_divergence(make_run(30, scalars={"loss": flat + [2.19] * 10})) == []
    assert loss_divergence(make_run(30, scalars={"loss": flat + [2.21] * 10}))


def test_batch_to_batch_swings_are_not_divergence():
    # a loss that cycles with the batches (period 8) while it slowly improves
    cycle = np.array([0.0, 0.25, 0.3, 0.22, 0.15, 0.05, -0.05, 0.1])
    loss = [0.5 * 0.99**t + cycle[t % 8] for t in range(64)]
    assert loss_divergence(make_run(64, scalars={"loss": loss})) == []
    jumped = loss[:40] + [x + 1.0 for x in loss[40:]]  # the same noise, then a real jump
    (f,) = loss_divergence(make_run(64, scalars={"loss": jumped}))
    assert f.severity == "critical" and 40 <= f.step <= 44


def test_real_sick_run_diverges_before_the_nan(sick):
    (f,) = loss_divergence(sick)
    assert f.severity == "critical" and f.step < int(sick.nonfinite["step"].iloc[0])
    lower = next(x for x in f.fixes if x.code == "lower-lr")
    assert lower.params["current_lr"] == 0.01 and lower.params["factor"] < 1


def test_healthy_runs_are_quiet(healthy, converged, zero_init):
    for run in (healthy, converged, zero_init):
        assert loss_divergence(run) == []
