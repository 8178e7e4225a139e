"""Issue 14: the true origin of a NaN, also when it starts outside the model's modules.

Each case plants one fault at a known step and place; the truth is measured here with plain
torch (the batch, the outputs, the loss), never read from resdoctor. The run must name exactly
that step, location and phase, and the report's first fix must fit the origin.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resdoctor
from resdoctor.models import ResidualMLP
from tests._models import gpt2, vit

STEP = 5


def record(
    path: Any,
    model: nn.Module,
    batch: Callable[[int], tuple[tuple[Any, ...], dict[str, Any], Any]],
    loss_fn: Callable[[Any, Any], torch.Tensor],
    steps: int = 8,
    **options: Any,
) -> tuple[resdoctor.Run, list[dict[str, bool]]]:
    """Train under watch; also measure, per step without resdoctor, whether the inputs, the
    model outputs and the loss were finite."""
    opt = torch.optim.SGD(model.parameters(), 1e-3)
    truth = []
    with resdoctor.watch(model, opt, path, **options) as doctor:
        for step in range(steps):
            args, kwargs, target = batch(step)
            out = model(*args, **kwargs)
            logits = out if isinstance(out, torch.Tensor) else out[0]
            loss = loss_fn(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss.detach())
            tensors = [*args, *kwargs.values()]
            truth.append(
                {
                    "inputs": all(
                        torch.isfinite(t).all() for t in tensors if t.is_floating_point()
                    ),
                    "outputs": bool(torch.isfinite(logits).all()),
                    "loss": bool(torch.isfinite(loss)),
                }
            )
    return resdoctor.load(path), truth


def first(run: resdoctor.Run) -> tuple[int, str, str]:
    e = run.nonfinite.iloc[0]
    return int(e.step), str(e.module), str(e.phase)


def finding(run: resdoctor.Run) -> resdoctor.Finding:
    (f,) = [f for f in resdoctor.analyze(run).findings if f.code == "nonfinite"]
    return f


def test_a_nan_feature_in_the_input_batch_is_the_input(tmp_path):
    torch.manual_seed(0)
    model = ResidualMLP(depth=3)

    def batch(step):
        x = torch.randn(8, 16)
        if step == STEP:
            x[3, 7] = float("nan")
        return (x,), {}, torch.randn(8, 1)

    run, truth = record(tmp_path / "r.pt", model, batch, F.mse_loss)
    assert not truth[STEP]["inputs"] and all(t["inputs"] for t in truth[:STEP])
    assert first(run) == (STEP, "x", "input")
    e = run.nonfinite.iloc[0]
    assert e.detail["samples"] == [3] and e.detail["values"] == 1 and e.detail["batch"] == 8
    f = finding(run)
    assert (f.step, f.location, f.phase) == (STEP, "x", "input")
    assert f.fixes[0].code == "check-inputs"
    assert not {"clip-gradients", "lower-lr"} & {x.code for x in f.fixes}


def _classifier(step_of_zero: int):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 4))
    y = torch.randint(0, 4, (8,))

    def batch(step):
        return (torch.randn(8, 16),), {}, (y, step == step_of_zero)

    def nll(logits, target):  # hand-written: -log p[y], with p[y] forced to 0 at one step
        y, zero = target
        p = logits.softmax(-1)
        if zero:
            p = p * F.one_hot(y, 4).logical_not()
        return -(p.gather(1, y[:, None]).log()).mean()

    return model, batch, nll


def test_a_hand_written_nll_of_zero_is_the_loss(tmp_path):
    model, batch, nll = _classifier(STEP)
    run, truth = record(tmp_path / "r.pt", model, batch, nll)
    assert truth[STEP]["outputs"] and not truth[STEP]["loss"]  # the model stayed finite
    assert first(run) == (STEP, "loss", "loss")
    f = finding(run)
    assert (f.step, f.phase) == (STEP, "loss") and f.fixes[0].code == "stable-loss"
    assert not {"clip-gradients", "lower-lr", "guard-op"} & {x.code for x in f.fixes}


def test_a_nan_regression_target_is_the_loss(tmp_path):
    torch.manual_seed(0)
    model = ResidualMLP(depth=2)

    def batch(step):
        y = torch.randn(8, 1)
        if step == STEP:
            y[2] = float("nan")
        return (torch.randn(8, 16),), {}, y

    run, truth = record(tmp_path / "r.pt", model, batch, F.mse_loss)
    assert truth[STEP]["inputs"] and truth[STEP]["outputs"] and not truth[STEP]["loss"]
    assert first(run) == (STEP, "loss", "loss")
    assert finding(run).fixes[0].code == "stable-loss"


def test_the_loss_origin_is_found_without_a_logged_loss(tmp_path):
    """No log(loss=...): the gradient arriving at the model's output tells."""
    model, batch, nll = _classifier(STEP)
    opt = torch.optim.SGD(model.parameters(), 1e-3)
    with resdoctor.watch(model, opt, tmp_path / "r.pt") as doctor:
        for step in range(8):
            (x,), _, target = batch(step)
            opt.zero_grad()
            nll(model(x), target).backward()
            opt.step()
            doctor.log()
    assert first(resdoctor.load(tmp_path / "r.pt")) == (STEP, "loss", "loss")


