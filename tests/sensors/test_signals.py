"""Every recorded signal against a brute-force reference computed with plain autograd."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resdoctor
from resdoctor.models import ResidualMLP
from resdoctor.models.mlp import MLPBlock


class ProjBlock(nn.Module):
    """out = S(x) + F(x): a projection shortcut with its own weights."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.shortcut = nn.Linear(d_in, d_out)
        self.branch = nn.Sequential(nn.Linear(d_in, d_out), nn.Tanh(), nn.Linear(d_out, d_out))

    def forward(self, x):
        return self.shortcut(x) + self.branch(x)


class ProjNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.block = ProjBlock(32, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(self.block(torch.tanh(self.inp(x))))


def record_two_steps(model, x, y, path):
    """Step 0 discovers sites; step 1 is compared. Returns the run and the model before step 1."""
    opt = torch.optim.SGD(model.parameters(), 0.05)
    with resdoctor.watch(
        model, opt, path, smoothing_every=1, update_every=1, grad_share_every=1
    ) as doctor:
        for step in range(2):
            if step == 1:
                snapshot = copy.deepcopy(model)
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    return resdoctor.load(path), snapshot


def rms(t):
    return float(t.detach().pow(2).mean().sqrt())


def at_step1(run, signal):
    return run.series(signal).loc[1]


def test_grad_norm_param_norm_update_ratio(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    run, ref = record_two_steps(ResidualMLP(depth=3), x, y, tmp_path / "r.pt")
    ref_opt = torch.optim.SGD(ref.parameters(), 0.05)
    before = {n: p.detach().clone() for n, p in ref.named_parameters()}
    F.mse_loss(ref(x), y).backward()
    grads = {}
    for name, module in ref.named_modules():
        params = list(module.parameters(recurse=False))
        if params:
            grads[name] = float(torch.sqrt(sum((p.grad**2).sum() for p in params)))
    ref_opt.step()
    recorded = at_step1(run, "grad_norm")
    for name, value in grads.items():
        assert recorded[name] == pytest.approx(value, rel=1e-5), name
    ratio = at_step1(run, "update_ratio")
    for name, _module in ref.named_modules():
        ps = [(n, p) for n, p in ref.named_parameters() if n.rsplit(".", 1)[0] == name]
        if not ps:
            continue
        delta = torch.sqrt(sum(((p - before[n]) ** 2).sum() for n, p in ps))
        norm0 = torch.sqrt(sum((before[n] ** 2).sum() for n, _ in ps))
        assert ratio[name] == pytest.approx(float(delta / norm0), rel=1e-4), name


def block_io(model, x):
    """Inputs and outputs of every MLPBlock and its branch, by forward hooks."""
    seen = {}
    hooks = []
    for i, block in enumerate(model.blocks):
        hooks.append(
            block.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, (a[0], o)))
        )
        hooks.append(
            block.branch.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(("b", i), o))
        )
    out = model(x)
    for h in hooks:
        h.remove()
    return out, seen


def test_branch_ratio_stream_norm_smoothing_and_grad_share(tmp_path):
    torch.manual_seed(1)
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    run, ref = record_two_steps(ResidualMLP(depth=3), x, y, tmp_path / "r.pt")
    out, seen = block_io(ref, x)
    loss = F.mse_loss(out, y)
    ratio, stream = at_step1(run, "branch_ratio"), at_step1(run, "stream_norm")
    sim, share = at_step1(run, "smoothing"), at_step1(run, "grad_branch_share")
    for i in range(3):
        name = f"blocks.{i}"
        xin, xout = seen[i]
        branch = seen[("b", i)]
        assert ratio[name] == pytest.approx(float(branch.norm() / xin.norm()), rel=1e-5)
        assert stream[name] == pytest.approx(rms(xout), rel=1e-5)
        unit = F.normalize(xout.detach(), dim=1)
        gram = unit @ unit.T
        n = gram.shape[0]
        assert sim[name] == pytest.approx(float((gram.sum() - n) / (n * (n - 1))), abs=1e-5)
        g_out, g_in = torch.autograd.grad(loss, [xout, xin], retain_graph=True)
        g_branch = (g_in - g_out).norm()
        assert share[name] == pytest.approx(float(g_branch / (g_branch + g_out.norm())), rel=1e-4)


def test_projection_site_grad_share_against_separate_paths(tmp_path):
    torch.manual_seed(2)
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    run, ref = record_two_steps(ProjNet(), x, y, tmp_path / "p.pt")
    assert run.sites.kind.tolist() == ["projection"]
    h = torch.tanh(ref.inp(x))
    skip, branch = ref.block.shortcut(h), ref.block.branch(h)
    out = skip + branch
    loss = F.mse_loss(ref.head(out), y)
    (g,) = torch.autograd.grad(loss, [out], retain_graph=True)
    (gs,) = torch.autograd.grad(skip, [h], g, retain_graph=True)
    (gb,) = torch.autograd.grad(branch, [h], g)
    expected = float(gb.norm() / (gb.norm() + gs.norm()))
    assert at_step1(run, "grad_branch_share")["block"] == pytest.approx(expected, rel=1e-4)
    assert at_step1(run, "branch_ratio")["block"] == pytest.approx(
        float(branch.norm() / skip.norm()), rel=1e-5
    )


