import json

import numpy as np
import pytest

import resdoctor
from resdoctor.findings import Finding
from resdoctor.report.analysis import Report, analyze, plain
from resdoctor.rules.testing import diverging_run, quiet_run
from resdoctor.runfile import io as runfile


def test_report_dict_has_the_design_keys_and_is_strict_json():
    rep = analyze(diverging_run())
    d = rep.to_dict()
    assert list(d)[:6] == ["resdoctor", "run", "steps", "verdict", "sites", "findings"]
    assert d["verdict"] == "critical" and d["steps"] == 30
    assert d["sites"] == [
        {"name": "b0", "kind": "identity", "module": "Block"},
        {"name": "b1", "kind": "identity", "module": "Block"},
    ]
    assert d["counts"]["critical"] == len(rep.by_severity("critical")) >= 1
    json.loads(rep.to_json())  # allow_nan=False: raises on NaN / inf


def test_findings_are_worst_first_then_by_onset():
    rep = analyze(diverging_run())
    keys = [(-{"info": 0, "warning": 1, "critical": 2}[f.severity], f.step) for f in rep.findings]
    assert keys == sorted(keys)


def test_verdict_and_fail_on():
    sick, well = analyze(diverging_run()), analyze(quiet_run())
    assert well.verdict == "healthy" and not well.fails("info")
    assert sick.fails("critical") and sick.fails("warning")
    warn = Report(well.run, (Finding("dead-branch", "warning", "t", "m"),))
    assert warn.verdict == "warning" and warn.fails("warning") and not warn.fails("critical")


def test_plain_makes_numpy_and_nan_json_safe():
    got = plain(
        {
            "a": np.float32(1.5),
            "b": float("nan"),
            "c": (np.int64(3), np.inf),
            "d": {"e": np.bool_(True)},
        }
    )
    assert got == {"a": 1.5, "b": None, "c": [3, None], "d": {"e": True}}


def test_analyze_accepts_a_path_and_thresholds(tmp_path):
    path = tmp_path / "run.pt"
    runfile.write(diverging_run().state, path)
    by_path = resdoctor.analyze(str(path))
    assert by_path.to_dict()["run"] == str(path)
    tuned = resdoctor.analyze(
        str(path),
        **{"exploding-gradients.surge_factor": 1e9, "exploding-gradients.growth_factor": 1e12},
    )
    assert "exploding-gradients" in by_path.codes
    assert "exploding-gradients" not in tuned.codes


def test_analyze_refuses_unknown_thresholds():
    with pytest.raises(ValueError, match="unknown threshold"):
        analyze(quiet_run(), **{"dead-branch.bogus": 1})


def test_a_failing_rule_is_reported_not_raised():
    from resdoctor.rules import registry, rule

    @rule("boom")
    def boom(run):
        raise RuntimeError("kaput")

    try:
        rep = analyze(quiet_run())
        assert any(n.startswith("boom: rule failed (RuntimeError: kaput)") for n in rep.notes)
    finally:
        registry.remove("boom")


def test_regression_unmeasured_sites_and_recording_errors_are_said(tmp_path):
    """Issues 15 and 20: a verdict never hides that signals are missing."""
    import torch
    import torch.nn.functional as F

    from resdoctor.models import ResidualMLP

    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    with resdoctor.watch(model, opt, tmp_path / "r.pt") as doctor:

        def broken(*_args, **_kwargs):
            raise RuntimeError("sensor bug")

        doctor.recorder.magnitude.operand = broken  # every site measurement fails
        for _ in range(3):
            opt.zero_grad()
            F.mse_loss(model(torch.randn(4, 16)), torch.randn(4, 1)).backward()
            opt.step()
            doctor.log()
    notes = analyze(str(tmp_path / "r.pt")).notes
    assert any(n.startswith("residual signals missing: 2 of 2 sites") for n in notes), notes
    assert any("caught" in n and "RuntimeError: sensor bug" in n for n in notes), notes
