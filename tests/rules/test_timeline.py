from resdoctor.findings import Finding
from resdoctor.rules import run_rules
from resdoctor.rules._timeline import annotate, timeline
from resdoctor.rules.testing import make_run


def _f(code, step, severity="critical", location=None):
    return Finding(code, severity, code, "", step=step, location=location)


def test_lead_times_point_from_the_first_sign_to_the_first_nan():
    tl = timeline(make_run(20))
    found = [
        _f("exploding-gradients", 8, location="m"),
        _f("nonfinite", 12),
        _f("loss-divergence", 3),
        _f("dead-branch", 15, "warning"),
    ]
    out, notes = annotate(found, tl)
    by = {f.code: f for f in out}
    assert by["nonfinite"].evidence["first_warning"]["code"] == "loss-divergence"
    assert by["nonfinite"].evidence["lead_steps"] == 9
    assert [s["code"] for s in by["nonfinite"].evidence["sequence"]] == [
        "loss-divergence",
        "exploding-gradients",
        "nonfinite",
    ]
    assert by["exploding-gradients"].evidence["lead_steps"] == 4
    assert "lead_steps" not in by["dead-branch"].evidence  # came after the failure
    assert notes[0].startswith("timeline: loss-divergence@3 -> exploding-gradients@8 (m)")


def test_without_a_nan_the_divergence_is_the_failure():
    out, notes = annotate(
        [_f("loss-divergence", 10), _f("activation-growth", 4, "warning")], timeline(make_run(20))
    )
    assert {f.code: f for f in out}["loss-divergence"].evidence["lead_steps"] == 6
    assert "first warning 6 steps before loss-divergence" in notes[0]


def test_no_failure_no_story():
    out, notes = annotate([_f("dead-branch", 4, "warning")], timeline(make_run(20)))
    assert notes == [] and "lead_steps" not in out[0].evidence


def test_healthy_rows_stop_at_the_failure_and_skip_amp_steps():
    run = make_run(
        10,
        scalars={"loss": [1.0] * 10},
        skipped_steps=[2],
        events=[{"step": 7, "module": "m", "phase": "forward"}],
    )
    tl = timeline(run)
    assert tl.failure_step == 7
    assert list(tl.healthy(run.scalars()).index) == [0, 1, 3, 4, 5, 6]


def test_real_sick_run_tells_what_came_first(sick):
    findings, notes = run_rules(sick)
    nan = next(f for f in findings if f.code == "nonfinite" and f.severity == "critical")
    first = nan.evidence["first_warning"]
    assert first["step"] < nan.step and nan.evidence["lead_steps"] == nan.step - first["step"]
    assert notes[0].startswith("timeline:")
