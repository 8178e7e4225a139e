"""Recording real third-party models: every discovered site gets its signals, no internal errors."""

import numpy as np
import pytest
import torch

import resdoctor
from resdoctor.models import PreActResNet, ResNet, TinyTransformer
from tests import _models


def _lm_loss(out):
    logits = out.logits if hasattr(out, "logits") else out
    return logits.float().pow(2).mean()


def _hidden_loss(out):
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out
    return hidden.float().pow(2).mean()


CASES = {
    "gpt2": (lambda: _models.gpt2(layers=2), _lm_loss, 4),
    "bert": (lambda: _models.bert(layers=2), _hidden_loss, 4),
    "vit": (lambda: _models.vit(layers=2), _hidden_loss, 4),
    "hf-resnet": (lambda: _models.hf_resnet(), _hidden_loss, 3),
    "resgcn": (
        lambda: (_models.ResGCN(), dict(zip(("x", "edge_index"), _models.graph()))),
        _hidden_loss,
        3,
    ),
    "resnet": (lambda: (ResNet((1, 1)), {"x": torch.randn(4, 3, 8, 8)}), _hidden_loss, 2),
    "preact": (lambda: (PreActResNet((1, 1)), {"x": torch.randn(4, 3, 8, 8)}), _hidden_loss, 2),
    "post-ln": (
        lambda: (TinyTransformer(depth=2, norm="post"), {"ids": torch.randint(0, 64, (2, 8))}),
        _hidden_loss,
        4,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_every_site_is_measured(tmp_path, name):
    make, loss_fn, n_sites = CASES[name]
    model, inputs = make()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    with resdoctor.watch(
        model, opt, tmp_path / "r.pt", smoothing_every=1, grad_share_every=1
    ) as doctor:
        for _ in range(3):
            opt.zero_grad()
            loss = loss_fn(model(**inputs))
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    run = resdoctor.load(tmp_path / "r.pt")
    assert run.errors.empty, run.errors.to_dict("records")
    assert len(run.sites) == n_sites
    for signal in ("branch_ratio", "stream_norm", "grad_branch_share"):
        table = run.series(signal)
        assert list(table.columns) == run.sites.name.tolist()
        assert table.loc[1:].notna().all().all(), (signal, table)
        assert np.isfinite(table.loc[1:].to_numpy()).all()
    assert run.nonfinite.empty


def test_example_inputs_give_site_signals_from_step_zero(tmp_path):
    model = TinyTransformer(depth=2)
    ids = torch.randint(0, 64, (2, 8))
    with resdoctor.watch(model, path=tmp_path / "r.pt", example_inputs=(ids,)) as doctor:
        assert [s.name for s in doctor.sites] == [
            "blocks.0#0",
            "blocks.0#1",
            "blocks.1#0",
            "blocks.1#1",
        ]
        model(ids).pow(2).mean().backward()
        doctor.log()
    assert resdoctor.load(tmp_path / "r.pt").series("branch_ratio").index.tolist() == [0]


def test_models_without_residual_sites_get_smoothing_at_their_layers(tmp_path):
    model = _models.PlainGCN(layers=6)
    x, edge_index = _models.graph(30, 120)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    with resdoctor.watch(model, opt, tmp_path / "gcn.pt", smoothing_every=1) as doctor:
        for _ in range(4):
            opt.zero_grad()
            loss = model(x, edge_index).pow(2).mean()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    run = resdoctor.load(tmp_path / "gcn.pt")
    assert run.sites.empty and run.state["layers"] == [f"convs.{i}" for i in range(6)]
    sim = run.series("smoothing")
    assert list(sim.columns) == run.state["layers"] and sim.notna().all().all()
    # message passing averages neighbours: deeper layers are more alike than the first
    assert (sim["convs.5"] > sim["convs.0"]).all()


def test_repeated_layers_picks_the_longest_same_type_stack():
    from resdoctor.models import ResidualMLP
    from resdoctor.recording.discovery import repeated_layers

    names = [n for n, _ in repeated_layers(ResidualMLP(depth=4, residual=False))]
    assert names == [f"blocks.{i}" for i in range(4)]
    assert repeated_layers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())) == []
