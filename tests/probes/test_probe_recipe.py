"""Fix codes turn into recipe changes with the fix's parameters; probes build every variant."""

import pytest
import torch

import probes
from probes.recipe import FixNotApplicable, Recipe, apply_fix


def test_lower_lr_uses_the_factor_on_the_configured_lr():
    r = Recipe(lr=0.5, warmup=10)
    assert apply_fix(r, "lower-lr", {"factor": 0.3, "new_lr": 0.01}).lr == pytest.approx(0.15)
    assert apply_fix(r, "lower-lr", {"factor": 10}).lr == pytest.approx(0.05)
    assert apply_fix(r, "lower-lr", {"new_lr": 0.02}).lr == pytest.approx(0.02)


def test_training_fixes_take_their_parameters():
    r = Recipe(lr=1e-3)
    assert apply_fix(r, "clip-gradients", {"max_norm": 0.7}).clip == 0.7
    assert apply_fix(r, "lr-warmup", {"warmup_steps": 30}).warmup == 30
    assert apply_fix(r, "mixed-precision", {"dtype": "bfloat16"}).amp == "bf16"
    assert apply_fix(r, "guard-op", {"eps": 1e-5}).arch["guard_eps"] == 1e-5
    assert apply_fix(r, "residual-scaling", {"scale": 0.25}).arch["residual_scale"] == 0.25


def test_reduce_depth_keeps_the_share_of_sites():
    # the tool counts residual sites (two per transformer block): 8 -> 4 sites is 4 -> 2 blocks
    r = Recipe(arch={"depth": 4})
    assert apply_fix(r, "reduce-depth", {"depth": 4, "depth_before": 8}).arch["depth"] == 2
    assert (
        apply_fix(
            Recipe(arch={"layers": (6, 6)}), "reduce-depth", {"depth": 6, "depth_before": 12}
        ).arch["depth"]
        == 6
    )
    with pytest.raises(FixNotApplicable):
        apply_fix(Recipe(), "reduce-depth", {"depth": 2})


def test_unknown_and_unsupported_codes_are_refused():
    with pytest.raises(FixNotApplicable):
        apply_fix(Recipe(), "sing-a-song", {})
    with pytest.raises(FixNotApplicable):  # BERT cannot be rebuilt pre-LN
        probes.get("bert-initrange-dominance").fixed("pre-layernorm", {})
    with pytest.raises(FixNotApplicable):  # no fault op to guard
        probes.get("mlp-kaiming-growth").fixed("guard-op", {"eps": 1e-6})


def test_guard_op_must_target_the_faulty_module():
    p = probes.get("mlp-sqrt-nan")
    with pytest.raises(FixNotApplicable):
        p.fixed("guard-op", {"module": "blocks.1.branch.1", "eps": 1e-6})
    assert p.fixed("guard-op", {"module": "blocks.3.branch.4", "eps": 1e-6}).arch["guard_eps"]
    assert p.fixed("guard-op", {"module": "blocks.3", "eps": 1e-6}).arch["guard_eps"]


def _first_output(probe, recipe):
    setup = probe.setup(recipe)
    inputs, _ = setup.batch(0)
    out = setup.model(*inputs)
    return getattr(out, "logits", out).detach()


@pytest.mark.parametrize(
    "name",
    [
        "mlp-kaiming-growth",
        "resnet-nobn-growth",
        "postln-scale-dominance",
        "gcn-plain-deep",
        "gpt2-lr-diverge",
    ],
)
def test_every_architecture_fix_builds_a_different_model(name):
    probe = probes.get(name)
    base = _first_output(probe, None)
    for code in sorted(probe.fixes):
        try:
            recipe = probe.fixed(code, {})
            out = _first_output(probe, recipe)
        except FixNotApplicable:
            continue
        assert out.shape[-1] == base.shape[-1], code
        assert not torch.equal(out, base), f"{code} left {name} unchanged"
