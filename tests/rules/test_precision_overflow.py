"""precision-overflow on a real float16-autocast CPU run whose activations grow past 65504;
the truth (each step's largest |output| per Linear) measured with plain forward hooks."""

from __future__ import annotations

import torch
from torch import nn

import resdoctor
from resdoctor.rules.precision_overflow import precision_overflow


class Growing(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


def _train(path, autocast: bool, steps: int = 12):
    torch.manual_seed(0)
    model = Growing()
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(1.5)  # every block multiplies the stream
    x = torch.randn(8, 16)
    peaks: list[dict[str, float]] = []
    seen: dict[str, float] = {}
    hooks = [
        m.register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, float(o.detach().abs().max()))
        )
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    # no optimizer (a step per log()): the inputs grow x4 a step, so the outputs climb to
    # float16's limit and past it, with the weights as they are
    with resdoctor.watch(model, None, path, quiet=True) as doctor:
        for step in range(steps):
            with torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
                out = model(x * 4.0**step)
            loss = out.float().mean()  # a small gradient: the backward stays finite
            loss.backward()
            doctor.log(loss=loss)
            peaks.append(dict(seen))
    for h in hooks:
        h.remove()
    return resdoctor.load(path), peaks


def test_fp16_activations_near_65504_are_flagged_before_the_first_inf(tmp_path):
    run, peaks = _train(tmp_path / "r.pt", autocast=True)
    assert run.state["autocast"] == "float16"
    # the truth: the first step a Linear's output reaches a quarter of 65504, still finite
    first = next(
        s for s, p in enumerate(peaks) if any(16376 <= v < float("inf") for v in p.values())
    )
    (f,) = precision_overflow(run)
    assert f.step == first and f.evidence["dtype"] == "float16"
    assert peaks[first][f.location] >= 16376
    inf_step = run.nonfinite["step"].min() if len(run.nonfinite) else None
    if inf_step is not None:
        assert f.step < inf_step and f.evidence["lead_steps"] == inf_step - f.step
    assert f.fixes[0].code == "mixed-precision"


def test_float32_is_quiet_and_small_values_are_quiet(tmp_path):
    run, _ = _train(tmp_path / "a.pt", autocast=False)
    assert run.state.get("autocast") is None and precision_overflow(run) == []
    run, _ = _train(tmp_path / "b.pt", autocast=True, steps=2)  # far from the limit yet
    assert precision_overflow(run) == []
