"""What the sensors skip or share to stay cheap, and that what they skip is safe to skip."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from resdoctor.recording.segment import Segment, unpack
from resdoctor.recording.sensors.grad_norm import GradNorm
from resdoctor.recording.sensors.nonfinite import NonFinite, finite_preserving

transformers = pytest.importorskip("transformers")


class _Hooks:
    def __init__(self) -> None:
        self.registered: list[tuple[torch.Tensor, Any]] = []

    def tensor(self, t: torch.Tensor, fn: Any) -> None:
        self.registered.append((t, fn))

    def node(self, node: Any, fn: Any) -> None:  # pragma: no cover - not used here
        raise AssertionError


def test_a_tensor_two_modules_return_gets_one_gradient_hook_and_a_row_for_each():
    sensor, hooks, seg = NonFinite(), _Hooks(), Segment()
    out = torch.randn(4, 3, requires_grad=True) * 1.0  # a child's output, returned by its parent
    sensor.incoming(lambda: seg, hooks, 5, out)  # the child (its hook runs first)
    sensor.incoming(lambda: seg, hooks, 2, out)  # the container
    assert len(hooks.registered) == 1
    hooks.registered[0][1](torch.full((4, 3), float("nan")))
    flat, layout = seg.pack()
    idx, values = unpack(flat.numpy().astype(np.float64), layout)["gin"]
    assert sorted(idx.tolist()) == [2, 5]
    assert np.isnan(values).all()


def test_an_in_place_change_between_two_modules_gets_its_own_hook():
    sensor, hooks, seg = NonFinite(), _Hooks(), Segment()
    out = torch.randn(4, 3, requires_grad=True) * 1.0
    sensor.incoming(lambda: seg, hooks, 5, out)
    out.mul_(2)  # a new version: the container's gradient is another tensor's
    sensor.incoming(lambda: seg, hooks, 2, out)
    assert len(hooks.registered) == 2


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "gelu_fast", "quick_gelu", "silu", "mish"])
def test_transformers_activations_need_no_output_check_and_stay_finite_in_float16(act):
    module = transformers.activations.ACT2FN[act]
    assert finite_preserving(module)
    assert NonFinite.checks(module) is None
    x = torch.tensor([-65504.0, -1e4, -300.0, -40.0, -1.0, 0.0, 1.0, 40.0, 300.0, 1e4, 65504.0])
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert torch.isfinite(module(x.to(dtype))).all(), (act, dtype)


def test_activations_that_can_overflow_are_still_checked():
    relu2 = transformers.activations.ACT2FN["relu2"]  # x**2 overflows float16
    assert not finite_preserving(relu2)
    assert not torch.isfinite(relu2(torch.tensor([300.0], dtype=torch.float16))).all()
    assert NonFinite.checks(relu2) is not None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_gradient_maxima_flag_every_kind_of_non_finite_value_on_cpu(bad):
    grads = [torch.randn(5), torch.randn(3, 2), torch.randn(4).to(torch.bfloat16)]
    grads[1][1, 1] = bad
    top = GradNorm([]).maxima(grads)
    assert top is not None
    assert np.isfinite(top.numpy()).tolist() == [True, False, True]
    assert top[0].item() == pytest.approx(grads[0].abs().max().item())
