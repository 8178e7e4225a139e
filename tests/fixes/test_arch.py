import numpy as np
import pytest
import torch
from torch import nn

import resdoctor
from resdoctor import fixes
from resdoctor.models import ResidualMLP, TinyTransformer


def _mlp():
    torch.manual_seed(0)
    model = ResidualMLP(d_in=4, dim=8, depth=3, d_out=2)
    x = torch.randn(5, 4)
    return model, x, [s.to_dict() for s in resdoctor.discover(model, x)]


def _run(snippet: str, model: nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    compile(snippet, "<fix>", "exec")
    exec(snippet, {"model": model, "optimizer": opt})
    return opt


def _step(model, opt, *inputs):
    opt.zero_grad()
    out = model(*inputs)
    out.float().pow(2).mean().backward()
    opt.step()
    return out


def test_residual_scaling_scales_every_branch_by_one_over_sqrt_n():
    model, x, sites = _mlp()
    before = model.blocks[0].branch(model.proj(x)).detach()
    fix = fixes.residual_scaling(sites, depth=len(sites))
    assert fix.params["scale"] == pytest.approx(3**-0.5, rel=1e-2)
    assert fix.params["deepnorm_alpha"] == pytest.approx(6**0.25, rel=1e-2)
    assert fix.params["deepnorm_beta"] == pytest.approx(24**-0.25, rel=1e-2)
    opt = _run(fix.snippet, model)
    h = model.proj(x)
    after = model.blocks[0](h) - h  # the block now adds alpha * branch
    assert torch.allclose(after, fix.params["scale"] * before, atol=1e-5)
    assert len(opt.param_groups) == 2 and len(opt.param_groups[1]["params"]) == 3
    _step(model, opt, x)  # still trains; the alphas get gradients
    assert opt.param_groups[1]["params"][0].grad is not None


def test_residual_scaling_handles_tuple_outputs_and_post_ln():
    torch.manual_seed(0)
    model = TinyTransformer(vocab=16, dim=8, depth=2, heads=2, max_len=8, norm="post")
    ids = torch.randint(0, 16, (2, 6))
    sites = [s.to_dict() for s in resdoctor.discover(model, ids)]
    fix = fixes.residual_scaling(sites, depth=len(sites), post_norm=True)
    assert fix.params["post_norm"] and fix.params["scale"] == pytest.approx(
        1 / fix.params["deepnorm_alpha"], rel=1e-2
    )
    opt = _run(fix.snippet, model)
    out = _step(model, opt, ids)
    assert out.shape == (2, 6, 16) and torch.isfinite(out).all()


def test_add_normalization_bounds_each_branch():
    model, x, sites = _mlp()
    for p in model.parameters():
        p.data.mul_(30.0)  # huge branches
    fix = fixes.add_normalization(sites)
    assert fix.params["branches"] == [f"blocks.{i}.branch.3" for i in range(3)]
    opt = _run(fix.snippet, model)
    h = model.proj(x)
    branch = model.blocks[0](h) - h
    rms = branch.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-2)  # LayerNorm output
    _step(model, opt, x)


def test_add_normalization_layers_and_add_residual_on_a_plain_mlp():
    torch.manual_seed(0)
    model = ResidualMLP(d_in=4, dim=8, depth=2, d_out=2, norm=False, residual=False)
    names = ["proj", "blocks.0.branch.1", "blocks.0.branch.3"]
    fix = fixes.add_normalization_layers(names, ["Linear"] * 3)
    opt = _run(fix.snippet, model)
    assert isinstance(model.proj[1], nn.LayerNorm)
    _step(model, opt, torch.randn(3, 4))
    res = fixes.add_residual(["proj", "blocks.1.branch.1"])
    _run(res.snippet, model)
    assert type(model.blocks[1].branch[1]).__name__ == "Residual"
    assert isinstance(model.proj, nn.Sequential)  # 4 -> 8 is not square: left alone


def test_guard_op_clamps_the_recorded_ops_and_never_hides_a_nan():
    fix = fixes.guard_op("1", "Bad", "forward", input_absmax=2.0, ops=["log", "div"])
    assert fix.params["eps"] == 1e-6 and fix.params["ops"] == ["log", "div"]
    assert "clamp_min(EPS)" in fix.snippet and "log" in fix.title
    for f in (fix, fixes.guard_op("0", "Linear", "backward", ops=["sqrt"])):
        assert "nan_to_num" not in f.snippet and "register_hook" not in f.snippet
        compile(f.snippet, "<snippet>", "exec")


def test_every_guard_clamp_keeps_its_op_finite_at_the_domain_edge():
    from resdoctor.fixes.arch import _CLAMPS

    edge = torch.tensor([-2.0, -1.0, 0.0, 1.0, 200.0])
    env = {"torch": torch, "EPS": 1e-6, "x": edge, "a": torch.ones(5), "b": edge * 0, "p": 0.5}
    for op, expr in _CLAMPS.items():
        value = eval(expr.split("  #")[0], env)  # noqa: S307 - our own fixed expressions
        assert torch.isfinite(value).all(), op


