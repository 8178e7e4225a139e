"""Smoke tests of the benchmark scripts: each runs in its quickest mode. No timing assertions."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import overhead, profile_overhead, scale  # noqa: E402
from bench._configs import CONFIGS, hook_census, make  # noqa: E402
from bench._workloads import build  # noqa: E402


def test_overhead_quick_runs_every_configuration_on_every_model(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    # one thread: two OpenMP threads on a busy 2-core machine spin, and tiny steps take seconds
    assert overhead.main(["--quick", "--rounds", "1", "--threads", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"resnet", "gpt2", "vit"}
    for results in report["models"].values():
        assert set(results) == set(CONFIGS)
        assert results["plain"]["ratio"] > 0  # paired: two plain models, the noise floor
        assert all(r["timed_steps"] == 2 and r["ratio"] > 0 for r in results.values())
    assert report["machine"]["torch_threads"] == 1


def test_every_configuration_tears_down_completely(tmp_path: Path) -> None:
    work = build("resnet", torch.device("cpu"), quick=True)
    before = hook_census(work.model, work.optimizer)
    for name in ("resdoctor", "anomaly", "naive"):
        config = make(name)
        config.setup(work, tmp_path)
        with config.step_context():
            config.after_step(work.step())
            assert hook_census(work.model, work.optimizer) != before, name
        config.teardown()
        assert hook_census(work.model, work.optimizer) == before, name


def test_a_target_is_unresolved_when_its_interval_contains_it() -> None:
    res = {
        "m": {
            "resdoctor": {"ratio": 1.04, "step_ratio_ci95": [1.03, 1.06]},
            "resdoctor-all": {"ratio": 1.05, "step_ratio_ci95": [1.04, 1.07]},
        }
    }
    assert overhead.check_targets(res, "cpu") == []
    [note] = overhead.unresolved(res, "cpu")
    assert note.startswith("m: resdoctor 95% interval 1.030-1.060x contains 1.05x")


def test_ratios_paired_with_the_twin_or_against_plain_rounds() -> None:
    def round_(times: list[float], twin: list[float]) -> dict:
        return {
            "times": times,
            "cpu_times": times,
            "twin_times": twin,
            "twin_cpu_times": twin,
            "first_step_s": 0.0,
            "setup_s": 0.0,
            "teardown_s": 0.0,
        }

    rounds = {
        "plain": [round_([1.0, 1.0], [1.0, 1.0]), round_([2.0, 2.0], [2.0, 2.0])],
        "x": [round_([1.5, 1.5], [1.0, 1.0]), round_([2.2, 2.2], [2.0, 2.0])],
    }
    paired = overhead.summarize(rounds, paired=True)
    assert paired["x"]["round_ratios"] == pytest.approx([1.5, 1.1])
    assert paired["x"]["step_ratios"] == pytest.approx([1.5, 1.5, 1.1, 1.1])
    lo, hi = paired["x"]["step_ratio_ci95"]
    assert 1.1 <= lo <= paired["x"]["step_ratio"] <= hi <= 1.5
    assert paired["plain"]["step_ratio_ci95"] == pytest.approx([1.0, 1.0])
    unpaired = overhead.summarize(rounds, paired=False)
    assert unpaired["x"]["round_ratios"] == pytest.approx([1.5, 1.1])
    assert unpaired["plain"]["ratio"] == 1.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the skip without a GPU")
def test_overhead_cuda_skips_cleanly_without_a_gpu(tmp_path: Path) -> None:
    assert overhead.main(["--device", "cuda", "--quick", "--out", str(tmp_path / "o.json")]) == 0
    assert not (tmp_path / "o.json").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_overhead_cuda_watching_adds_no_host_sync(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    args = [
        "--device",
        "cuda",
        "--quick",
        "--models",
        "resnet",
        "--configs",
        "resdoctor",
        "--out",
        str(out),
    ]
    assert overhead.main(args) == 0
    census = json.loads(out.read_text())["sync_census"]["resnet"]
    syncs = census["syncs_per_step"]
    assert syncs["resdoctor"] == syncs["plain"] and syncs["resdoctor-all"] == syncs["plain"]
    assert census["profiler_per_step"]["resdoctor"].get("device_to_host_copies", 0) <= 1


def test_scale_fast_mode_records_what_consume_records() -> None:
    fast, _ = scale.record(120, blocks=4, mode="fast", skip_every=50)
    slow, _ = scale.record(120, blocks=4, mode="consume", skip_every=50)
    a, b = fast.state({}), slow.state({})
    assert a["events"] == b["events"] and len(a["events"]) == 2  # AMP backward, NaN forward
    assert a["skipped_steps"].tolist() == [49, 99]
    assert torch.equal(a["skipped_steps"], b["skipped_steps"])
    for name, series in a["series"].items():
        other = b["series"][name]
        assert series["columns"] == other["columns"], name
        assert (series["n"] is None) == (other["n"] is None), name  # None: every cell counted
        for field in ("steps", "count", "n", "mean", "max", "min"):
            if series[field] is not None:
                assert torch.allclose(
                    series[field].double(), other[field].double(), equal_nan=True
                ), (name, field)


def test_scale_small_run_writes_loads_and_analyzes(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    assert scale.main(["--steps", "300", "--blocks", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["run_file"]["file_mb"] > 0 and result["recording"]["skipped_steps"] == 0
    assert result["run_file"]["load_s"] >= 0


def test_profile_quick_names_resdoctor_functions(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    assert profile_overhead.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [r["function"] for r in result["cprofile"]["resdoctor_functions"]]
    assert any("recorder.py" in n for n in names)
    assert not any("models/" in n for n in names)


def test_the_readme_tables_are_the_committed_benchmark_json() -> None:
    """README's overhead / scale / host-path tables are exactly what ``bench.report`` renders
    from the committed ``bench/results`` files (their staleness against HEAD is
    ``python -m bench.report --readme --check``'s job: it needs the benchmark rerun)."""
    import os

    from bench import report

    root = Path(__file__).resolve().parents[2]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        text = (root / "README.md").read_text()
        rendered, problems = report.render_readme(text)
        assert not [p for p in problems if "no committed" in p]
        assert rendered == text
        for name in ("overhead", "scale", "hostpath"):
            assert f"<!-- bench:{name} -->\n| " in text  # a table, not an empty block
    finally:
        os.chdir(cwd)


def test_a_readme_table_is_rendered_from_the_newest_result(tmp_path: Path, monkeypatch) -> None:
    from bench import report

    data = {
        "command": "python -m bench.scale",
        "machine": {
            "commit": "HEAD",
            "cpu": "x",
            "cpu_count": 2,
            "torch_threads": 2,
            "torch": "t",
            "python": "p",
            "resdoctor": "r",
        },
        "steps": 10,
        "blocks": 2,
        "mode": "consume",
        "targets": {"file_mb": 50, "analyze_s": 5},
        "recording": {"host_us_per_step": 123.4, "rss_delta_mb": 1, "series_arrays_mb": 1},
        "run_file": {
            "file_mb": 0.1,
            "state_s": 0.1,
            "write_s": 0.1,
            "load_s": 0.1,
            "load_all_series_s": 0.1,
            "analyze_s": 0.1,
            "cli_analyze_s": 1.0,
            "flush_ms_per_step_at_default": 0.1,
        },
    }
    (tmp_path / "hostpath-abc.json").write_text(json.dumps(data))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    text, problems = report.render_readme(
        "a\n<!-- bench:hostpath -->\nold\n<!-- /bench:hostpath -->\n"
    )
    assert "123 us/step" in text and "old" not in text
    assert not [p for p in problems if "no committed" in p]
