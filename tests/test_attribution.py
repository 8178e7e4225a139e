"""resdoctor.attribute and watch(attribute_every=N), checked against brute-force ablation.

The brute-force reference removes one operand of one residual addition with a plain forward hook
on the model's own modules (no resdoctor code) and measures the change of the attributed output.
"""

import dataclasses
import math
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resdoctor
from resdoctor.attribution.shares import UnknownSiteError
from resdoctor.models import ResidualMLP, ResNet, TinyTransformer

Ablate = Callable[[], list]  # installs hooks, returns their handles


def hooks_left(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


# -- brute-force ablation -----------------------------------------------------------------------
def picked(output: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The logit of class ``index`` per sample, summed over positions: [B]."""
    flat = output.reshape(output.shape[0], -1, output.shape[-1])
    return flat.gather(-1, index).sum(1).squeeze(-1)


def brute_shares(model: nn.Module, x: torch.Tensor, ablations: list[tuple[Ablate, Ablate]]):
    """Per site: sum |f - f(branch zeroed)| / (that + sum |f - f(skip zeroed)|), eval mode."""
    model.eval()
    with torch.no_grad():
        out = model(x)
        index = out.reshape(out.shape[0], -1, out.shape[-1]).argmax(-1, keepdim=True)
        y = picked(out, index)
        shares = []
        for zero_skip, zero_branch in ablations:
            deltas = []
            for install in (zero_branch, zero_skip):
                handles = install()
                try:
                    deltas.append(float((y - picked(model(x), index)).abs().sum()))
                finally:
                    for h in handles:
                        h.remove()
            shares.append(deltas[0] / (deltas[0] + deltas[1]))
    return shares


def mlp_ablations(model: ResidualMLP) -> list[tuple[Ablate, Ablate]]:
    """MLPBlock returns x + h: the block's output minus its input is h."""

    def pair(block):
        return (
            lambda: [block.register_forward_hook(lambda m, i, o: o - i[0])],
            lambda: [block.register_forward_hook(lambda m, i, o: i[0])],
        )

    return [pair(b) for b in model.blocks]


def resnet_ablations(model: ResNet) -> list[tuple[Ablate, Ablate]]:
    """BasicBlock adds bn2's output and the shortcut (in place), then applies relu."""

    def pair(block):
        def zero_skip():
            if block.downsample is not None:
                return [block.downsample.register_forward_hook(lambda m, i, o: torch.zeros_like(o))]
            seen = {}
            return [
                block.register_forward_pre_hook(lambda m, i: seen.update(x=i[0])),
                block.bn2.register_forward_hook(lambda m, i, o: o - seen["x"]),
            ]

        return zero_skip, lambda: [
            block.bn2.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        ]

    return [pair(b) for layer in (model.layer1, model.layer2) for b in layer]


def transformer_ablations(model: TinyTransformer) -> list[tuple[Ablate, Ablate]]:
    """Pre-LN block: x1 = x + attn(ln1(x)); out = x1 + mlp(ln2(x1))."""
    out = []
    for block in model.blocks:

        def attn_pair(block=block):
            seen = {}

            def zero_skip():
                return [
                    block.register_forward_pre_hook(lambda m, i: seen.update(x=i[0])),
                    block.attn.register_forward_hook(lambda m, i, o: (o[0] - seen["x"], o[1])),
                ]

            return zero_skip, lambda: [
                block.attn.register_forward_hook(lambda m, i, o: (torch.zeros_like(o[0]), o[1]))
            ]

        def mlp_pair(block=block):
            seen = {}

            def zero_skip():
                return [
                    block.ln2.register_forward_pre_hook(lambda m, i: seen.update(x=i[0])),
                    block.mlp.register_forward_hook(lambda m, i, o: o - seen["x"]),
                ]

            return zero_skip, lambda: [
                block.mlp.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
            ]

        out += [attn_pair(), mlp_pair()]
    return out


def sick_mlp(**kwargs) -> ResidualMLP:
    """Block 1 dead (scale 0), block 2's branch 50x too strong."""
    model = ResidualMLP(d_in=8, dim=16, depth=4, d_out=3, **kwargs)
    model.blocks[1].scale = 0.0
    with torch.no_grad():
        model.blocks[2].branch[3].weight.mul_(50)
    return model


def ranks(values) -> list[int]:
    return list(np.argsort(np.argsort(values)))


# -- agreement with the brute force -------------------------------------------------------------
def test_gradient_equals_ablation_on_a_linear_residual_network():
    # linear: removing an operand changes the output by exactly g . operand
    model = sick_mlp(norm=False, activation=nn.Identity)
    x = torch.randn(6, 8)
    brute = brute_shares(model, x, mlp_ablations(model))
    for method in ("gradient", "ablation"):
        got = resdoctor.attribute(model, x, method=method)
        assert [s.name for s in got] == [f"blocks.{k}" for k in range(4)]
        np.testing.assert_allclose([s.share for s in got], brute, atol=1e-4)
    assert brute[1] == 0.0 and brute[2] > 0.9


def test_dead_and_dominant_branches_on_a_nonlinear_mlp():
    model = sick_mlp()
    x = torch.randn(8, 8)
    brute = brute_shares(model, x, mlp_ablations(model))
    grad = resdoctor.attribute(model, x)
    abl = resdoctor.attribute(model, x, method="ablation")
    np.testing.assert_allclose([s.share for s in abl], brute, atol=1e-4)  # exact by design
    for shares in (brute, [s.share for s in grad]):
        assert shares[1] == 0.0  # dead: exactly no attribution through the branch
        assert shares[2] > 0.9  # dominant: the prediction hangs on the branch
    assert ranks([s.share for s in grad]) == ranks(brute)
    # first order is within 0.05 of the brute force wherever skip and branch do not cancel
    for s, b in zip(grad, brute, strict=True):
        if s.coherence > 0.5:
            assert abs(s.share - b) < 0.05, (s, b)


def test_resnet_in_place_addition_and_projection_shortcut():
    model = ResNet(layers=(2, 2), widths=(4, 8))
    x = torch.randn(6, 3, 8, 8)
    brute = brute_shares(model, x, resnet_ablations(model))
    abl = resdoctor.attribute(model, x, method="ablation")
    assert [s.kind for s in abl] == ["identity", "identity", "projection", "identity"]
    np.testing.assert_allclose([s.share for s in abl], brute, atol=1e-4)
    grad = resdoctor.attribute(model, x)
    assert all(s.coherence > 0.5 for s in grad)
    np.testing.assert_allclose([s.share for s in grad], brute, atol=0.08)
    assert grad.to_frame()["share"].between(0, 1).all()


def test_transformer_ablation_exact_and_gradient_cancellation_flagged():
    model = TinyTransformer(vocab=32, dim=16, depth=2, heads=2, max_len=8)
    ids = torch.randint(0, 32, (3, 8))
    brute = brute_shares(model, ids, transformer_ablations(model))
    abl = resdoctor.attribute(model, ids, method="ablation")
    np.testing.assert_allclose([s.share for s in abl], brute, atol=1e-4)
    # the last sum feeds the final LayerNorm (scale invariant): g . (a + b) = 0, so first-order
    # attribution of skip and branch cancel; coherence shows it and the share is a coin toss
    last = resdoctor.attribute(model, ids)["blocks.1#1"]
    assert last.coherence < 0.01 and abs(last.share - 0.5) < 0.01
    post = resdoctor.attribute(
        TinyTransformer(vocab=32, dim=16, depth=1, heads=2, max_len=8, norm="post"), ids
    )
    assert all(s.coherence < 0.01 for s in post)


def test_transformers_gpt2_with_keyword_inputs():
    from tests._models import gpt2

    model, inputs = gpt2(layers=2)
    for method in ("gradient", "ablation"):
        got = resdoctor.attribute(model, inputs, method=method, samples=1)
        assert [s.name for s in got] == [
            "transformer.h.0#0",
            "transformer.h.0#1",
            "transformer.h.1#0",
            "transformer.h.1#1",
        ]
        assert all(0 < s.share < 1 for s in got) and got.samples == 1


# -- the model is left as it was --------------------------------------------------------------
def test_model_state_rng_grads_and_modes_are_restored():
    model = nn.Sequential(ResNet(layers=(1, 1), widths=(4, 8)), nn.Dropout(0.5)).train()
    model[0].layer1.eval()  # a deliberately mixed state must come back as it was
    x = torch.randn(4, 3, 8, 8)
    F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    for method in ("gradient", "ablation"):
        for mode in ("eval", "train"):
            result = resdoctor.attribute(model, x, method=method, mode=mode)
            assert not any(math.isnan(s.share) for s in result)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is grads[n] for n, p in model.named_parameters())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert hooks_left(model) == 0 and not x.requires_grad


def test_hooks_and_mode_cleaned_up_after_an_error():
    model = ResidualMLP(depth=2).train()
    sites = resdoctor.discover(model, torch.randn(2, 16))
    with pytest.raises(RuntimeError):
        resdoctor.attribute(model, torch.randn(2, 5), sites=sites)  # wrong width
    assert hooks_left(model) == 0 and model.training
    assert torch._C._len_torch_function_stack() == 0
    y = torch.ones(2) + torch.ones(2)  # no mode left intercepting additions
    assert torch.equal(y, torch.full((2,), 2.0))


# -- choosing sites, targets; sites that cannot be attributed ------------------------------------
def test_site_names_subsets_and_unknown_names():
    model = sick_mlp()
    x = torch.randn(4, 8)
    full = resdoctor.attribute(model, x)
    some = resdoctor.attribute(model, x, sites=["blocks.2", "blocks.0"])
    assert [s.name for s in some] == ["blocks.2", "blocks.0"]
    assert some["blocks.2"].share == pytest.approx(full["blocks.2"].share, abs=1e-6)
    with pytest.raises(UnknownSiteError, match="blocks.9"):
        resdoctor.attribute(model, x, sites=["blocks.9"])


def test_targets_int_tensor_callable_and_predicted():
    model = sick_mlp()
    x = torch.randn(5, 8)
    by_int = resdoctor.attribute(model, x, target=2).shares
    by_fn = resdoctor.attribute(model, x, target=lambda out: out[:, 2]).shares
    assert by_int == pytest.approx(by_fn, abs=1e-6)
    model.eval()
    predicted = model(x).argmax(-1)
    assert resdoctor.attribute(model, x).shares == pytest.approx(
        resdoctor.attribute(model, x, target=predicted).shares, abs=1e-6
    )
    assert by_int != pytest.approx(resdoctor.attribute(model, x, target=0).shares, abs=1e-3)


class LayerDrop(ResidualMLP):
    """Skips block 1 in eval mode: its addition does not run during attribution."""

    def forward(self, x):
        x = self.proj(x)
        for k, block in enumerate(self.blocks):
            if self.training or k != 1:
                x = block(x)
        return self.head(x)


def test_sites_that_cannot_be_attributed_are_nan():
    model = LayerDrop(depth=3).train()
    x = torch.randn(4, 16)
    sites = resdoctor.discover(model, x)
    assert [s.name for s in sites] == ["blocks.0", "blocks.1", "blocks.2"]
    for method in ("gradient", "ablation"):
        got = resdoctor.attribute(model, x, sites=sites, method=method)
        assert math.isnan(got["blocks.1"].share)
        assert not math.isnan(got["blocks.0"].share) and not math.isnan(got["blocks.2"].share)
    untappable = [dataclasses.replace(s, skip=None) if s.name == "blocks.2" else s for s in sites]
    got = resdoctor.attribute(model, x, sites=untappable)
    assert math.isnan(got["blocks.2"].share) and got.to_dict()["sites"][2]["share"] is None


# -- periodic mode during watch() -------------------------------------------------------------
def train(model_fn, path=None, steps=10, **options):
    torch.manual_seed(0)
    model = model_fn()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    torch.manual_seed(1)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(steps)]
    doctor = resdoctor.watch(model, opt, path, **options) if path else None
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if doctor:
            doctor.log()
    if doctor:
        doctor.close()
    return model


