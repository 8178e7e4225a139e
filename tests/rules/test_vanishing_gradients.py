import pytest

from resdoctor.rules.testing import make_run
from resdoctor.rules.vanishing_gradients import vanishing_gradients

MODULES = [(f"l{i}", "Linear", 100) for i in range(8)]


def test_embeddings_are_left_out_of_the_comparison():
    mods = [("emb", "Embedding", 6400)] + MODULES
    steps = 10
    grads = {m: [1e-5 if m == "emb" else 1.0] * steps for m, _, _ in mods}
    run = make_run(
        steps, scalars={"loss": [2.0] * steps}, modules=mods, module_series={"grad_norm": grads}
    )
    assert vanishing_gradients(run) == []  # sparse embedding gradients are not vanishing


def _run(ratio: float, loss_end: float = 1.9, steps: int = 20):
    grads = {m: [ratio if i < 2 else 1.0] * steps for i, (m, _, _) in enumerate(MODULES)}
    loss = [2.0] * (steps // 2) + [loss_end] * (steps - steps // 2)
    return make_run(
        steps, scalars={"loss": loss}, modules=MODULES, module_series={"grad_norm": grads}
    )


@pytest.mark.parametrize("ratio, fires", [(1.1e-2, False), (0.9e-2, True)])
def test_ratio_threshold(ratio, fires):
    found = vanishing_gradients(_run(ratio))
    assert bool(found) is fires
    if fires:
        f = found[0]
        assert f.location == "l0" and f.severity == "warning"
        assert f.evidence["ratio"] == pytest.approx(0.9e-2)
        assert f.evidence["early_modules"] == ["l0", "l1"]


def test_critical_below_critical_ratio():
    (f,) = vanishing_gradients(_run(0.9e-5))
    assert f.severity == "critical"


@pytest.mark.parametrize("loss_end, fires", [(0.09, False), (0.11, True)])
def test_converged_loss_makes_tiny_early_gradients_normal(loss_end, fires):
    # converged = final loss <= 5% of the initial 2.0 (0.1)
    assert bool(vanishing_gradients(_run(1e-4, loss_end=loss_end))) is fires


def test_real_plain_sigmoid_network_vanishes(plain_sigmoid):
    (f,) = vanishing_gradients(plain_sigmoid)
    first = plain_sigmoid.modules.query("params > 0 and order >= 0").sort_values("order")
    assert f.location == first["name"].iloc[0]
    assert f.evidence["ratio"] < 1e-3
    assert f.fixes[0].code == "add-residual"  # no residual sites to scale


def test_converged_and_healthy_runs_are_quiet(converged, healthy, zero_init):
    for run in (converged, healthy, zero_init):
        assert vanishing_gradients(run) == []
