import numpy as np
import pytest

from resdoctor.rules.dead_branch import dead_branch
from resdoctor.rules.testing import make_run


def _run(b_values, steps=50, **series):
    ratio = {
        "a": [None] + [0.3] * (steps - 1),
        "b": [None] + list(b_values)[1:steps],
        "c": [None] + [0.3] * (steps - 1),
    }
    return make_run(
        steps,
        scalars={"loss": [1.0] * steps},
        sites=["a", "b", "c"],
        site_series={"branch_ratio": ratio, **series},
    )


@pytest.mark.parametrize("value, fires", [(0.0101, False), (0.0099, True)])
def test_ratio_threshold(value, fires):
    found = dead_branch(_run([value] * 50))
    assert bool(found) is fires
    if fires:
        f = found[0]
        assert f.location == "b" and f.evidence["sites"] == ["b"] and f.step == 10
        # a revive fix first (the branch is alive but small: a scale), dropping it last
        assert [x.code for x in f.fixes] == ["residual-scaling", "reduce-depth"]
        assert f.fixes[-1].params["blocks"] == ["b"]


@pytest.mark.parametrize("dead_rows, fires", [(31, False), (33, True)])
def test_min_fraction_threshold(dead_rows, fires):
    # warm-up 10 steps -> 40 judged rows; 80% = 32 rows
    values = [0.0] * 10 + [1e-4] * dead_rows + [0.2] * (40 - dead_rows)
    assert bool(dead_branch(_run(values))) is fires


def test_zero_init_branch_that_wakes_up_is_quiet():
    values = list(np.minimum(np.arange(50) * 0.004, 0.1))  # 0 at start, 0.01 by step 3
    assert dead_branch(_run(values)) == []


def test_warmup_is_tunable():
    values = [0.0] * 30 + [0.2] * 20  # dead for 30 steps, then alive
    assert dead_branch(_run(values)) == []
    assert dead_branch(_run(values), warmup_steps=0, min_fraction=0.5)


def test_gradient_share_and_attribution_are_evidence():
    (f,) = dead_branch(
        _run(
            [1e-4] * 50,
            grad_branch_share={"b": [None] + [1e-3] * 49},
            attribution_share={"b": [None] + [0.001] * 49},
        )
    )
    assert f.evidence["grad_branch_share"] == {"b": 0.001}
    assert f.evidence["attribution_confirms"] is True


def test_real_dead_branches(dead):
    (f,) = dead_branch(dead)
    assert f.evidence["sites"] == list(dead.sites.sort_values("index")["name"])
    assert f.fixes[0].code in ("residual-scaling", "add-normalization")
    # every branch is dead: a depth cut would leave no block, so none is offered (issue 16)
    assert "reduce-depth" not in [x.code for x in f.fixes]


@pytest.mark.parametrize("value, zero", [(1.01e-6, False), (0.99e-6, True)])
def test_zero_ratio_threshold_puts_a_norm_before_a_scale(value, zero):
    """Regression: dead branches got reduce-depth first, which revives nothing; a branch that
    outputs exactly zero (dead ReLUs) cannot be revived by a scale either."""
    run = _run([value] * 50)
    sites = [dict(s) for s in run.sites.to_dict("records")]
    for s in sites:
        s.update(result={"module": f"{s['name']}.branch"}, shape=[4, 8])
    run.sites = type(run.sites)(sites)
    (f,) = dead_branch(run)
    codes = [x.code for x in f.fixes]
    assert codes[0] == ("add-normalization" if zero else "residual-scaling")
    assert f.thresholds["zero_ratio"] == 1e-6
    if zero:
        assert f.fixes[0].params["before_activation"] is True


def test_real_zero_init_resnet_wakes_up(zero_init):
    br = zero_init.series("branch_ratio")
    assert float(br.iloc[0].max()) < 0.01  # the branches really start at ~0
    assert dead_branch(zero_init) == []


def test_healthy_runs_are_quiet(healthy, preact, converged):
    for run in (healthy, preact, converged):
        assert dead_branch(run) == []


@pytest.mark.parametrize("growth, fires", [(2.9, True), (3.1, False)])
def test_wake_growth_threshold(growth, fires):
    """Issue 15: a layer-scaled branch that grows steadily from ~0 is waking, not dead."""
    steps = np.arange(50)
    values = 1e-5 * growth ** ((steps - 10).clip(0) / 39)  # x growth over the judged steps
    assert bool(dead_branch(_run(list(values)))) is fires


def test_a_branch_stuck_at_zero_never_wakes():
    assert dead_branch(_run([0.0] * 50))


class _ConvNeXtBlock(__import__("torch").nn.Module):
    """ConvNeXt-style: depthwise conv, LayerNorm, MLP, layer-scale gamma = 1e-6, identity skip."""

    def __init__(self, dim: int) -> None:
        import torch
        from torch import nn

        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x):  # [B, C, H, W]
        h = self.mlp(self.norm(self.dw(x).permute(0, 2, 3, 1)))
        return x + (self.gamma * h).permute(0, 3, 1, 2)


def test_real_layer_scale_convnext_is_waking_not_dead(tmp_path):
    """Issue 15: layer-scale 1e-6 branches grow from ~0 under AdamW with warm-up: no finding."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import resdoctor

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 4, 4),
        *[_ConvNeXtBlock(16) for _ in range(4)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    opt = torch.optim.AdamW(model.parameters(), 1e-4)  # slow: below 1% the whole run
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    with resdoctor.watch(model, opt, tmp_path / "cnx.pt") as doctor:
        for _ in range(60):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            doctor.log(loss=loss)
    run = resdoctor.load(tmp_path / "cnx.pt")
    ratio = run.series("branch_ratio")
    assert len(run.sites) == 4 and (ratio.iloc[:10] < 0.01).all().all()  # it starts at ~0
    assert dead_branch(run) == []
    assert dead_branch(run, wake_growth=float("inf"))  # without the trend it would be "dead"
    assert "dead-branch" not in {f.code for f in resdoctor.analyze(run).findings}
