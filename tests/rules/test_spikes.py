"""loss-spike / grad-spike: just below and just above the thresholds, recovery, healthy runs
quiet (issue 18)."""

import numpy as np
import pytest

from resdoctor.rules.spikes import grad_spike, loss_spike
from resdoctor.rules.testing import make_run


def _loss(spike: float, steps: int = 200, at: tuple[int, ...] = (120,), stay: bool = False):
    rng = np.random.default_rng(0)
    loss = 1.0 + 0.01 * rng.standard_normal(steps)  # a flat loss: robust sigma ~0.01
    for s in at:
        if stay:
            loss[s:] = spike
        else:
            loss[s] = spike
    return make_run(steps, scalars={"loss": list(loss), "grad_norm_total": list(loss)})


@pytest.mark.parametrize("peak, fires", [(1.95, False), (2.05, True)])
def test_loss_spike_needs_twice_the_recent_median(peak, fires):
    found = loss_spike(_loss(peak))
    assert bool(found) is fires
    if fires:
        (f,) = found
        assert f.step == 120 and f.evidence["recovered"] == 1
        assert f.evidence["worst_sigmas"] > 6 and f.fixes[0].code == "skip-batch"


def test_sigmas_bar_on_a_noisy_loss():
    rng = np.random.default_rng(1)
    loss = 1.0 + 0.3 * rng.standard_normal(200)  # sigma 0.3
    loss[120] = 2.5  # x2.5 the median, but 5 sigma: noise, not a spike
    run = make_run(200, scalars={"loss": list(loss)})
    assert loss_spike(run) == []
    assert loss_spike(run, sigmas=4.0)


def test_spikes_are_counted_with_a_rate_and_warmup_is_ignored():
    run = _loss(3.0, at=(5, 60, 120, 180))  # step 5 is inside the first 10%: warm-up
    (f,) = loss_spike(run)
    assert f.evidence["steps"] == [60, 120, 180] and f.evidence["spikes"] == 3
    assert f.evidence["rate_per_10k_steps"] == pytest.approx(3 / 200 * 10_000)


def test_a_jump_that_stays_is_not_a_grad_spike():
    assert grad_spike(_loss(5.0, stay=True)) == []  # sustained: exploding-gradients' business
    (f,) = grad_spike(_loss(5.0))
    assert f.code == "grad-spike" and f.evidence["recovered"] == 1


def test_healthy_runs_are_quiet(healthy, converged, preact, zero_init):
    for run in (healthy, converged, preact, zero_init):
        assert loss_spike(run) == [] and grad_spike(run) == []
