import pytest

from resdoctor.rules.oversmoothing import oversmoothing
from resdoctor.rules.testing import make_run


def _run(sim, energy, steps=10):
    names = [f"s{i}" for i in range(len(sim))]
    s = {n: [None] + [v] * (steps - 1) for n, v in zip(names, sim)}
    e = {n: [None] + [v] * (steps - 1) for n, v in zip(names, energy)}
    return make_run(steps, sites=names, site_series={"smoothing": s, "smoothing_energy": e})


@pytest.mark.parametrize("deep, fires", [(0.89, False), (0.91, True)])
def test_similarity_threshold(deep, fires):
    found = oversmoothing(_run([0.2, 0.5, 0.8, deep], [0.8, 0.5, 0.2, 0.05]))
    assert bool(found) is fires
    if fires:
        assert found[0].location == "s3" and found[0].evidence["collapse_depth"] == 4


@pytest.mark.parametrize("energy, fires", [(0.11, False), (0.09, True)])
def test_energy_threshold(energy, fires):
    assert bool(oversmoothing(_run([0.2, 0.5, 0.8, 0.95], [0.8, 0.5, 0.2, energy]))) is fires


def test_inputs_that_are_already_similar_are_not_oversmoothing():
    # similar from the first site on: nothing got worse with depth (rise 0.01 < 0.1)
    assert oversmoothing(_run([0.95, 0.95, 0.95, 0.96], [0.05] * 4)) == []


def test_real_residual_gcn_oversmooths(smooth_gcn):
    (f,) = oversmoothing(smooth_gcn)
    sim = smooth_gcn.series("smoothing")
    assert float(sim.iloc[:, -1].median()) >= 0.9 > float(sim.iloc[:, 0].median())
    # collapse from the second block on: a cut to 1 block is no model, so no depth cut (issue 16)
    assert [x.code for x in f.fixes] == ["initial-residual", "pairnorm"]


def test_healthy_runs_are_quiet(healthy, preact, zero_init):
    for run in (healthy, preact, zero_init):
        assert oversmoothing(run) == []


def test_one_sample_is_not_enough():
    """Issue 15: a stock ViT was flagged from one sample at step 10."""
    collapsed = ([0.2, 0.5, 0.8, 0.97], [0.8, 0.5, 0.2, 0.02])
    assert oversmoothing(_run(*collapsed, steps=2)) == []  # step 0 unmeasured: one sample
    assert oversmoothing(_run(*collapsed, steps=3)) == []
    assert oversmoothing(_run(*collapsed, steps=4))  # three samples
    assert oversmoothing(_run(*collapsed, steps=2), min_samples=1)


@pytest.mark.parametrize(
    "module_type, codes",
    [
        ("GCNConv", ["initial-residual", "pairnorm", "reduce-depth"]),
        ("ViTSelfAttention", ["residual-scaling", "reduce-depth"]),
        ("Conv2d", ["residual-scaling", "reduce-depth"]),
    ],
)
def test_fixes_fit_the_architecture(module_type, codes):
    """No GNN remedies (initial residual, PairNorm) for a vision or language model."""
    names = [f"s{i}" for i in range(4)]
    sim, energy = [0.2, 0.5, 0.8, 0.97], [0.8, 0.5, 0.2, 0.02]
    run = make_run(
        10,
        modules=[(n, module_type, 10) for n in names],
        sites=names,
        site_series={
            "smoothing": {n: [None] + [v] * 9 for n, v in zip(names, sim)},
            "smoothing_energy": {n: [None] + [v] * 9 for n, v in zip(names, energy)},
        },
    )
    (f,) = oversmoothing(run)
    assert [x.code for x in f.fixes] == codes


def test_a_plain_gnn_gets_pairnorm_first(tmp_path):
    """No residual site: nothing to re-inject x0 along, so the drop-in PairNorm comes first
    (probe gcn-plain-deep: initial residual left it smoothed, PairNorm cured it)."""
    import torch

    import resdoctor
    from tests import _models

    torch.manual_seed(0)
    model = _models.PlainGCN(layers=8)
    x, edges = _models.graph(nodes=12, edges=60)
    opt = torch.optim.SGD(model.parameters(), 1e-3)
    with resdoctor.watch(model, opt, tmp_path / "g.pt", smoothing_every=1) as doctor:
        for _ in range(12):
            loss = model(x, edges).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    run = resdoctor.load(tmp_path / "g.pt")
    assert len(run.sites) == 0 and run.architecture == "graph"
    found = oversmoothing(run, similarity=0.5, energy=1.0, depth_rise=-1.0)
    assert found and found[0].fixes[0].code == "pairnorm"
