import torch
from torch import nn

from resdoctor import fixes


def _load(fix):
    scope: dict = {}
    exec(compile(fix.snippet, "<fix>", "exec"), scope)
    return scope


def test_pairnorm_keeps_rows_apart():
    fix = fixes.pairnorm(["convs.9"], scale=1.0)
    norm = _load(fix)["PairNorm"](fix.params["scale"])
    x = torch.ones(6, 4) + 1e-2 * torch.randn(6, 4)  # nearly identical rows
    y = norm(x)
    assert torch.allclose(y.mean(0), torch.zeros(4), atol=1e-4)
    assert float(y.pow(2).sum(1).mean()) > 0.9  # spread restored to scale^2


def test_initial_residual_mixes_alpha_of_x0():
    fix = fixes.initial_residual(["convs.5"], alpha=0.1)
    layer = _load(fix)["InitialResidual"](nn.Identity(), fix.params["alpha"])
    x, x0 = torch.zeros(3, 2), torch.ones(3, 2)
    assert torch.allclose(layer(x, x0), torch.full((3, 2), 0.1))
