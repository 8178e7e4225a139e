import pytest

from resdoctor.rules.branch_dominance import branch_dominance
from resdoctor.rules.testing import make_run

SITES = ["a", "b", "c"]


def _run(b_values, steps=None, **extra):
    steps = steps or len(b_values)
    ratio = {
        "a": [None] + [0.5] * (steps - 1),
        "b": [None] + list(b_values)[1:],
        "c": [None] + [0.3] * (steps - 1),
    }
    series = {"branch_ratio": ratio, **extra.pop("site_series", {})}
    return make_run(
        steps, scalars={"loss": [1.0] * steps}, sites=SITES, site_series=series, **extra
    )


@pytest.mark.parametrize("value, fires", [(4.9, False), (5.1, True)])
def test_ratio_threshold(value, fires):
    found = branch_dominance(_run([value] * 20))
    assert bool(found) is fires
    if fires:
        f = found[0]
        assert f.location == "b" and f.evidence["sites"] == ["b"] and f.step == 1
        assert f.severity == "warning" and f.thresholds["ratio"] == 5.0


@pytest.mark.parametrize("above, fires", [(9, False), (11, True)])
def test_min_fraction_threshold(above, fires):
    # 21 steps -> 20 measured rows; b is above 5 in ``above`` of them (45% vs 55%)
    values = [None] + [8.0] * above + [1.0] * (20 - above)
    run = _run(values, steps=21)
    assert bool(branch_dominance(run)) is fires


def test_drift_into_a_nan_is_caught_and_the_first_drifter_named():
    steps = 20
    a = [None] + [0.5] * 14 + [6.0, 9.0, 20.0, 40.0, 80.0]  # a crosses at step 15
    b = [None] + [0.5] * 16 + [7.0, 30.0, 90.0]  # b crosses at step 17
    run = make_run(
        steps,
        scalars={"loss": [1.0] * steps},
        sites=["a", "b"],
        site_series={"branch_ratio": {"a": a, "b": b}},
        events=[{"step": 19, "module": "a.branch", "phase": "forward"}],
    )
    (f,) = branch_dominance(run)
    # a warning: its median (0.5) is far below critical_ratio; the NaN after it is its own finding
    assert f.location == "a" and f.step == 15 and f.severity == "warning"
    assert set(f.evidence["sites"]) == {"a", "b"}


def test_attribution_share_is_used_as_evidence():
    share = {"b": [None] + [0.95] * 19}
    (f,) = branch_dominance(_run([8.0] * 20, site_series={"attribution_share": share}))
    assert f.evidence["attribution_share"] == {"b": 0.95}
    assert f.evidence["attribution_confirms"] is True


def test_real_dominant_branches(dominant):
    (f,) = branch_dominance(dominant)
    br = dominant.series("branch_ratio")
    expected = set(br.columns[br.median() > 5])
    assert len(expected) >= 2 and set(f.evidence["sites"]) == expected
    assert f.evidence["max_ratio"] > 5
    scaling = next(x for x in f.fixes if x.code == "residual-scaling")
    # alpha * (worst median ratio) ~ 1, not a fixed 1/sqrt(N) that leaves the branch dominant
    worst = float(br[sorted(expected)].median().max())
    assert scaling.params["N"] == 4
    assert scaling.params["scale"] == pytest.approx(min(0.5, 1 / worst), rel=1e-2)


def test_healthy_runs_are_quiet(healthy, preact, zero_init, converged):
    for run in (healthy, preact, zero_init, converged):
        assert branch_dominance(run) == []