def resnet_dropout():
    return nn.Sequential(ResNet(layers=(1, 1), widths=(4, 8)), nn.Dropout(0.3))


def test_watched_training_stays_bit_identical_with_attribution(tmp_path):
    probe = torch.randn(6, 3, 8, 8)
    plain = train(resnet_dropout)
    watched = train(resnet_dropout, tmp_path / "w.pt")
    attributed = train(
        resnet_dropout,
        tmp_path / "a.pt",
        attribute_every=3,
        attribute_inputs=probe,
        attribute_mode="train",
    )  # dropout draws RNG
    for model in (watched, attributed):
        for (k, a), b in zip(plain.state_dict().items(), model.state_dict().values(), strict=True):
            assert torch.equal(a, b), k
    run, ref = resdoctor.load(tmp_path / "a.pt"), resdoctor.load(tmp_path / "w.pt")
    shares = run.series("attribution_share")
    assert list(shares.index) == [0, 3, 6, 9]
    assert list(shares.columns) == ["0.layer1.0", "0.layer2.0"]
    assert ((shares >= 0) & (shares <= 1)).all().all()
    for signal in ("grad_norm", "branch_ratio", "grad_branch_share", "stream_norm"):
        assert run.series(signal).equals(ref.series(signal)), signal  # the pass is unrecorded
    assert run.errors.empty and run.steps == 10
    assert run.state["attribution"] == {
        "every": 3,
        "samples": 4,
        "method": "gradient",
        "mode": "train",
        "target": "predicted class",
        "series": "attribution_share",
    }


