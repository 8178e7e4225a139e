"""Sites measured without tensor-identity tricks (issue 15): in-place additions on tensors
that are no module's output, side inputs re-added in every block, checkpointed blocks, and
``torch.compile`` (detected, explained, bit-identical)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import resdoctor


class InPlaceBlock(nn.Module):
    """``y = x * 1.0; y.add_(branch)``: neither operand nor the sum is a module boundary the
    addition can be tapped at (the output is the sum only after the in-place update)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 1.0
        y.add_(torch.tanh(self.fc(x)) * 0.5)
        return y


class TimestepBlock(nn.Module):
    """A diffusion-style block: the timestep embedding ``t`` (one tensor, every block) is
    added to the stream, then ``x + mlp(x)``: one residual site, not two."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x + t
        return x + self.mlp(x)


class Stack(nn.Module):
    def __init__(self, block: type[nn.Module], d: int = 16, layers: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.temb = nn.Linear(1, d)
        self.blocks = nn.ModuleList(block(d) for _ in range(layers))
        self.out = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        x = self.inp(x)
        emb = self.temb(t) if t is not None else None
        for block in self.blocks:
            x = block(x, emb) if emb is not None else block(x)
        return self.out(x)


def _train(model, path, steps=3, *args):
    opt = torch.optim.SGD(model.parameters(), 0.01)
    with resdoctor.watch(model, opt, path) as doctor:
        for _ in range(steps):
            loss = model(*args).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    return resdoctor.load(path)


def test_an_in_place_addition_inside_forward_is_measured_at_the_addition(tmp_path):
    torch.manual_seed(0)
    model, x = Stack(InPlaceBlock), torch.randn(32, 8)
    reference = Stack(InPlaceBlock)
    reference.load_state_dict(model.state_dict())
    # the label, without resdoctor: ||branch|| / ||skip|| at each block, before any step
    expected = []
    with torch.no_grad():
        h = reference.inp(x)
        for block in reference.blocks:
            branch = torch.tanh(block.fc(h)) * 0.5
            expected.append(float(branch.norm() / h.norm()))
            h = h + branch
    run = _train(model, tmp_path / "r.pt", 3, x)
    assert [s["skip"] for s in run.site_records] == [None] * 3  # no boundary carries them
    ratio = run.series("branch_ratio")
    assert ratio.notna().all().all() and list(ratio.index) == [0, 1, 2]
    assert ratio.iloc[0].tolist() == pytest.approx(expected, rel=1e-5)
    assert ratio.iloc[1].tolist() != pytest.approx(expected, rel=1e-7)  # measured each step
    assert run.errors.empty


def test_an_in_place_site_leaves_training_bit_identical(tmp_path):
    torch.manual_seed(0)
    a, x = Stack(InPlaceBlock), torch.randn(32, 8)
    b = Stack(InPlaceBlock)
    b.load_state_dict(a.state_dict())
    _train(a, tmp_path / "r.pt", 3, x)
    opt = torch.optim.SGD(b.parameters(), 0.01)
    for _ in range(3):
        loss = b(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_a_side_input_added_in_every_block_is_no_skip(tmp_path):
    """Before: 5 sites for 3 blocks (``x + t`` of blocks 2 and 3 taken for skips)."""
    torch.manual_seed(0)
    run = _train(Stack(TimestepBlock), tmp_path / "r.pt", 2, torch.randn(8, 8), torch.rand(8, 1))
    assert list(run.sites["owner"]) == ["blocks.0", "blocks.1", "blocks.2"]
    assert run.series("branch_ratio").notna().all().all()


def test_a_reentrant_checkpointed_block_is_measured_every_step(tmp_path):
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(Stack):
        def forward(self, x, t=None):
            x = self.inp(x)
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=True)
            return self.out(x)

    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc = nn.Linear(d, d)

        def forward(self, x):
            return x + torch.tanh(self.fc(x))

    torch.manual_seed(0)
    x = torch.randn(8, 8, requires_grad=True)
    run = _train(Checkpointed(Block), tmp_path / "r.pt", 3, x)
    ratio = run.series("branch_ratio")
    assert len(run.sites) == 3 and list(ratio.index) == [0, 1, 2]
    assert ratio.notna().all().all()


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.fc(self.ln(x)))


def _compiled_run(tmp_path, watch_first: bool):
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model, x = Stack(Block), torch.randn(16, 8)
    twin = Stack(Block)
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), 0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if watch_first:
            doctor = resdoctor.watch(model, opt, tmp_path / "c.pt")
            compiled = torch.compile(model, backend="eager")
        else:
            compiled = torch.compile(model, backend="eager")
            doctor = resdoctor.watch(compiled, opt, tmp_path / "c.pt")
    for _ in range(3):
        loss = compiled(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        doctor.log(loss=loss)
    doctor.close()
    topt = torch.optim.SGD(twin.parameters(), 0.01)
    tcompiled = torch.compile(twin, backend="eager")
    for _ in range(3):
        loss = tcompiled(x).pow(2).mean()
        topt.zero_grad()
        loss.backward()
        topt.step()
    same = all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return resdoctor.load(tmp_path / "c.pt"), caught, same, breaks


def test_a_compiled_model_is_detected_named_and_explained(tmp_path):
    run, caught, same, breaks = _compiled_run(tmp_path, watch_first=False)
    assert any("torch.compile'd" in str(w.message) for w in caught)
    assert same and breaks == 0
    assert "blocks.0.fc" in list(run.modules["name"])  # not _orig_mod.blocks.0.fc
    assert not any("_orig_mod" in n for n in run.modules["name"])
    assert run.series("grad_norm").notna().all().all()  # its boundary is still recorded
    notes = resdoctor.analyze(run).notes
    assert any(n.startswith("torch.compile'd model") for n in notes)


def test_compiling_after_watch_is_said_in_the_report(tmp_path):
    run, _, same, breaks = _compiled_run(tmp_path, watch_first=True)
    assert same and breaks == 0
    notes = resdoctor.analyze(run).notes
    assert any("3 of 3 steps ran no forward pass" in n for n in notes)
