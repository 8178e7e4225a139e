import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest
import torch
import typer
from typer.testing import CliRunner

from resdoctor.cli import main as cli
from resdoctor.rules.testing import diverging_run, quiet_run
from resdoctor.runfile import io as runfile

SCHEMA = json.loads(
    (Path(__file__).parents[1] / "resdoctor/schemas/report.schema.json").read_text()
)
runner = CliRunner()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    sick, well = d / "sick.pt", d / "well.pt"
    runfile.write(diverging_run().state, sick)
    runfile.write(quiet_run().state, well)
    return sick, well


def _invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args])


def test_rich_output_has_verdict_findings_evidence_and_fixes(files):
    res = _invoke("analyze", files[0])
    assert res.exit_code == 0
    out = res.stdout
    for text in (
        "CRITICAL",
        "non-finite from step 20 in b1.branch (forward)",  # where it went non-finite
        "Root cause  exploding-gradients",
        "nonfinite@20",
        "First fix  ",
        "Timeline  exploding-gradients@10 -> loss-divergence@11 -> nonfinite@20",
    ):
        assert text in out, text
    verbose = _invoke("analyze", files[0], "-v").stdout
    for text in ("lead_steps", "Fix 2  ", "clip_grad_norm_", "timeline:"):
        assert text in verbose, text


def test_json_is_one_object_matching_the_schema(files):
    res = _invoke("analyze", files[0], "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)  # exactly one JSON document
    jsonschema.validate(data, SCHEMA)
    assert data["verdict"] == "critical" and data["run"] == str(files[0])
    nan = next(f for f in data["findings"] if f["code"] == "nonfinite")
    assert (nan["step"], nan["location"], nan["phase"]) == (20, "b1.branch", "forward")


def test_several_runs_print_what_changed(files):
    res = _invoke("analyze", files[0], files[1])
    assert res.exit_code == 0 and "CHANGES" in res.stdout and "resolved" in res.stdout
    res = _invoke("analyze", files[0], files[1], "--json")
    data = json.loads(res.stdout)
    jsonschema.validate(data, SCHEMA)
    assert data["comparison"]["improved"] is True
    assert "nonfinite" in data["comparison"]["resolved"]


@pytest.mark.parametrize(
    "which, fail_on, code",
    [(0, "critical", 1), (0, "warning", 1), (1, "warning", 0), (0, "never", 0)],
)
def test_fail_on_exit_codes(files, which, fail_on, code):
    assert _invoke("analyze", files[which], "--fail-on", fail_on, "--json").exit_code == code


def test_set_and_config_tune_the_rules(files, tmp_path):
    res = _invoke("analyze", files[0], "--json", "--set", "exploding-gradients.enabled=false")
    assert "exploding-gradients" not in {f["code"] for f in json.loads(res.stdout)["findings"]}
    cfg = tmp_path / "quiet.toml"
    cfg.write_text("[exploding-gradients]\nenabled = false\n[loss-divergence]\nenabled = false\n")
    res = _invoke("analyze", files[0], "--json", "--config", cfg)
    codes = {f["code"] for f in json.loads(res.stdout)["findings"]}
    assert codes == {"nonfinite"}


def _evil(path: Path, marker: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(path, "wb") as f:
        pickle.dump({"format": "resdoctor-run", "x": Evil()}, f)


def _bad_inputs(tmp_path: Path, files) -> dict[str, Path]:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(files[0].read_bytes()[:3000])
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    evil = tmp_path / "evil.pt"
    _evil(evil, tmp_path / "pwned")
    evil_zip = tmp_path / "evil_zip.pt"
    torch.save({"x": _Evil(tmp_path / "pwned_zip")}, evil_zip)
    return {
        "missing": tmp_path / "nope.pt",
        "truncated": truncated,
        "other": other,
        "text": text,
        "evil": evil,
        "evil_zip": evil_zip,
        "dir": tmp_path,
    }


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_inputs_get_one_line_and_exit_code_2(files, tmp_path):
    for name, path in _bad_inputs(tmp_path, files).items():
        res = _invoke("analyze", path, "--json")
        assert res.exit_code == 2, name
        assert res.stdout == "", name
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("resdoctor: "), (name, res.stderr)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned_zip").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--set", "nope.x=1"],
        ["--set", "dead-branch.ratio=abc"],
        ["--set", "garbage"],
        ["--config", "/no/such.toml"],
    ],
)
def test_bad_settings_exit_2(files, args):
    res = _invoke("analyze", files[0], *args)
    assert res.exit_code == 2 and len(res.stderr.strip().splitlines()) == 1


def test_real_subprocess_json_and_malicious_file(files, tmp_path):
    cmd = [sys.executable, "-m", "resdoctor.cli.main", "analyze", str(files[0]), "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    jsonschema.validate(json.loads(out.stdout), SCHEMA)
    evil = tmp_path / "evil.pt"
    _evil(evil, tmp_path / "pwned")
    out = subprocess.run(cmd[:4] + [str(evil)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("resdoctor: ") and not (tmp_path / "pwned").exists()


def test_rules_command_lists_every_rule_and_threshold():
    res = _invoke("rules")
    assert res.exit_code == 0
    for text in ("nonfinite", "oversmoothing", "surge_factor=10.0"):
        assert text in res.stdout


def test_demo_command_trains_and_diagnoses(tmp_path):
    out = tmp_path / "demo.pt"
    res = _invoke("demo", "--out", out, "--steps", "14", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    jsonschema.validate(data, SCHEMA)
    assert data["verdict"] == "critical" and out.exists()


def test_wandb_flag_attaches_offline(files, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    # a real process: wandb's in-process singleton would keep an earlier test's directory
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "resdoctor.cli.main",
            "analyze",
            str(files[1]),
            "--json",
            "--wandb",
            "--wandb-project",
            "rd-test",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verdict"]  # --json output stays clean
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    res = _invoke("analyze", files[0], files[1], "--wandb", "--wandb-run-id", "abc")
    assert res.exit_code == 2


def test_optional_command_modules(tmp_path, monkeypatch):
    (tmp_path / "rd_extra_ok.py").write_text(
        textwrap.dedent("""
        def register(app):
            @app.command("hello-extra")
            def hello():
                print("hi from extra")
    """)
    )
    (tmp_path / "rd_extra_broken.py").write_text("import rd_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = typer.Typer()

    @app.callback()
    def root() -> None:
        """A command group, as resdoctor's app is."""

    monkeypatch.setattr(cli, "app", app)
    cli._register_optional("rd_extra_missing")  # not installed: skipped
    cli._register_optional("rd_extra_ok")
    assert "hi from extra" in runner.invoke(app, ["hello-extra"]).stdout
    with pytest.raises(ModuleNotFoundError):  # its own dependency is missing: a real error
        cli._register_optional("rd_extra_broken")