def test_attribution_failures_are_recorded_not_raised(tmp_path):
    plain = train(resnet_dropout)
    bad = torch.randn(4, 5)  # not an image batch: every attribution pass fails
    model = train(resnet_dropout, tmp_path / "b.pt", attribute_every=1, attribute_inputs=bad)
    assert all(
        torch.equal(a, b)
        for a, b in zip(plain.state_dict().values(), model.state_dict().values(), strict=True)
    )
    run = resdoctor.load(tmp_path / "b.pt")
    errors = run.errors[run.errors["where"] == "attribution"]
    assert len(errors) == 1 and int(errors["count"].iloc[0]) == 3  # then it stops trying
    assert not run.has("attribution_share")


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist, torch.nn.functional as F, resdoctor
from resdoctor.models import ResNet
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
torch.manual_seed(0)
model = torch.nn.parallel.DistributedDataParallel(ResNet(layers=(1, 1), widths=(4, 8)))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with resdoctor.watch(model, opt, sys.argv[2], attribute_every=2,
                     attribute_inputs=torch.randn(4, 3, 8, 8)) as doctor:
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(torch.randn(8, 3, 8, 8)), torch.randint(0, 10, (8,))).backward()
        opt.step()
        doctor.log()
dist.destroy_process_group()
"""


def test_attribution_of_a_ddp_wrapped_model_runs_on_the_inner_module(tmp_path):
    path = tmp_path / "ddp.pt"
    subprocess.run(
        [sys.executable, "-c", DDP_SCRIPT, str(tmp_path / "store"), str(path)],
        check=True,
        timeout=240,
    )
    run = resdoctor.load(path)
    shares = run.series("attribution_share")
    assert list(shares.columns) == ["module.layer1.0", "module.layer2.0"]
    assert list(shares.index) == [0, 2] and shares.notna().all().all()
    assert run.errors.empty


def test_watch_rejects_bad_attribution_options(tmp_path):
    model = ResidualMLP(depth=1)
    with pytest.raises(ValueError, match="attribute_inputs"):
        resdoctor.watch(model, path=tmp_path / "x.pt", attribute_every=5)
    with pytest.raises(TypeError, match="attribute_sample"):
        resdoctor.watch(
            model,
            path=tmp_path / "x.pt",
            attribute_every=5,
            attribute_inputs=torch.randn(2, 16),
            attribute_sample=2,
        )
    with pytest.raises(ValueError, match="attribute_method"):
        resdoctor.watch(
            model,
            path=tmp_path / "x.pt",
            attribute_every=5,
            attribute_inputs=torch.randn(2, 16),
            attribute_method="shap",
        )
    assert hooks_left(model) == 0


# -- optional dependency ------------------------------------------------------------------------
def test_import_resdoctor_does_not_import_captum():
    code = (
        "import sys, resdoctor, resdoctor.attribution.shares, resdoctor.cli.attribute; "
        "assert 'captum' not in sys.modules, 'captum imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_captum_gives_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "captum", None)  # makes `import captum` fail
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    with pytest.raises(ImportError, match=r"pip install resdoctor\[captum\]"):
        resdoctor.attribute(ResidualMLP(depth=1), torch.randn(2, 16))
    with pytest.raises(ImportError, match=r"pip install resdoctor\[captum\]"):
        resdoctor.watch(
            ResidualMLP(depth=1),
            path=tmp_path / "x.pt",
            attribute_every=2,
            attribute_inputs=torch.randn(2, 16),
        )
