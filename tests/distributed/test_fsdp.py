"""FSDP2 ``fully_shard`` under real torchrun (2 CPU processes, gloo): sharded norms merged."""

from __future__ import annotations

import numpy as np
import pytest

import resdoctor
from tests.distributed._launch import expected, tail, torchrun
from tests.distributed.worker import CENSUS_STEPS, NAN_MODULE, NAN_RANK, NAN_STEP, STEPS

pytest.importorskip("torch.distributed.fsdp").fully_shard  # noqa: B018 - FSDP2 is needed


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    proc = torchrun("fsdp", out)
    assert proc.returncode == 0, tail(proc)
    return out


def test_every_module_is_marked_sharded(out) -> None:
    modules = expected(out, 0)["modules"]
    for rank in (0, 1):
        layout = resdoctor.load(out / f"run.rank{rank}.pt").state["distributed"]
        assert sorted(layout["sharded"]) == sorted(modules) == sorted(layout["primary"])


def test_sharded_grad_norms_combine_exactly(out) -> None:
    ref = np.array(expected(out, 0)["grad_norm"])[:NAN_STEP]  # norms of the full gradients
    shards = [
        resdoctor.load(out / f"run.rank{r}.pt").series("grad_norm").to_numpy()[:NAN_STEP]
        for r in (0, 1)
    ]
    assert not np.allclose(shards[0], ref)  # a rank alone sees only its shard
    merged = resdoctor.load(out / "run.pt").series("grad_norm").to_numpy()[:NAN_STEP]
    np.testing.assert_allclose(merged, ref, rtol=1e-5)
    np.testing.assert_allclose(merged, np.sqrt(shards[0] ** 2 + shards[1] ** 2), rtol=1e-6)


def test_total_grad_norm_is_the_full_models(out) -> None:
    ref = np.sqrt((np.array(expected(out, 0)["grad_norm"]) ** 2).sum(1))[:NAN_STEP]
    total = resdoctor.load(out / "run.pt").scalar("grad_norm_total").to_numpy()[:NAN_STEP]
    np.testing.assert_allclose(total, ref, rtol=1e-5)


def test_sharded_update_ratio_within_its_approximation(out) -> None:
    ref = np.array(expected(out, 0)["update"])[:NAN_STEP]
    merged = resdoctor.load(out / "run.pt").series("update_ratio").to_numpy()[:NAN_STEP]
    error = np.abs(merged / ref - 1)
    assert (error <= ref).all()  # a relative error of at most the ratio itself


def test_first_onset_names_the_rank(out) -> None:
    run = resdoctor.load(out / "run.pt")
    assert run.steps == STEPS and run.state["ranks"] == [0, 1]
    first = run.nonfinite.iloc[0]
    assert (first.step, first.module, first.phase, first["rank"]) == (
        NAN_STEP,
        NAN_MODULE,
        "forward",
        NAN_RANK,
    )
    assert run.errors.empty


def test_no_hooks_remain(out) -> None:
    for rank in (0, 1):
        before, after = expected(out, rank)["hooks"]
        assert after == before > 0  # FSDP's own hooks stay, resdoctor's are gone


def test_no_collective_added_per_step(out) -> None:
    """The profiler's census of collectives over the same training loop, unwatched and watched."""
    for rank in (0, 1):
        plain, watched = expected(out, rank)["collectives"]
        per_step = {name: count * STEPS // CENSUS_STEPS for name, count in plain.items()}
        assert plain and watched == per_step