class _NaNBackward(torch.autograd.Function):
    """Identity forward; the backward returns NaN when ``poison`` (a custom op whose derivative
    breaks at one call)."""

    @staticmethod
    def forward(ctx, x, poison=True):  # noqa: ANN001
        ctx.poison = poison
        return x.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001
        return (g * float("nan") if ctx.poison else g), None


class _Block(nn.Module):
    """Two layers with the block's own functional code between them: a custom op at one call."""

    def __init__(self, dim: int, at: int | None) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.at, self.calls = at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = torch.relu(self.a(x))
        if self.at is not None:  # the block's own custom op, every call; broken at one
            h = _NaNBackward.apply(h, self.calls - 1 == self.at)
        return x + self.b(h)


def test_a_nan_made_in_a_blocks_own_backward_code_is_that_block(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), _Block(16, None), _Block(16, STEP), nn.Linear(16, 1))

    def batch(step):
        return (torch.randn(8, 16),), {}, torch.randn(8, 1)

    run, truth = record(tmp_path / "r.pt", model, batch, F.mse_loss)
    assert truth[STEP]["outputs"] and truth[STEP]["loss"]  # made in backward
    assert first(run) == (STEP, "2", "backward")  # the block, not its layer `2.a` below the op
    fix = finding(run).fixes[0]  # the traced forward saw the custom op in the block's own code
    assert fix.code == "guard-op" and fix.params["ops"] == ["_NaNBackward"]
    assert "nan_to_num" not in fix.snippet


def test_tied_embeddings_never_take_the_blame(tmp_path):
    """GPT-2's wte and lm_head share one weight; the NaN is made in c_attn's backward."""
    torch.manual_seed(0)
    model, example = gpt2(layers=2)
    c_attn = model.transformer.h[1].attn.c_attn
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return _NaNBackward.apply(output) if calls["n"] - 1 == STEP else None

    c_attn.register_forward_hook(poison)
    ids = example["input_ids"]

    def batch(step):
        return (), {"input_ids": ids, "labels": ids}, None

    opt = torch.optim.SGD(model.parameters(), 1e-3)
    with resdoctor.watch(model, opt, tmp_path / "r.pt") as doctor:
        for step in range(8):
            _, kwargs, _ = batch(step)
            loss = model(**kwargs).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss.detach())
    assert model.lm_head.weight is model.transformer.wte.weight
    run = resdoctor.load(tmp_path / "r.pt")
    assert first(run) == (STEP, "transformer.h.1.attn.c_attn", "backward")