def test_guard_op_on_a_norm_raises_eps():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    _run(fixes.guard_op("1", "LayerNorm", "forward").snippet, model)
    assert model[1].eps == 1e-3


def test_reduce_depth_drops_the_named_blocks():
    model, x, _ = _mlp()
    n = sum(p.numel() for p in model.parameters())
    fix = fixes.reduce_depth(["blocks.1", "blocks.2"], 3, 1, "dead")
    assert fix.params == {"blocks": ["blocks.1", "blocks.2"], "depth": 1, "depth_before": 3}
    _run(fix.snippet, model)
    assert isinstance(model.blocks[2], nn.Identity)
    assert sum(p.numel() for p in model.parameters()) < n
    assert model(x).shape == (5, 2)


@pytest.mark.parametrize(
    "build",
    [
        lambda: fixes.pre_activation(["layer1.0", "layer1.1"], "BasicBlock"),
        lambda: fixes.pre_layernorm(["blocks.0", "blocks.1"], 8),
    ],
)
def test_structural_templates_define_working_blocks(build):
    fix = build()
    scope: dict = {}
    exec(compile(fix.snippet, "<fix>", "exec"), scope)
    cls = next(v for k, v in scope.items() if isinstance(v, type) and k.startswith("Pre"))
    if fix.code == "pre-activation":
        out = cls(4, 8, stride=2)(torch.randn(2, 4, 8, 8))
        assert out.shape == (2, 8, 4, 4)
    else:
        out = cls(8, heads=2)(torch.randn(2, 5, 8))
        assert out.shape == (2, 5, 8)
    assert scope["BLOCKS"] == fix.params["blocks"]
    assert np.isfinite(out.detach().numpy()).all()


def test_residual_scaling_without_branch_modules_names_the_blocks():
    sites = [{"name": f"b{i}", "owner": f"b{i}", "branch": None, "shape": [2, 4]} for i in range(4)]
    fix = fixes.residual_scaling(sites, depth=4)
    assert fix.params["branches"] == [] and fix.params["blocks"] == ["b0", "b1", "b2", "b3"]
    scope: dict = {}
    exec(compile(fix.snippet, "<fix>", "exec"), scope)
    assert scope["ALPHA"] == 0.5 and scope["BLOCKS"] == fix.params["blocks"]
    assert float(scope["Scale"](scope["ALPHA"])(torch.ones(1)).detach()) == 0.5


def test_residual_scaling_from_the_measured_branch_ratio_and_growth():
    """Regression: a fixed 1/sqrt(N) (or DeepNorm) left a branch 60x the skip at ~30x; the scale
    now comes from what was measured, and the formula is stated."""
    _, _, sites = _mlp()
    fix = fixes.residual_scaling(sites, depth=6, post_norm=True, branch_ratio=59.0)
    assert fix.params["scale"] == pytest.approx(1 / 59.0, rel=1e-2)
    assert "1/r" in fix.params["formula"] and "59" in fix.detail
    mild = fixes.residual_scaling(sites, depth=6, branch_ratio=1.5)  # 1/sqrt(6) is smaller
    assert mild.params["scale"] == pytest.approx(6**-0.5, rel=1e-2)
    grow = fixes.residual_scaling(sites, depth=12, growth=1.41)
    alpha = ((12 ** (1 / 11) - 1) / (1.41**2 - 1)) ** 0.5
    assert grow.params["scale"] == pytest.approx(alpha, rel=1e-2)
    assert fixes.residual_scaling(sites, depth=12, growth=1.01).params["scale"] == 1.0


def test_add_normalization_before_the_last_activation_revives_dead_relus():
    model, x, sites = _mlp()
    for block in model.blocks:
        block.branch.append(torch.nn.ReLU())
        torch.nn.init.constant_(block.branch[3].bias, -50.0)  # the ReLU never fires
    fix = fixes.add_normalization(sites, before_activation=True)
    assert fix.params["before_activation"] is True
    opt = _run(fix.snippet, model)
    h = model.proj(x)
    assert (model.blocks[0](h) - h).abs().max() > 0  # alive again
    _step(model, opt, x)


def test_xavier_init_rescales_the_layers_before_saturated_activations():
    import torch
    from torch import nn

    from resdoctor import fixes

    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid())
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(50.0)
    fix = fixes.xavier_init(["1", "3"])
    exec(compile(fix.snippet, "<fix>", "exec"), {"model": model})
    bound = (6 / 16) ** 0.5  # Glorot uniform bound for 8 -> 8, times the activation's gain
    assert model[0].weight.abs().max() <= bound * nn.init.calculate_gain("tanh") + 1e-6
    assert model[2].weight.abs().max() <= bound * nn.init.calculate_gain("sigmoid") + 1e-6
