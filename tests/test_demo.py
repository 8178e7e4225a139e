import pytest

import resdoctor
from resdoctor import demo
from resdoctor.findings import Fix


@pytest.fixture(scope="module")
def sick_path(tmp_path_factory):
    return demo.record_demo(str(tmp_path_factory.mktemp("demo") / "sick.pt"), steps=20)


def test_sick_demo_turns_to_nan_and_is_diagnosed_with_warning_signs_first(sick_path):
    run = resdoctor.load(sick_path)
    real = [d for d in run.nonfinite["detail"] if not d["amp_skipped"]]
    assert real, "the sick demo must reach NaN within 20 steps"
    rep = resdoctor.analyze(run)
    assert rep.verdict == "critical"
    nan = next(f for f in rep.findings if f.code == "nonfinite")
    assert nan.evidence["lead_steps"] > 0
    assert {"exploding-gradients", "loss-divergence"} <= set(rep.codes)


def test_the_demo_report_fits_a_screen_and_opens_with_the_root_cause(sick_path):
    """Issue 16: verdict, root cause, story, first fix with its snippet, the rest one line
    each and the timeline, in at most 40 lines (it was 252)."""
    from typer.testing import CliRunner

    from resdoctor.cli.main import app

    out = CliRunner().invoke(app, ["analyze", sick_path], env={"COLUMNS": "100"}).output
    lines = out.rstrip("\n").splitlines()
    assert len(lines) <= 40, out
    rep = resdoctor.analyze(sick_path)
    assert lines[2].startswith(f"Root cause  {rep.root_cause.code}")
    assert "First fix  " + rep.plan[0].code in out and rep.plan[0].snippet.splitlines()[0] in out
    assert "Timeline  " in out and "Also" in out
    assert "{" not in out.split("Also")[1]  # no Python reprs (the snippet is above)
    verbose = CliRunner().invoke(app, ["analyze", "-v", sick_path]).output
    assert len(verbose.splitlines()) > len(lines) and all(f.code in verbose for f in rep.plan)
    quiet = CliRunner().invoke(app, ["analyze", "-q", sick_path]).output.splitlines()
    assert len(quiet) == 1 and quiet[0].startswith(f"CRITICAL {sick_path}: {rep.root_cause.code} ")


def test_healthy_control_is_healthy(tmp_path):
    path = demo.record_demo(str(tmp_path / "ok.pt"), steps=20, healthy=True)
    assert path == str(tmp_path / "ok.pt")
    assert resdoctor.analyze(path).verdict == "healthy"


def test_fixed_run_applies_the_top_fix_and_improves(sick_path, tmp_path):
    fix = demo.top_fix(sick_path)
    assert fix is not None and fix.code in ("lower-lr", "clip-gradients", "residual-scaling")
    after = demo.record_demo(str(tmp_path / "fixed.pt"), steps=20, fixed=True, from_run=sick_path)
    rep = resdoctor.analyze(after)
    assert "nonfinite" not in rep.codes and rep.verdict != "critical"


@pytest.mark.parametrize(
    "fix, field, value",
    [
        (Fix("lower-lr", "", "", params={"new_lr": 0.0005}), "lr", 0.0005),
        (Fix("lower-lr", "", "", params={"factor": 0.5}), "lr", 0.005),
        (Fix("clip-gradients", "", "", params={"max_norm": 89.0}), "clip", 89.0),
        (Fix("lr-warmup", "", "", params={"warmup_steps": 20}), "warmup", 20),
        (Fix("residual-scaling", "", "", params={"scale": 0.289}), "scale", 0.289),
        (Fix("add-normalization", "", "", params={}), "norm", True),
        (Fix("reduce-depth", "", "", params={"depth": 6}), "depth", 6),
    ],
)
def test_apply_fix_edits_the_recipe(fix, field, value):
    assert getattr(demo.apply_fix(demo.SICK, fix), field) == value


def test_apply_fix_refuses_what_it_cannot_apply():
    with pytest.raises(ValueError, match="cannot apply"):
        demo.apply_fix(demo.SICK, Fix("pairnorm", "", ""))
