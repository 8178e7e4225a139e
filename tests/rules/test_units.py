"""dead-units and saturation on real runs; the truth (each layer's dead / saturated share)
measured in the test with plain forward hooks (issue 18)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resdoctor
from resdoctor.rules.units import dead_units, saturation


def _mlp(act: type[nn.Module], bias: float = 0.0, gain: float = 1.0) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), act(), nn.Linear(32, 32), act(), nn.Linear(32, 1))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(gain)
            layer.bias.fill_(bias)
    return model


def _train(model: nn.Module, path, steps: int = 30, lr: float = 1e-3):
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    truth: dict[str, list[float]] = {}

    def measure(name: str, relu: bool):
        def hook(m, args, out):
            if relu:  # a unit is dead when it outputs 0 for every sample
                share = 1.0 - (out.detach() > 0).any(dim=0).float().mean().item()
            else:
                share = (args[0].detach().abs() > 5).float().mean().item()
            truth.setdefault(name, []).append(share)

        return hook

    for name, m in model.named_modules():
        if isinstance(m, (nn.ReLU, nn.Tanh)):
            m.register_forward_hook(measure(name, isinstance(m, nn.ReLU)))
    opt = torch.optim.SGD(model.parameters(), lr)
    with resdoctor.watch(model, opt, path, units_every=1, quiet=True) as doctor:
        for _ in range(steps):
            loss = (model(x) - y).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    return resdoctor.load(path), truth


def test_dying_relu_layers_are_found_with_their_share(tmp_path):
    run, truth = _train(_mlp(nn.ReLU, bias=-3.0), tmp_path / "r.pt")
    assert run.series("dead_units")["1"].tolist() == pytest.approx(truth["1"], abs=1e-6)
    (f,) = dead_units(run)
    assert f.location in {"1", "3"} and min(truth[f.location]) >= 0.7
    assert [x.code for x in f.fixes][0] == "leaky-relu"


def test_relu_sparsity_is_not_death(tmp_path):
    run, truth = _train(_mlp(nn.ReLU), tmp_path / "r.pt")
    assert 0 <= max(truth["1"]) < 0.7  # some zero units: normal
    assert dead_units(run) == []


@pytest.mark.parametrize("gain, fires", [(1.0, False), (40.0, True)])
def test_saturated_tanh(tmp_path, gain, fires):
    run, truth = _train(_mlp(nn.Tanh, gain=gain), tmp_path / "t.pt")
    assert run.series("saturation")["3"].tolist() == pytest.approx(truth["3"], abs=1e-6)
    found = saturation(run)
    assert bool(found) is fires
    if fires:
        assert [x.code for x in found[0].fixes] == ["xavier-init", "replace-activation"]
        assert max(truth[found[0].location]) >= 0.5


def test_healthy_runs_are_quiet(healthy, converged, preact, zero_init):
    for run in (healthy, converged, preact, zero_init):
        if "dead_units" in run.signals:
            assert dead_units(run) == []
        if "saturation" in run.signals:
            assert saturation(run) == []
