"""FSDP2 in one process (a world of one rank): gradient and parameter norms of DTensors.

A fast regression guard for the torchrun test: ``GradNorm`` once failed on DTensor gradients
("mixed torch.Tensor and DTensor") and every step's norms were lost.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

import resdoctor
from resdoctor.models import ResidualMLP

fully_shard = pytest.importorskip("torch.distributed.fsdp").fully_shard


@pytest.fixture()
def one_rank():
    store = dist.HashStore()
    dist.init_process_group("gloo", rank=0, world_size=1, store=store)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_fully_sharded_model_records_exact_norms(one_rank, tmp_path) -> None:
    model = ResidualMLP(d_in=4, dim=8, depth=2)
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)  # the unscale path sees DTensors too
    names = [n for n, m in model.named_modules() if list(m.parameters(recurse=False))]
    modules = dict(model.named_modules())
    expected = []
    with resdoctor.watch(
        model, optimizer=opt, path=tmp_path / "run.pt", scaler=scaler, update_every=1
    ) as doctor:
        for _ in range(3):
            opt.zero_grad()
            scaler.scale(model(torch.randn(2, 4)).pow(2).mean()).backward()
            grads = [
                [
                    p.grad.full_tensor() / scaler.get_scale()
                    for p in modules[n].parameters(recurse=False)
                ]
                for n in names
            ]
            expected.append(
                [float(torch.sqrt(sum((g.double() ** 2).sum() for g in gs))) for gs in grads]
            )
            scaler.step(opt)
            scaler.update()
            doctor.log()
    run = resdoctor.load(tmp_path / "run.pt")
    assert run.errors.empty, run.errors.to_dict("records")
    assert isinstance(next(model.parameters()).grad, torch.distributed.tensor.DTensor)
    np.testing.assert_allclose(run.series("grad_norm")[names].to_numpy(), expected, rtol=1e-5)
    assert np.isfinite(run.series("update_ratio").to_numpy()).all()


def test_regression_parameter_norms_use_the_local_shard():
    # Bug: rewriting GradNorm.measure dropped the DTensor -> local shard step for parameter
    # norms (optimizer hook), so every FSDP2 step recorded an internal error instead.
    from resdoctor.recording.sensors.grad_norm import _local

    assert _local(None) is None
    t = torch.ones(3)
    assert _local(t) is t
