"""DDP under real torchrun (2 CPU processes, gloo): per-rank files, merged run, first rank."""

from __future__ import annotations

import json

import numpy as np
import pytest

import resdoctor
from tests.distributed._launch import expected, tail, torchrun
from tests.distributed.worker import CENSUS_STEPS, NAN_MODULE, NAN_RANK, NAN_STEP, STEPS


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    proc = torchrun("ddp", out)
    assert proc.returncode == 0, tail(proc)
    return out


def test_each_rank_keeps_its_own_file(out) -> None:
    for rank in (0, 1):
        run = resdoctor.load(out / f"run.rank{rank}.pt")
        assert (run.meta["rank"], run.meta["world_size"], run.steps) == (rank, 2, STEPS)
    onsets = resdoctor.load(out / f"run.rank{NAN_RANK}.pt").nonfinite
    first = onsets.iloc[0]
    assert (first.step, first.module, first.phase, first["rank"]) == (
        NAN_STEP,
        NAN_MODULE,
        "forward",
        NAN_RANK,
    )
    # rank 0 made no NaN: it only received one through the gradient all-reduce
    other = resdoctor.load(out / "run.rank0.pt").nonfinite
    at_step = other[other.step == NAN_STEP]
    assert list(at_step.phase) == ["backward"] and set(at_step["rank"]) == {0}


def test_merged_run_names_the_rank_that_saw_it_first(out) -> None:
    run = resdoctor.load(out / "run.pt")
    assert run.state["merged"] and run.state["ranks"] == [0, 1] and run.steps == STEPS
    first = run.nonfinite.iloc[0]
    assert (first.step, first.module, first.phase, first["rank"]) == (
        NAN_STEP,
        NAN_MODULE,
        "forward",
        NAN_RANK,
    )
    assert first.detail["seen_by"] == [{"rank": NAN_RANK, "step": NAN_STEP}]
    root = run.nonfinite[run.nonfinite.module == "<root>"].iloc[0]  # both ranks, rank 1 first
    assert root["rank"] == NAN_RANK and {s["rank"] for s in root.detail["seen_by"]} == {0, 1}


def test_grad_norm_measured_after_the_ddp_allreduce(out) -> None:
    """Regression: norms were read before DDP's all-reduce finished (each rank's local grads)."""
    ref = np.array(expected(out, 0)["grad_norm"])[:NAN_STEP]
    np.testing.assert_allclose(ref, np.array(expected(out, 1)["grad_norm"])[:NAN_STEP])
    for name in ("run.rank0.pt", "run.rank1.pt", "run.pt"):
        grads = resdoctor.load(out / name).series("grad_norm")
        assert list(grads.columns) == expected(out, 0)["modules"]
        np.testing.assert_allclose(grads.to_numpy()[:NAN_STEP], ref, rtol=1e-5)


def test_merged_loss_is_the_mean_over_ranks(out) -> None:
    losses = np.array([expected(out, r)["loss"] for r in (0, 1)])  # [rank, step]
    assert not np.allclose(losses[0], losses[1])  # each rank saw its own batch
    loss = resdoctor.load(out / "run.pt").scalar("loss")
    np.testing.assert_allclose(loss.to_numpy()[:NAN_STEP], losses.mean(0)[:NAN_STEP], rtol=1e-5)


def test_update_ratio_merged(out) -> None:
    ratio = resdoctor.load(out / "run.pt").series("update_ratio").to_numpy()
    np.testing.assert_allclose(
        ratio[:NAN_STEP], np.array(expected(out, 0)["update"])[:NAN_STEP], rtol=1e-4
    )


def test_no_hooks_remain(out) -> None:
    for rank in (0, 1):
        before, after = expected(out, rank)["hooks"]
        assert after == before


def test_watching_on_rank_0_only_does_not_hang(out) -> None:
    run = resdoctor.load(out / "partial.pt")
    assert run.state["ranks"] == [0] and run.state["missing_ranks"] == [1] and run.steps == 2
    assert not (out / "partial.rank1.pt").exists()


def test_analyze_merged_run(out) -> None:
    report = resdoctor.analyze(out / "run.pt")
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["steps"] == STEPS and len(payload["sites"]) == 3
    first = next(f for f in report.findings if f.code == "nonfinite")
    assert report.verdict == "critical" and first.severity == "critical"
    assert (first.step, first.location, first.phase) == (NAN_STEP, NAN_MODULE, "forward")


def test_nonfinite_finding_names_the_rank(out) -> None:
    report = resdoctor.analyze(out / "run.pt")
    first = next(f for f in report.findings if f.code == "nonfinite")
    assert first.evidence.get("rank") == NAN_RANK


def test_crashed_run_merges_from_rank_files(out, capsys) -> None:
    from resdoctor.integrations.distributed import main, rank_files

    assert not (out / "crash.pt").exists()  # every rank died before close()
    files = rank_files(out / "crash.pt")
    assert [f.rsplit(".", 2)[-2] for f in files] == ["rank0", "rank1"]
    assert main([str(out / "crash.pt")]) == 0
    assert "merged 2 rank files" in capsys.readouterr().out
    run = resdoctor.load(out / "crash.pt")
    assert run.steps == 4 and run.state["ranks"] == [0, 1]  # flushed every 2 steps
    rank0 = resdoctor.load(files[0]).series("grad_norm")
    np.testing.assert_array_equal(run.series("grad_norm").to_numpy(), rank0.to_numpy())


def test_no_collective_added_per_step(out) -> None:
    """The profiler's census of collectives over the same training loop, unwatched and watched."""
    for rank in (0, 1):
        plain, watched = expected(out, rank)["collectives"]
        per_step = {name: count * STEPS // CENSUS_STEPS for name, count in plain.items()}
        assert plain and watched == per_step


def test_regression_a_nan_in_one_ranks_batch_is_that_ranks_input(tmp_path) -> None:
    """Issue 14: NaN in rank 1's input batch at step 5. Rank 1 records phase input; rank 0
    records only a received onset; the merged run says step 5, rank 1, input."""
    from tests.distributed.worker import BAD_INPUT

    proc = torchrun("ddp-input", tmp_path)
    assert proc.returncode == 0, tail(proc)
    rank, step, sample = BAD_INPUT
    own = resdoctor.load(tmp_path / f"input.rank{rank}.pt").nonfinite.iloc[0]
    assert (own.step, own.module, own.phase) == (step, "x", "input")
    assert own.detail["samples"] == [sample] and own.detail["values"] == 1
    other = resdoctor.load(tmp_path / "input.rank0.pt").nonfinite.iloc[0]
    assert other.step == step and other.phase == "backward" and other.detail["received"]
    run = resdoctor.load(tmp_path / "input.pt")
    first = run.nonfinite.iloc[0]
    assert (first.step, first["rank"], first.phase, first.module) == (step, rank, "input", "x")
    (finding,) = [f for f in resdoctor.analyze(run).findings if f.code == "nonfinite"]
    assert (finding.step, finding.phase, finding.location) == (step, "input", "x")
    assert finding.evidence["rank"] == rank and finding.fixes[0].code == "check-inputs"
