"""stalled-training: just below and above min_drop, not when gradients vanish or explode,
healthy runs quiet (issue 18)."""

import math

import numpy as np
import pytest

from resdoctor.rules.stalled_training import stalled_training
from resdoctor.rules.testing import make_run


def _run(drop: float, grad: float = 1.0, steps: int = 100, start: float = math.log(10)):
    rng = np.random.default_rng(0)
    loss = start * (1 - drop * np.linspace(0, 1, steps)) + 0.001 * rng.standard_normal(steps)
    g = grad * (1 + 0.05 * rng.standard_normal(steps))
    return make_run(
        steps,
        scalars={"loss": list(loss), "grad_norm_total": list(g)},
        modules=[("fc", "Linear", 10)],
        module_series={"update_ratio": {"fc": [1e-6] * steps}},
    )


@pytest.mark.parametrize("drop, fires", [(0.06, False), (0.03, True)])
def test_min_drop(drop, fires):
    found = stalled_training(_run(drop))
    assert bool(found) is fires
    if fires:
        (f,) = found
        assert f.evidence["chance_classes"] == 10  # ln(10): chance level for 10 classes
        # updates of 1e-6 of the weights: raise the LR first, then check one batch can be fit
        assert [x.code for x in f.fixes] == ["raise-lr", "overfit-batch"]
        assert f.fixes[0].params["factor"] == 100.0


def test_too_short_or_vanishing_or_exploding_is_not_stalled():
    assert stalled_training(_run(0.0, steps=40)) == []
    assert stalled_training(_run(0.0, grad=1e-9)) == []  # vanishing-gradients' business
    steps = 100
    run = make_run(
        steps,
        scalars={"loss": [2.0] * steps, "grad_norm_total": list(np.geomspace(1, 1e4, steps))},
    )
    assert stalled_training(run) == []  # exploding-gradients' business


def test_healthy_runs_are_quiet(healthy, converged, preact, zero_init):
    for run in (healthy, converged, preact, zero_init):
        assert stalled_training(run) == []
