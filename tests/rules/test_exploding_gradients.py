import numpy as np
import pytest

from resdoctor.rules.exploding_gradients import exploding_gradients
from resdoctor.rules.testing import make_run


def _spike(value: float, steps: int = 30, at: int = 20):
    g = [1.0] * steps
    g[at] = value
    return make_run(steps, scalars={"grad_norm_total": g, "loss": [1.0] * steps})


@pytest.mark.parametrize("value, fires", [(9.9, False), (10.1, True)])
def test_surge_factor_threshold(value, fires):
    found = exploding_gradients(_spike(value))
    assert bool(found) is fires
    if fires:
        f = found[0]
        assert f.step == 20 and f.severity == "warning"
        assert f.evidence["max_surge_ratio"] == pytest.approx(10.1)
        assert f.thresholds["surge_factor"] == 10.0


def test_surge_factor_is_tunable():
    assert exploding_gradients(_spike(10.1), surge_factor=20.0) == []


@pytest.mark.parametrize("rate, fires", [(1.1, False), (1.2, True)])
def test_growth_without_surges(rate, fires):
    g = list(rate ** np.arange(40))
    run = make_run(40, scalars={"grad_norm_total": g})
    found = exploding_gradients(run)
    assert bool(found) is fires
    if fires:
        assert found[0].evidence["surges"] == 0 and found[0].evidence["growth"] >= 100


def test_converged_noise_below_the_early_level_is_quiet():
    # gradients decay 1000x, then bounce 10x+ around a tiny level: not an explosion
    g = list(np.geomspace(1.0, 1e-3, 40)) + [1e-3, 1.5e-2, 1e-3, 1e-3, 1.2e-2, 1e-3] * 5
    run = make_run(len(g), scalars={"grad_norm_total": g})
    assert exploding_gradients(run) == []


def test_location_is_the_module_that_surged_first():
    n = 30
    a, b = [1.0] * n, [1.0] * n
    b[18] = 50.0  # b surges two steps before the global norm does
    a[20] = b[20] = 100.0
    total = list(np.sqrt(np.square(a) + np.square(b)))
    run = make_run(
        n,
        scalars={"grad_norm_total": total},
        modules=[("a", "Linear", 4), ("b", "Linear", 4)],
        module_series={"grad_norm": {"a": a, "b": b}},
    )
    (f,) = exploding_gradients(run)
    assert f.step == 18 and f.location == "b"


def test_real_sick_run_explodes_before_the_nan(sick):
    (f,) = exploding_gradients(sick)
    nan_step = int(sick.nonfinite["step"].iloc[0])
    assert f.severity == "critical" and f.step < nan_step
    assert f.location in set(sick.modules["name"])
    clip = next(x for x in f.fixes if x.code == "clip-gradients")
    g = sick.scalar("grad_norm_total")
    before = g[g.index < f.step]
    assert clip.params["max_norm"] == pytest.approx(float(before.median()), rel=0.05)


def test_healthy_runs_are_quiet(healthy, converged, preact):
    for run in (healthy, converged, preact):
        assert exploding_gradients(run) == []


@pytest.mark.parametrize("optimizer, first", [("SGD", "clip-gradients"), ("AdamW", "lower-lr")])
def test_an_adaptive_optimizer_gets_the_lr_cut_first(sick, optimizer, first):
    """Adam divides by its running gradient scale, so clipping is largely normalised away
    (probe mlp-adam-explode: clipping did not cure it, the LR cut did)."""
    from resdoctor.runfile.run import Run

    run = Run({**sick.state, "optimizers": [optimizer]})  # the session fixture stays as it was
    (f,) = exploding_gradients(run)
    assert f.fixes[0].code == first
