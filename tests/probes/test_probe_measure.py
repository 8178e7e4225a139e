"""The direct measurement (plain hooks, no resdoctor) against hand computations."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

import probes
from probes import labels
from probes.faults import NaNGrad
from probes.measure import At, Measurement, Measurer, Onset, SiteTap
from probes.recipe import Recipe
from probes.train import Setup, run


class _Block(nn.Module):
    def __init__(self, fault: nn.Module | None = None) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.fault = fault if fault is not None else nn.Identity()

    def forward(self, x):
        return x + self.fault(self.fc(x))


class _ForwardNaN(nn.Module):
    """NaN from the 3rd call on (step 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.log(x - 1e6) if self.calls >= 3 else x


def _setup(model: nn.Module, taps=()) -> Setup:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 4, generator=g), torch.randn(8, 4, generator=g)
    return Setup(model, lambda step: ((x,), y), nn.functional.mse_loss, list(taps))


def test_forward_onset_is_the_innermost_module_at_the_exact_step():
    model = nn.Sequential(_Block(), _Block(_ForwardNaN()), _Block())
    m = run(_setup(model), Recipe(steps=6, lr=1e-3), measure=True).measurement
    assert m.onset == Onset(2, "1.fault", "forward")


def test_backward_onset_is_the_innermost_module_whose_gradient_turns_nan():
    model = nn.Sequential(_Block(), _Block(NaNGrad(at=3)), _Block())
    m = run(_setup(model), Recipe(steps=6, lr=1e-3), measure=True).measurement
    assert m.onset == Onset(3, "1.fault", "backward")


def test_branch_ratio_and_stream_match_a_hand_computation():
    model = nn.Sequential(_Block(), _Block())
    taps = [SiteTap("0", skip=At("0", "in"), result=At("0"))]
    setup = _setup(model, taps)
    x = setup.batch(0)[0][0]
    with torch.no_grad():
        branch = model[0].fc(x)
        expect_ratio = branch.pow(2).mean().sqrt() / x.pow(2).mean().sqrt()
        expect_stream = (x + branch).pow(2).mean().sqrt()
    m = run(setup, Recipe(steps=1, lr=1e-3), measure=True).measurement
    assert m.array("ratio")[0, 0] == pytest.approx(float(expect_ratio), rel=1e-5)
    assert m.array("stream")[0, 0] == pytest.approx(float(expect_stream), rel=1e-5)


def test_regression_inplace_residual_add_does_not_leak_into_the_branch():
    # ResNet's BasicBlock does ``out += identity`` on bn2's output; the measurer must copy it
    probe = probes.get("resnet-zeroinit")
    m = probe.measure(replace(probe.recipe, steps=1)).measurement
    assert np.nanmax(m.array("ratio")[0]) == 0.0


def test_grad_norms_are_plain_autograd_norms():
    model = nn.Sequential(_Block())
    setup = _setup(model)
    meas = Measurer(model, [])
    meas.begin_step(0)
    (inputs,), target = setup.batch(0)
    loss = setup.loss_fn(model(inputs), target)
    loss.backward()
    meas.after_backward()
    fc = model[0].fc
    expect = math.sqrt(fc.weight.grad.pow(2).sum() + fc.bias.grad.pow(2).sum())
    assert meas.m.modules == ["0.fc"]
    assert meas.m.grad[0][0] == pytest.approx(expect, rel=1e-6)
    meas.close()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _measurement(loss=(), grad=(), ratio=(), stream=(), act_grad=(), sim=()) -> Measurement:
    n = max(len(loss), len(grad), len(ratio), len(stream), 1)
    sites = max((len(r) for r in (*ratio, *stream, *act_grad, *sim)), default=0)
    m = Measurement(["a"], [1], [f"s{i}" for i in range(sites)])
    m.loss = list(loss) or [1.0] * n
    m.grad = [np.array([g]) for g in grad] or [np.array([1.0])] * n
    nan = [np.full(sites, np.nan)] * n
    m.ratio = [np.array(r) for r in ratio] or nan
    m.stream = [np.array(r) for r in stream] or nan
    m.act_grad = [np.array(r) for r in act_grad] or nan
    m.similarity = [np.array(r) for r in sim] or nan
    return m


def test_divergence_label_just_below_and_above_threshold():
    down = list(np.linspace(2.0, 1.0, 40))
    assert labels.divergence(_measurement(down + [1.0] * 40)).status == "absent"
    assert labels.divergence(_measurement(down + [1.6] * 40)).status == "present"
    assert labels.divergence(_measurement(down + [1.35] * 40)).status == "borderline"
    flat = [1.386] * 60  # a model that never learns is not diverging
    assert labels.divergence(_measurement(flat)).status == "absent"


def test_exploding_label_needs_a_surge_not_a_large_start():
    calm = [5.0, 4.0, 3.0] + [2.0] * 20
    assert labels.exploding(_measurement(grad=calm)).status == "absent"
    surge = [1.0] * 20 + [150.0]
    assert labels.exploding(_measurement(grad=surge)).status == "present"
    assert labels.exploding(_measurement(grad=[1.0] * 20 + [50.0])).status == "borderline"


def test_dominance_dead_and_growth_labels_at_their_thresholds():
    assert labels.dominance(_measurement(ratio=[[5.1, 1.0]] * 10)).status == "present"
    assert labels.dominance(_measurement(ratio=[[2.4, 1.0]] * 10)).status == "absent"
    assert labels.dead(_measurement(ratio=[[0.005, 1.0]] * 10)).status == "present"
    assert labels.dead(_measurement(ratio=[[0.06, 1.0]] * 10)).status == "absent"
    rows = [[1.3**i for i in range(10)]] * 5  # x1.3 per site, x10.6 overall
    assert labels.growth(_measurement(stream=rows)).status == "present"
    sqrt_rows = [[math.sqrt(i + 1) for i in range(10)]] * 5  # sqrt(depth): x3.2 overall
    assert labels.growth(_measurement(stream=sqrt_rows)).status == "absent"
    jump = [[1.0] + [70.0] * 9] * 5  # x70 at one site, then flat: grew, but not exponentially
    assert labels.growth(_measurement(stream=jump)).status == "borderline"
