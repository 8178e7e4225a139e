"""Opening runs (command line, query string, text box, folder picker, upload), comparing two runs,
refreshing a run that is being written, and bad input shown as one clear line."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import resdoctor
from resdoctor.report.compare import compare
from tests.app.conftest import MAIN, chart_data, texts


def _title(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("## resdoctor"))


def test_compare_two_runs_from_the_command_line(app, runs) -> None:
    at = app(argv=[runs["sick"], runs["healthy"]])
    assert not at.exception and not at.error
    assert [t.label for t in at.tabs][0] == "Compare"  # two runs: what changed comes first
    assert at.query_params["run"] == runs["sick"]
    assert at.query_params["compare"] == runs["healthy"]
    at = app(argv=[runs["sick"], runs["healthy"]], tab="Compare")
    assert not at.exception and not at.error
    diff = compare(resdoctor.analyze(runs["sick"]), resdoctor.analyze(runs["healthy"])).to_dict()
    page = texts(at)
    assert diff["summary"] in page
    for code in diff["resolved"]:
        assert f"resolved: {code}" in page
    table = at.dataframe[0].value
    assert table["metric"].tolist() == [k.replace("_", " ") for k in diff["metrics"]]
    first_nan = table.set_index("metric").loc["first nonfinite step"]
    assert first_nan["before"] == resdoctor.load(runs["sick"]).nonfinite["step"].min()
    frames = [f for _, fs in chart_data(at) for f in fs if "name" in f]
    assert any(set(f["name"]) == {"A: sick.pt", "B: healthy.pt"} for f in frames)
    # the two runs in two hues (issue 17: they were two shades of blue)
    import json

    from resdoctor.app.charts import RUN_COLORS

    specs = [json.dumps(spec) for spec, _ in chart_data(at)]
    assert any(json.dumps(list(RUN_COLORS)) in spec for spec in specs)


def test_text_box_folder_picker_and_query_string(app, runs) -> None:
    at = app()
    assert not at.exception
    assert "Record and open the demo run" in [b.label for b in at.button]
    at.text_input(key="run_path").set_value(runs["healthy"]).run()
    assert not at.exception and not at.error
    assert _title(at).endswith("healthy.pt")
    assert at.query_params["run"] == runs["healthy"]
    at.text_input(key="folder").set_value(os.path.dirname(runs["sick"])).run()
    picker = at.selectbox(key="pick_run")
    assert sorted(os.path.basename(o) for o in picker.options) == ["healthy.pt", "sick.pt"]
    picker.set_value(runs["sick"]).run()
    assert not at.exception and not at.error
    assert _title(at).endswith("sick.pt")
    assert at.query_params["run"] == runs["sick"]


def test_upload(app, runs) -> None:
    at = app()
    data = Path(runs["sick"]).read_bytes()
    at.file_uploader(key="upload_run").set_value(("uploaded.pt", data, "application/octet-stream"))
    at.run()
    assert not at.exception and not at.error
    assert _title(at).endswith("uploaded.pt")
    assert "run" not in at.query_params  # a temp file is no link to share
    onset = int(resdoctor.load(runs["sick"]).nonfinite["step"].min())
    assert next(m.value for m in at.metric if m.label == "first NaN/Inf step") == str(onset)


def test_reload_when_the_file_changes(app, runs, tmp_path) -> None:
    live = tmp_path / "live.pt"
    shutil.copy(runs["sick"], live)
    at = app(run=str(live))
    assert next(m.value for m in at.metric if m.label == "non-finite onsets") != "0"
    shutil.copy(runs["healthy"], live)  # the recorder replaces the file atomically, like this
    os.utime(live, ns=(live.stat().st_atime_ns, live.stat().st_mtime_ns + 10**9))
    at.button[0].click().run()  # "Reload now"
    assert not at.exception and not at.error
    assert next(m.value for m in at.metric if m.label == "non-finite onsets") == "0"
    at.selectbox(key="refresh").set_value("2s").run()
    assert not at.exception
    assert any("Watching" in c.value for c in at.caption)


def _bad_files(folder: Path, good: str) -> dict[str, tuple[str, str]]:
    """name -> (path, what the one-line message must say)."""
    truncated = folder / "truncated.pt"
    truncated.write_bytes(Path(good).read_bytes()[:5000])
    foreign = folder / "state_dict.pt"
    torch.save({"weight": torch.zeros(2)}, foreign)
    evil = folder / "evil.pt"
    torch.save(Evil(), evil)  # a torch file whose pickle would run a shell command
    empty = folder / "empty.pt"
    empty.write_bytes(b"")
    return {
        "missing": (str(folder / "nope.pt"), "no such file"),
        "directory": (str(folder), "is a directory"),
        "truncated": (str(truncated), "not a readable run file"),
        "foreign": (str(foreign), "not a resdoctor run file"),
        "malicious": (str(evil), "refused to load"),
        "empty": (str(empty), "not a readable run file"),
    }


class Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/resdoctor-app-pwned",))


@pytest.mark.parametrize(
    "case", ["missing", "directory", "truncated", "foreign", "malicious", "empty"]
)
def test_bad_file_is_one_clear_message(app, runs, tmp_path, case: str) -> None:
    path, says = _bad_files(tmp_path, runs["sick"])[case]
    at = app(run=path)
    assert not at.exception
    assert len(at.error) == 1
    assert path in at.error[0].value and says in at.error[0].value
    assert "\n" not in at.error[0].value and "Traceback" not in at.error[0].value
    assert not os.path.exists("/tmp/resdoctor-app-pwned")


def test_bad_second_run_keeps_the_first(app, runs, tmp_path) -> None:
    at = app(run=runs["healthy"], compare=str(tmp_path / "missing.pt"))
    assert not at.exception
    assert [e.value for e in at.error] == [f"Second run: {tmp_path / 'missing.pt'}: no such file"]
    assert "Compare" not in [t.label for t in at.tabs]
    assert _title(at).endswith("healthy.pt")


def test_bad_command_line(app) -> None:
    at = app(argv=["--port", "1"])
    assert not at.exception and not at.error
    assert any("unknown option '--port'" in w.value for w in at.warning)
    assert MAIN.endswith("main.py")


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: the demo records several times faster
    yield
    torch.set_num_threads(threads)


def test_demo_and_its_fix(app, one_thread) -> None:
    at = app()
    assert "No run at hand?" in texts(at)
    next(b for b in at.button if "compare it with its fix" in b.label).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert _title(at).endswith("demo.pt")
    assert at.query_params["compare"].endswith("demo-fixed.pt")
    assert "Compare" in [t.label for t in at.tabs]
    sick = resdoctor.analyze(at.query_params["run"])
    assert sick.verdict == "critical" and f"Verdict: {sick.verdict}" in texts(at)
