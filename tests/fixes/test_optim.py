import numpy as np
import pytest
import torch
from torch import nn

from resdoctor import fixes
from resdoctor.fixes.optim import lr_factor_from_updates


def _model_opt():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def test_clip_gradients_uses_the_median_of_the_healthy_steps():
    g = np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan])
    fix = fixes.clip_gradients(g, 0, 5)
    assert fix.params["max_norm"] == 3.0 and fix.params["p90"] == pytest.approx(62.0)
    assert fix.params["samples"] == 5
    model, opt = _model_opt()
    (model(torch.randn(8, 4)) * 1e4).sum().backward()
    exec(fix.snippet, {"model": model, "optimizer": opt, "torch": torch})
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(total) <= 3.0 + 1e-4


def test_lower_lr_scales_every_group_and_is_bounded():
    fix = fixes.lower_lr(0.05, "because", current_lr=0.01, update_ratio=0.02)
    assert fix.params["new_lr"] == 0.0005 and fix.params["target_update_ratio"] == 1e-3
    model, opt = _model_opt()
    exec(fix.snippet, {"model": model, "optimizer": opt})
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0005)
    assert fixes.lower_lr(1e-6, "x").params["factor"] == 0.01  # at most 100x at once
    assert fixes.lower_lr(0.9, "x").params["factor"] == 0.5
    assert lr_factor_from_updates(0.02) == pytest.approx(0.05)


def test_lr_warmup_ramps_linearly():
    fix = fixes.lr_warmup(onset=7, peak_lr=0.01)
    assert fix.params["warmup_steps"] == 10  # at least 10
    assert fixes.lr_warmup(onset=60).params["warmup_steps"] == 100
    model, opt = _model_opt()
    scope = {"model": model, "optimizer": opt, "torch": torch}
    exec(fix.snippet, scope)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001)
    opt.step()
    scope["warmup"].step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.002)


def test_mixed_precision_snippet_runs_on_cpu():
    fix = fixes.mixed_precision("overflow", skipped_fraction=0.3)
    model, opt = _model_opt()
    scope = {"model": model, "optimizer": opt, "torch": torch}
    exec(fix.snippet, scope)
    with scope["autocast"]:
        out = model(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert fix.params["skipped_fraction"] == 0.3
