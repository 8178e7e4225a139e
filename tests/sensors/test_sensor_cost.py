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
    """Finite exactly when the tensor is: a NaN, +inf or -inf shows; a finite tensor whose L2
    norm overflows float32 (or float16's 65504) does not."""
    grads = [
        torch.randn(5),
        torch.randn(3, 2),
        torch.randn(4).to(torch.bfloat16),
        torch.full((8,), 1e30),  # its norm squares past float32
        torch.full((8,), 60000.0, dtype=torch.float16),  # its norm is past 65504
    ]
    grads[1][1, 1] = bad
    for top in (GradNorm([]).maxima(grads), GradNorm([]).raw(list(grads))[1]):
        assert top is not None
        assert np.isfinite(top.numpy()).tolist() == [True, False, True, True, True]


def test_results_written_into_buffers_of_several_dtypes_unpack_in_slot_order():
    """Slots handed out across three dtype buffers (one of them growing past its first size,
    written before the growth) and put() tensors come back in slot order; the buffers are
    reused by the next segment without touching the packed copy."""
    from resdoctor.recording.segment import Buffers

    buffers = Buffers()
    seg = Segment(buffers)
    expect = []
    for i in range(700):
        dtype = (torch.float32, torch.float16, torch.float64)[i % 3]
        if i % 7 == 0:
            seg.put(torch.tensor(float(i)))
        else:
            _, (view,) = seg.reserve(torch.empty(0, dtype=dtype), 1)
            view.fill_(i)
        expect.append(float(i))
    seg.add_row("k", 0, tuple(range(700)))
    flat, layout = seg.pack()
    reuse = Segment(buffers)
    for _ in range(300):
        reuse.reserve(torch.empty(0), 1)[1][0].fill_(-1.0)
    idx, values = unpack(flat.numpy().astype(np.float64), layout)["k"]
    assert idx.tolist() == [0] and values[0].tolist() == expect


def test_autocast_does_not_lower_the_precision_of_a_sum_of_squares():
    from resdoctor.recording.sensors.kernels import sum_squares_into

    x = torch.full((4096,), 300.0)  # ||x||^2 = 3.7e8: beyond float16 and rounded in bfloat16
    seg = Segment()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        slot = sum_squares_into(seg, x)
    seg.add_row("k", 0, (slot,))
    flat, layout = seg.pack()
    assert unpack(flat.numpy().astype(np.float64), layout)["k"][1][0, 0] == 4096 * 300.0**2
