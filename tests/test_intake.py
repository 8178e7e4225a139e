"""The intake folds segments into the journal several steps at a time; the run it records must
be the one that consuming every segment on its own records, bit for bit: AMP-skipped steps,
gradient accumulation, schedules that change a step's layout, and a NaN onset included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import resdoctor
from bench import scale
from resdoctor.recording import recorder as recorder_module
from resdoctor.recording.intake import Intake
from resdoctor.recording.options import Options
from resdoctor.recording.segment import Buffers, Unpacker


def _same(a: Any, b: Any, where: str = "state") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key not in ("written", "created", "path"):  # when and where, not what
                _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a.nan_to_num(7.5), b.nan_to_num(7.5)), where
        assert torch.equal(a.isnan(), b.isnan()), where
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


def _synthetic(batch: int, steps: int = 400) -> dict:
    shape, options = scale.Shape(6), Options()
    synth = scale.Synthetic(shape, steps, every=options.grad_share_every, skip_every=37)
    journal = scale.new_journal(shape, options)
    intake, buffers = Intake(journal, Unpacker(), batch=batch), Buffers()
    for step in range(steps):
        meta, seg = synth.segment(step, synth.values(step), buffers)
        scale.consume(intake, meta, seg)
    intake.settle(wait=True)
    return journal.state({})


def test_a_synthetic_run_is_the_same_in_batches_as_step_by_step():
    one, batched = _synthetic(batch=1), _synthetic(batch=32)
    assert one["skipped_steps"].numel() > 5 and one["events"]  # skips and the NaN onset
    _same(one, batched)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16), nn.ReLU()) for _ in range(3)
        )
        self.out = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def _train(tmp_path, batch: int, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setattr(recorder_module, "INTAKE_BATCH", batch)
    torch.manual_seed(0)
    model = _Net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    doctor = resdoctor.watch(model, optimizer=opt, path=tmp_path / f"run{batch}.pt")
    data = torch.randn(90, 4, 8)
    for step, x in enumerate(data):
        if step == 70:  # a NaN made by the loss
            x = x * np.nan
        loss = model(x).pow(2).mean()
        loss.backward()
        if step % 3 != 2 and step < 40:  # gradient accumulation: three micro-steps a step
            doctor.log(loss=loss)
            continue
        opt.step()
        opt.zero_grad()
        doctor.log(loss=loss, lr=1e-3)
    doctor.close()
    return resdoctor.load(tmp_path / f"run{batch}.pt").state


def test_a_watched_run_is_the_same_in_batches_as_step_by_step(tmp_path, monkeypatch):
    one = _train(tmp_path, 1, monkeypatch)
    batched = _train(tmp_path, 32, monkeypatch)
    assert one["steps"] == 13 + 50 and one["events"]
    _same(one, batched)