def test_a_nan_in_a_vit_pixel_values_keyword_is_the_input(tmp_path):
    torch.manual_seed(0)
    model, example = vit(layers=2)

    def batch(step):
        pixels = torch.randn(2, 3, 32, 32)
        if step == STEP:
            pixels[1, 0, 4, 4] = float("inf")
        return (), {"pixel_values": pixels}, None

    run, truth = record(tmp_path / "r.pt", model, batch, lambda out, _: out.pow(2).mean())
    assert not truth[STEP]["inputs"]
    assert first(run) == (STEP, "pixel_values", "input")
    assert run.nonfinite.iloc[0].detail["samples"] == [1]


def _sigmoid_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(16, 32), nn.Sigmoid()]
    for _ in range(22):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    return nn.Sequential(*layers, nn.Linear(32, 1))


@pytest.mark.parametrize("example", [False, True])
def test_the_same_answers_with_example_inputs(tmp_path, example):
    """The forward order comes from the example pass: vanishing gradients and the backward
    onset read the same with and without ``example_inputs``."""
    model = _sigmoid_mlp()
    x, y = torch.randn(32, 16), torch.randn(32, 1)
    options = {"example_inputs": (x,)} if example else {}
    opt = torch.optim.SGD(model.parameters(), 0.1)
    with resdoctor.watch(model, opt, tmp_path / "r.pt", **options) as doctor:
        for _ in range(30):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    run = resdoctor.load(tmp_path / "r.pt")
    order = run.modules.set_index("name")["order"]
    assert (order[[n for n in order.index if n != "<root>"]] >= 0).all()
    assert order["0"] < order["46"]  # forward order, not names ("46" sorts before "5")
    assert "vanishing-gradients" in {f.code for f in resdoctor.analyze(run).findings}


def _overflowing_weight_gradient(tmp_path, name):  # noqa: ANN001, ANN202
    """Linear 0's weight gradient overflows at STEP (an input of 3e38, finite, meets a tiny
    weight: every output, the loss and every incoming gradient stay finite)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.mul_(1e-36)
        model[1].weight.fill_(0.5)

    def batch(step):
        x = torch.randn(8, 4)
        if step == STEP:
            x[:, 0] = 3e38
        return (x,), {}, None

    # the truth, with plain torch on a copy: the weight gradient is made non-finite by the layer
    plain = copy.deepcopy(model)
    (x,), _, _ = batch(STEP)
    seen = {}
    out0 = plain[0](x)
    out0.register_hook(lambda g: seen.update(incoming=bool(torch.isfinite(g).all())))
    plain[1](out0).sum().backward()
    assert seen["incoming"] and not torch.isfinite(plain[0].weight.grad).all()
    return record(tmp_path / name, model, batch, lambda out, _: out.sum())


def test_an_incoming_gradient_read_from_the_bias_gradient_names_the_same_origin(
    tmp_path, monkeypatch
):
    """Linear layers' incoming gradients are checked from their bias gradients (no hook, no
    reduction per call); the answer equals the hooked check's."""
    run, _ = _overflowing_weight_gradient(tmp_path, "bias.pt")
    assert first(run) == (STEP, "0", "backward")
    from resdoctor.recording import recorder

    monkeypatch.setattr(recorder, "summing_bias", lambda module: None)  # every one hooked
    hooked, _ = _overflowing_weight_gradient(tmp_path, "hooked.pt")
    assert first(hooked) == first(run)


def test_only_a_bias_that_sums_the_incoming_gradient_stands_in_for_its_check():
    from resdoctor.recording.sensors.nonfinite import summing_bias

    assert summing_bias(nn.Linear(2, 2)) is not None
    assert summing_bias(nn.LayerNorm(2)) is not None
    assert summing_bias(nn.Linear(2, 2, bias=False)) is None
    assert summing_bias(nn.Linear(2, 2).half()) is None  # float16 sums can overflow
    frozen = nn.Linear(2, 2)
    frozen.bias.requires_grad_(False)
    assert summing_bias(frozen) is None

    class Scaled(nn.Linear):  # a subclass may use its bias otherwise
        pass

    assert summing_bias(Scaled(2, 2)) is None
    hooked = nn.Linear(2, 2)
    hooked.register_forward_hook(lambda m, a, out: out * 2)  # may replace the output
    assert summing_bias(hooked) is None