class AuxNet(nn.Module):
    """The block's input also feeds an auxiliary head: x receives gradient from outside the
    site, which belongs to neither its skip nor its branch."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 16)
        self.block = MLPBlock(16)
        self.aux = nn.Linear(16, 1)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        return self.head(self.block(h)) + 3 * self.aux(h)


def test_grad_share_ignores_gradient_from_outside_the_site(tmp_path):
    torch.manual_seed(3)
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    run, ref = record_two_steps(AuxNet(), x, y, tmp_path / "a.pt")
    assert "block" in run.sites.name.tolist()
    h = torch.tanh(ref.inp(x))
    branch = ref.block.branch(h)
    out = h + branch
    loss = F.mse_loss(ref.head(out) + 3 * ref.aux(h), y)
    (g_out,) = torch.autograd.grad(loss, [out], retain_graph=True)
    (g_branch,) = torch.autograd.grad(branch, [h], g_out)
    expected = float(g_branch.norm() / (g_branch.norm() + g_out.norm()))
    assert at_step1(run, "grad_branch_share")["block"] == pytest.approx(expected, rel=1e-4)


def test_smoothing_of_a_sum_equals_smoothing_of_its_operands():
    from resdoctor.recording.sensors import Smoothing

    a, b = torch.randn(2, 40, 8), torch.randn(2, 40, 8)
    for got, want in zip(Smoothing(16).of_sum(a, b), Smoothing(16)(a + b), strict=True):
        assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_smoothing_measures_collapse():
    from resdoctor.recording.sensors import Smoothing

    same = torch.ones(1, 10, 8) + 1e-6 * torch.randn(1, 10, 8)
    sim, energy = Smoothing()(same)
    assert float(sim) > 0.999 and float(energy) < 1e-6
    spread = torch.eye(10, 16)[None]
    sim, energy = Smoothing()(spread)
    assert abs(float(sim)) < 1e-6 and float(energy) == pytest.approx(0.9, rel=1e-5)
    image = torch.randn(2, 4, 6, 6)
    sim, _ = Smoothing(samples=64)(image)
    pos = image[0].flatten(1).T
    unit = F.normalize(pos, dim=1)
    gram = unit @ unit.T
    assert float(sim) == pytest.approx(float((gram.sum() - 36) / (36 * 35)), abs=1e-5)


def test_logged_tensor_scalars_and_floats(tmp_path):
    model = ResidualMLP(depth=1)
    with resdoctor.watch(model, path=tmp_path / "s.pt") as doctor:
        for i in range(3):
            doctor.log(loss=torch.tensor(float(i)), lr=0.1 * i, accuracy=np.float32(0.5))
    s = resdoctor.load(tmp_path / "s.pt").scalars()
    assert s["loss"].tolist() == [0.0, 1.0, 2.0]
    assert s["lr"].tolist() == pytest.approx([0.0, 0.1, 0.2])
    assert s["accuracy"].tolist() == [0.5] * 3


def test_tied_weights_are_measured_once_and_reported_for_both_modules(tmp_path):
    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 8)
            self.mid = nn.Linear(8, 8)
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight  # as GPT-2 ties wte and lm_head

        def forward(self, ids):
            return self.head(torch.tanh(self.mid(self.emb(ids))))

    torch.manual_seed(4)
    model, ids = TiedLM(), torch.randint(0, 10, (4, 5))
    opt = torch.optim.SGD(model.parameters(), 0.1)
    with resdoctor.watch(model, opt, tmp_path / "t.pt", update_every=1) as doctor:
        opt.zero_grad()
        F.cross_entropy(model(ids).flatten(0, 1), ids.flatten()).backward()
        expected = float(model.emb.weight.grad.norm())
        opt.step()
        doctor.log()
        assert len(doctor.recorder.grads.params) == 3  # emb/head weight once, mid weight, bias
    grads = resdoctor.load(tmp_path / "t.pt").series("grad_norm").loc[0]
    assert grads["emb"] == pytest.approx(expected, rel=1e-6)
    assert grads["head"] == pytest.approx(expected, rel=1e-6)
    ratios = resdoctor.load(tmp_path / "t.pt").series("update_ratio").loc[0]
    assert ratios["emb"] == pytest.approx(ratios["head"], rel=1e-12) and ratios["emb"] > 0


class ScaledNet(nn.Module):
    """``x + 0.5 * branch(x)``: the branch operand is no module's output."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 16)
        self.block = MLPBlock(16, scale=0.5)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.block(torch.tanh(self.inp(x))))


def test_grad_share_of_a_branch_that_is_no_module_output(tmp_path):
    torch.manual_seed(5)
    x, y = torch.randn(8, 16), torch.randn(8, 1)
    run, ref = record_two_steps(ScaledNet(), x, y, tmp_path / "s.pt")
    h = torch.tanh(ref.inp(x))
    branch = 0.5 * ref.block.branch(h)
    out = h + branch
    loss = F.mse_loss(ref.head(out), y)
    (g_out,) = torch.autograd.grad(loss, [out], retain_graph=True)
    (g_branch,) = torch.autograd.grad(branch, [h], g_out)
    expected = float(g_branch.norm() / (g_branch.norm() + g_out.norm()))
    assert at_step1(run, "grad_branch_share")["block"] == pytest.approx(expected, rel=1e-4)
    assert at_step1(run, "branch_ratio")["block"] == pytest.approx(
        float(branch.norm() / h.norm()), rel=1e-5
    )
