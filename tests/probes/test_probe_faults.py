"""The fault modules make NaN exactly where and when they say, and guard-op removes it."""

import torch

from probes.faults import Gate, NaNGrad, WhereGate


def test_gate_is_nan_in_forward_once_g_is_negative_unless_guarded():
    x = torch.ones(3)
    gate = Gate(0.25)
    assert torch.equal(gate(x), torch.full((3,), 0.5))
    with torch.no_grad():
        gate.g.fill_(-0.01)
    assert torch.isnan(gate(x)).all()
    guarded = Gate(-0.01, guard_eps=1e-6)
    assert torch.isfinite(guarded(x)).all()


def test_where_gate_has_a_finite_forward_and_a_nan_gradient():
    x = torch.ones(3, requires_grad=True)
    gate = WhereGate(-0.01)
    out = gate(x)
    assert torch.equal(out, torch.zeros(3))
    out.sum().backward()
    assert torch.isnan(gate.g.grad)
    assert torch.isfinite(x.grad).all()
    guarded = WhereGate(-0.01, guard_eps=1e-6)
    guarded(torch.ones(3)).sum().backward()
    assert torch.isfinite(guarded.g.grad)


def _grad_through(m: NaNGrad, step: int) -> torch.Tensor:
    m.set_step(step)
    x = torch.ones(2, requires_grad=True)
    (m(x) * 2).sum().backward()
    return x.grad


def test_nan_grad_poisons_exactly_one_step():
    m = NaNGrad(at=5)
    assert torch.equal(_grad_through(m, 4), torch.full((2,), 2.0))
    assert torch.isnan(_grad_through(m, 5)).all()
    assert torch.isfinite(_grad_through(m, 6)).all()
    guarded = NaNGrad(at=5, guard_eps=1e-6)
    assert torch.equal(_grad_through(guarded, 5), torch.zeros(2))
