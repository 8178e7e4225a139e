import json
from pathlib import Path

import jsonschema

from resdoctor.findings import Finding
from resdoctor.report.analysis import Report, analyze
from resdoctor.report.compare import compare, metrics
from resdoctor.rules.testing import diverging_run, quiet_run

SCHEMA = json.loads(
    (Path(__file__).parents[1] / "resdoctor/schemas/report.schema.json").read_text()
)


def _report(run, *findings):
    return Report(run, tuple(Finding(c, s, c, "", step=1) for c, s in findings))


def test_resolved_new_and_persisting_codes():
    run = quiet_run()
    a = _report(run, ("nonfinite", "critical"), ("dead-branch", "warning"))
    b = _report(run, ("dead-branch", "critical"), ("oversmoothing", "warning"))
    cmp = compare(a, b)
    assert cmp.resolved == ("nonfinite",) and cmp.new == ("oversmoothing",)
    assert cmp.persisting == (
        {"code": "dead-branch", "before": "warning", "after": "critical", "change": "worse"},
    )
    assert not cmp.improved  # still critical, same number of codes


def test_before_after_a_fix_improves_and_metrics_change():
    cmp = compare(analyze(diverging_run()), analyze(quiet_run()))
    assert cmp.improved and cmp.b.verdict == "healthy"
    assert set(cmp.resolved) >= {"nonfinite", "loss-divergence"}
    m = cmp.metrics
    assert m["first_nonfinite_step"] == {"before": 20, "after": None, "change": None}
    assert m["max_grad_norm"]["after"] == 1.0
    assert m["max_grad_norm"]["change"] < 0.01  # after / before
    assert "critical -> healthy" in cmp.summary


def test_comparison_dict_matches_the_schema():
    d = compare(analyze(diverging_run()), analyze(quiet_run())).to_dict()
    jsonschema.validate(d, {"$defs": SCHEMA["$defs"], "$ref": "#/$defs/comparison"})
    json.dumps(d, allow_nan=False)


def test_metrics_of_one_run():
    m = metrics(diverging_run())
    assert m["steps"] == 30 and m["first_nonfinite_step"] == 20
    assert m["best_loss"] < m["final_loss"] and m["stream_growth"] == 1.2
