import numpy as np
import pytest

from resdoctor.rules.activation_growth import activation_growth
from resdoctor.rules.testing import make_run


def _run(stream, steps=10, fail_at=None):
    names = [f"s{i}" for i in range(len(stream))]
    series = {n: [None] + [float(v)] * (steps - 1) for n, v in zip(names, stream)}
    events = [{"step": fail_at, "module": "s0.branch", "phase": "forward"}] if fail_at else []
    return make_run(
        steps,
        scalars={"loss": [1.0] * steps},
        sites=names,
        site_series={"stream_norm": series},
        events=events,
    )


@pytest.mark.parametrize("factor, fires", [(1.14, False), (1.16, True)])
def test_per_block_threshold(factor, fires):
    found = activation_growth(_run(factor ** np.arange(30)))  # total 1.14^29 = 45 >= 10
    assert bool(found) is fires
    if fires:
        f = found[0]
        assert f.evidence["per_block_growth"] == pytest.approx(1.16, rel=1e-3)
        assert f.step == 1 and f.severity == "warning"


@pytest.mark.parametrize("total, fires", [(9.9, False), (10.1, True)])
def test_total_threshold(total, fires):
    stream = total ** (np.arange(10) / 9)  # x1.29 per site
    assert bool(activation_growth(_run(stream))) is fires


@pytest.mark.parametrize("sites", [12, 100])
def test_sqrt_depth_growth_of_a_preactivation_resnet_is_quiet(sites):
    # 100 sites: sqrt grows 10x, at the total threshold, but a power law fits it better
    assert activation_growth(_run(np.sqrt(np.arange(1, sites + 1)))) == []


def test_polynomial_growth_is_not_exponential():
    # (d)^3 over 30 sites grows 27000x, but a power law fits it better than an exponential
    assert activation_growth(_run(np.arange(1, 31) ** 3.0)) == []


def test_growth_only_in_the_last_step_before_a_nan_still_fires():
    steps = 10
    names = [f"s{i}" for i in range(20)]
    calm, wild = np.ones(20), 1.5 ** np.arange(20)
    series = {n: [None] + [1.0] * 7 + [wild[i]] + [None] for i, n in enumerate(names)}
    run = make_run(
        steps,
        sites=names,
        site_series={"stream_norm": series},
        events=[{"step": 9, "module": "s0.branch", "phase": "forward"}],
    )
    assert calm.sum() == 20
    (f,) = activation_growth(run)
    # its own threshold sets the severity (2.2e3 < critical_total 1e4), not the NaN after it
    assert f.step == 8 and f.severity == "warning"


def test_real_sick_run_grows_exponentially(sick):
    (f,) = activation_growth(sick)
    assert f.step <= int(sick.nonfinite["step"].iloc[0])
    assert f.evidence["r2_exponential"] > f.evidence["r2_power"]
    assert f.location in set(sick.sites["name"])
    assert f.fixes[0].code == "residual-scaling"
    # the scale comes from the measured per-block growth g: (1 + a^2 (g^2 - 1))^(N-1) = N
    n, g = 12, f.fixes[0].params["measured_growth"]
    alpha = min(1.0, ((n ** (1 / (n - 1)) - 1) / (g * g - 1)) ** 0.5)
    assert f.fixes[0].params["scale"] == pytest.approx(alpha, rel=1e-2)
    assert g >= 1.15 and "measured per-block growth" in f.fixes[0].detail


def test_real_preactivation_resnet_is_quiet(preact, healthy, zero_init):
    for run in (preact, healthy, zero_init):
        assert activation_growth(run) == []
