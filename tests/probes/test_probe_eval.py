"""The fast evaluation end to end: labels re-measured, scores consistent with the findings,
a fix verified on a real re-run, and the CLI (standalone and as ``resdoctor probe``)."""

import json
import math
import os

import pytest
import typer
from typer.testing import CliRunner

import probes
import resdoctor
from probes.cli import register, standalone
from probes.evaluate import (
    FOUND,
    evaluate,
    evaluate_probe,
    per_code,
    summary,
    verify_fix,
    verify_remedy,
)
from probes.report import render, to_json

CODES = set(probes.CODES)


@pytest.fixture(scope="module")
def fast_eval(tmp_path_factory):
    work = tmp_path_factory.mktemp("eval")
    return evaluate([probes.get(n) for n in probes.names(fast=True)], workdir=str(work)), work


def test_catalogue_covers_every_code_twice_and_five_traps():
    all_probes = [probes.get(n) for n in probes.names()]
    for code in CODES:
        assert sum(code in p.truth.expect for p in all_probes) >= 2, code
    healthy = [p for p in all_probes if p.truth.healthy]
    assert len(healthy) >= 5 and len(all_probes) - len(healthy) >= 16
    assert {"cnn", "pre-ln", "post-ln", "hf", "gcn", "mlp"} <= {p.family for p in all_probes}
    nan = [p.truth.onset for p in all_probes if p.truth.onset]
    assert {"forward", "backward"} <= {o.phase for o in nan}


def test_fast_labels_hold_under_direct_measurement(fast_eval):
    ev, _ = fast_eval
    assert [o.probe for o in ev.outcomes] == probes.names(fast=True)
    broken = {o.probe: o.label_problems for o in ev.outcomes if o.label_problems}
    assert broken == {}


def test_found_codes_are_the_diagnosis_of_the_recorded_run(fast_eval):
    ev, work = fast_eval
    for o in ev.outcomes:
        report = resdoctor.analyze(str(work / f"{o.probe}.pt"))
        assert o.found == sorted({f.code for f in report.findings if f.severity in FOUND})
        assert set(o.found) <= CODES | {f.code for f in report.findings}
        assert o.passed == (not o.missed and not o.false and o.localised is not False)


def test_scores_add_up(fast_eval):
    ev, _ = fast_eval
    s, codes = summary(ev), per_code(ev.outcomes)
    assert s["probes"] == len(ev.outcomes) and s["passed"] == sum(o.passed for o in ev.outcomes)
    expected = sum(len(o.expect) for o in ev.outcomes)
    assert sum(v["tp"] + v["fn"] for v in codes.values()) == expected
    assert sum(v["fp"] for v in codes.values()) == sum(len(o.false) for o in ev.outcomes)
    assert s["false_alarms"] == sum(bool(o.found) for o in ev.outcomes if o.healthy)
    text = render(ev)
    assert all(f"| {o.probe} |" in text for o in ev.outcomes)
    json.dumps(to_json(ev))  # plain JSON (inf/nan mapped to null)


def test_top_fix_is_applied_and_verified_on_a_real_rerun(tmp_path):
    probe = probes.get("resnet-nangrad")
    out = evaluate_probe(probe, str(tmp_path), check_labels=False)
    assert out.top_fix is not None
    fix = verify_fix(probe, out, str(tmp_path))
    assert fix.applied and fix.code == out.top_fix["code"]
    assert math.isinf(fix.loss_before)  # the original run ends in NaN
    if fix.code == "guard-op":  # the fix resdoctor proposes for a NaN op: the run must survive
        assert fix.cured and math.isfinite(fix.loss_after) and fix.remaining == []


def test_cli_list_run_and_label(tmp_path):
    runner = CliRunner()
    app = standalone()
    listing = runner.invoke(app, ["list"])
    assert listing.exit_code == 0
    assert all(name in listing.output for name in probes.names())
    path = tmp_path / "dead.pt"
    res = runner.invoke(app, ["run", "preln-tinyscale-dead", "--out", str(path)])
    assert res.exit_code == 0, res.output
    assert resdoctor.load(str(path)).steps == probes.get("preln-tinyscale-dead").recipe.steps
    assert runner.invoke(app, ["run", "no-such-probe"]).exit_code == 2
    label = runner.invoke(app, ["label", "mlp-deadrelu"])
    assert label.exit_code == 0 and "dead-branch          present" in label.output


def test_register_adds_a_probe_group_to_the_resdoctor_cli():
    app = typer.Typer()

    @app.command()
    def version() -> None:  # a second command so typer keeps sub-command names
        typer.echo(resdoctor.__version__)

    register(app)
    res = CliRunner().invoke(app, ["probe", "list", "--fast"])
    assert res.exit_code == 0
    assert "mlp-sqrt-nan" in res.output and "gcn-plain-deep" not in res.output


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PROBES_ALL"), reason="set PROBES_ALL=1 (about 2 min)")
@pytest.mark.parametrize("name", [n for n in probes.names() if n not in probes.names(fast=True)])
def test_every_other_label_holds(name):
    probe = probes.get(name)
    assert probes.label_problems(probe.truth, probe.measure().measurement) == []


def test_known_remedy_cures_a_dead_branch_probe(tmp_path):
    probe = probes.get("mlp-deadrelu")
    out = evaluate_probe(probe, str(tmp_path), check_labels=False)
    cure = verify_remedy(probe, out, str(tmp_path))
    assert cure is not None and cure.code == "add-normalization" and cure.applied
    assert cure.remaining == [] and cure.loss_after < cure.loss_before and cure.cured


def test_root_cause_is_the_label_and_no_fix_parameter_has_two_values(fast_eval):
    """Issue 16 on the fast probes (every probe: the slow test below and `probes eval`)."""
    ev, _ = fast_eval
    assert {o.probe: o.conflicts for o in ev.outcomes if o.conflicts} == {}
    wrong = {o.probe: (o.root_cause, o.primary) for o in ev.outcomes if o.root_ok is False}
    assert wrong == {}
    assert all(o.root_cause is None for o in ev.outcomes if o.healthy)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PROBES_ALL"), reason="set PROBES_ALL=1 (about 2 min)")
@pytest.mark.parametrize("name", [n for n in probes.names() if n not in probes.names(fast=True)])
def test_every_other_report_has_one_value_per_fix_parameter(name, tmp_path):
    out = evaluate_probe(probes.get(name), str(tmp_path), check_labels=False)
    assert out.conflicts == []
