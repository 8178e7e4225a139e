"""merge(): per-rank run states recorded in this process, labelled as ranks the way torchrun
would; the expected values come from the losses the loop itself logged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import resdoctor
from resdoctor.integrations.distributed import main, merge, rank_files, rank_path
from resdoctor.runfile import io as runfile
from tests._faults import ForwardNaN


def record(
    path: Path,
    rank: int,
    steps: int,
    *,
    nan_at: int = -1,
    capacity: int = 4096,
    nan_loss_at: int = -1,
) -> tuple[dict, list[float]]:
    """Train a tiny net; returns (run state labelled ``rank`` of 2, logged losses)."""
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Linear(4, 8), ForwardNaN(at=nan_at), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    with resdoctor.watch(model, optimizer=opt, path=path, capacity=capacity) as doctor:
        for step in range(steps):
            loss = model(torch.randn(2, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            value = float("nan") if step == nan_loss_at else float(loss.detach())
            losses.append(value)
            doctor.log(loss=value)
    state = runfile.read(path)
    state.update(rank=rank, world_size=2)
    for event in state["events"]:
        event["rank"] = rank
    return state, losses


def test_rank_path_and_rank_files(tmp_path) -> None:
    assert rank_path("out/run.pt", 3) == str(Path("out/run.rank3.pt"))
    state, _ = record(tmp_path / "a.pt", 0, 2)
    for r in (10, 2, 0):
        runfile.write(state, rank_path(tmp_path / "run.pt", r))
    (tmp_path / "run.rankX.pt").write_bytes(b"")
    (tmp_path / "other.rank1.pt").write_bytes(b"")
    expected = [rank_path(tmp_path / "run.pt", r) for r in (0, 2, 10)]
    assert rank_files(tmp_path / "run.pt") == expected


def test_loss_is_averaged_over_ranks_across_strides(tmp_path) -> None:
    a, la = record(tmp_path / "a.pt", 0, 6, capacity=4)  # rows of 2 steps
    b, lb = record(tmp_path / "b.pt", 1, 12, capacity=4)  # rows of 4 steps
    assert (a["series"]["scalars"]["stride"], b["series"]["scalars"]["stride"]) == (2, 4)
    run = resdoctor.Run(merge([b, a]))
    assert run.stride("scalars") == 4 and run.steps == 12 and run.state["ranks"] == [0, 1]
    loss = run.scalar("loss")
    assert list(loss.index) == [0, 4, 8]
    expected = [
        (np.mean(la[0:4]) + np.mean(lb[0:4])) / 2,
        (np.mean(la[4:6]) + np.mean(lb[4:8])) / 2,
        np.mean(lb[8:12]),
    ]  # rank 0 stopped at step 6
    np.testing.assert_allclose(loss.to_numpy(), expected, rtol=1e-6)
    assert (run.scalars("max")["loss"] >= loss - 1e-9).all()


def test_a_nan_on_one_rank_is_not_averaged_away(tmp_path) -> None:
    a, _ = record(tmp_path / "a.pt", 0, 4)
    b, _ = record(tmp_path / "b.pt", 1, 4, nan_loss_at=2)
    for stat in ("mean", "max"):
        loss = resdoctor.Run(merge([a, b])).scalars(stat)["loss"]
        assert list(loss.index) == [0, 1, 2, 3]
        assert np.isnan(loss[2]) and np.isfinite(loss.drop(2)).all()


def test_onset_keeps_the_earliest_rank_and_every_ranks_step(tmp_path) -> None:
    a, _ = record(tmp_path / "a.pt", 0, 6, nan_at=4)
    b, _ = record(tmp_path / "b.pt", 1, 6, nan_at=2)
    first = resdoctor.Run(merge([a, b])).nonfinite.iloc[0]
    assert (first.step, first.phase, first["rank"]) == (2, "forward", 1)
    assert first.detail["seen_by"] == [{"rank": 1, "step": 2}, {"rank": 0, "step": 4}]
    c, _ = record(tmp_path / "c.pt", 1, 6, nan_at=4)  # a tie: the lowest rank
    assert resdoctor.Run(merge([c, a])).nonfinite.iloc[0]["rank"] == 0


def test_replicated_grad_norm_is_the_lowest_ranks(tmp_path) -> None:
    a, _ = record(tmp_path / "a.pt", 0, 3)
    b, _ = record(tmp_path / "b.pt", 1, 3)
    merged = resdoctor.Run(merge([b, a])).series("grad_norm")
    np.testing.assert_array_equal(merged.to_numpy(), resdoctor.Run(a).series("grad_norm"))
    assert not np.allclose(merged.to_numpy(), resdoctor.Run(b).series("grad_norm").to_numpy())


def test_bad_input(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="no run"):
        merge([])
    (tmp_path / "junk.pt").write_bytes(b"not a run")
    with pytest.raises(resdoctor.RunFileError):
        merge([tmp_path / "junk.pt"])
    assert main([str(tmp_path / "none.pt")]) == 2
    assert "no per-rank files" in capsys.readouterr().err
