"""TensorBoard: real event files read back with tensorboard's own EventAccumulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import resdoctor
from resdoctor.cli.main import app
from resdoctor.models import ResidualMLP

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def _events(logdir) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _train(path, steps=12, nan_at=None, **watch):
    torch.manual_seed(0)
    model = ResidualMLP(depth=3, dim=16)
    opt = torch.optim.SGD(model.parameters(), 0.05)
    with resdoctor.watch(model, opt, path, **watch) as doctor:
        for i in range(steps):
            if i == nan_at:
                with torch.no_grad():
                    model.blocks[1].branch[1].weight.fill_(float("nan"))
            loss = F.mse_loss(model(torch.randn(8, 16)), torch.randn(8, 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    return resdoctor.load(path)


def test_watch_writes_grouped_scalars_the_heatmap_and_the_report(tmp_path):
    logdir = tmp_path / "tb"
    run = _train(tmp_path / "r.pt", tensorboard=str(logdir), tensorboard_every=5)
    acc = _events(logdir)
    tags = acc.Tags()
    loss = acc.Scalars("resdoctor/loss")
    assert [e.step for e in loss] == [0, 5, 10, 11]  # every 5th step, and the last at close
    assert loss[1].value == pytest.approx(float(run.scalar("loss")[5]), rel=1e-6)
    ratio = acc.Scalars("resdoctor.sites.branch_ratio/blocks.1")
    assert ratio[0].step == 0 and ratio[0].value == pytest.approx(
        float(run.series("branch_ratio").loc[0, "blocks.1"]), rel=1e-6
    )
    assert "resdoctor.grad_norm/head" in tags["scalars"]
    assert "resdoctor.sites.smoothing/blocks.0" in tags["scalars"]
    assert tags["images"] == ["resdoctor/gradient_flow"]
    image = acc.Images("resdoctor/gradient_flow")[0]
    assert image.width > 10 and image.height > 10
    text = acc.Tensors("resdoctor/report/text_summary")[0]
    assert b"HEALTHY" in text.tensor_proto.string_val[0]


def test_a_nan_run_is_written_with_its_root_cause(tmp_path):
    logdir = tmp_path / "tb"
    _train(tmp_path / "r.pt", nan_at=3, tensorboard=str(logdir), tensorboard_every=1)
    acc = _events(logdir)
    stream = acc.Scalars("resdoctor.sites.stream_norm/blocks.1")
    assert [e.step for e in stream][:3] == [0, 1, 2] and np.isfinite(stream[0].value)
    assert any(not np.isfinite(e.value) for e in stream)  # a measured NaN is written
    report = acc.Tensors("resdoctor/report/text_summary")[0].tensor_proto.string_val[0]
    assert b"CRITICAL" in report and b"Root cause" in report and b"nonfinite" in report


def test_export_converts_a_saved_run(tmp_path):
    run = _train(tmp_path / "r.pt", steps=6)
    res = CliRunner().invoke(
        app, ["export", str(tmp_path / "r.pt"), "--tensorboard", str(tmp_path / "tb")]
    )
    assert res.exit_code == 0, res.output
    acc = _events(tmp_path / "tb")
    assert [e.step for e in acc.Scalars("resdoctor/loss")] == list(range(6))
    grad = acc.Scalars("resdoctor.grad_norm/head")
    assert [e.value for e in grad] == pytest.approx(list(run.series("grad_norm")["head"]), rel=1e-6)
    bad = CliRunner().invoke(app, ["export", str(tmp_path / "nope.pt"), "--tensorboard", "x"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_your_own_writer_stays_open(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    _train(tmp_path / "r.pt", steps=3, tensorboard=writer)
    writer.add_scalar("user/after", 1.0, 0)  # still open
    writer.close()
    assert "user/after" in _events(tmp_path / "tb").Tags()["scalars"]
