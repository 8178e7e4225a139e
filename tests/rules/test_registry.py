import sys
import textwrap

import pytest

from resdoctor.findings import Finding
from resdoctor.rules import registry, rule, run_rules
from resdoctor.rules._registry import Registry, Rule
from resdoctor.rules.testing import make_run


def test_builtin_rules_cover_the_eight_design_codes():
    codes = {r.code for r in registry}
    assert codes >= {
        "nonfinite",
        "exploding-gradients",
        "vanishing-gradients",
        "branch-dominance",
        "dead-branch",
        "activation-growth",
        "oversmoothing",
        "loss-divergence",
    }


def test_every_builtin_threshold_is_documented_in_its_docstring():
    for r in registry:
        doc = r.fn.__doc__ or ""
        for name in r.defaults:
            assert name in doc, f"{r.code}.{name} is not documented"


def test_decorated_user_rule_runs_with_its_threshold_and_can_be_tuned():
    @rule("long-run", requires=("scalar:loss",))
    def long_run(run, *, max_steps: int = 5) -> list[Finding]:
        if run.steps <= max_steps:
            return []
        return [
            Finding(
                "long-run",
                "info",
                "Long run",
                f"{run.steps} steps",
                step=0,
                thresholds={"max_steps": max_steps},
            )
        ]

    try:
        run = make_run(10, scalars={"loss": [1.0] * 10})
        findings, _ = run_rules(run)
        (f,) = [f for f in findings if f.code == "long-run"]
        assert f.rule == "long-run"  # filled in by the engine
        findings, _ = run_rules(run, **{"long-run.max_steps": 20})
        assert not [f for f in findings if f.code == "long-run"]
    finally:
        registry.remove("long-run")


def test_registering_a_code_twice_needs_replace():
    reg = Registry()
    reg._entry_points_loaded = True
    reg.add(Rule("x", lambda run: []))
    with pytest.raises(ValueError, match="already registered"):
        reg.add(Rule("x", lambda run: []))
    reg.add(Rule("x", lambda run: []), replace=True)


def test_entry_point_rules_are_loaded(tmp_path, monkeypatch):
    (tmp_path / "my_rdrules.py").write_text(
        textwrap.dedent("""
        from resdoctor.findings import Finding

        def always(run, *, level: float = 1.0):
            return Finding("always", "info", "Always", "from a plug-in")
    """)
    )
    dist = tmp_path / "my_rdrules-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-rdrules\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[resdoctor.rules]\nalways = my_rdrules:always\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    found = reg.get("always")
    assert found is not None and found.defaults == {"level": 1.0}
    assert found(make_run(3))[0].message == "from a plug-in"
    sys.modules.pop("my_rdrules", None)


def test_broken_entry_point_becomes_a_load_error(tmp_path, monkeypatch):
    dist = tmp_path / "broken_rd-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-rd\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[resdoctor.rules]\nbroken = no_such_mod_rd:x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    assert reg.get("broken") is None
    assert any("broken" in e for e in reg.load_errors)


def test_missing_signals_skip_a_rule_with_a_note():
    r = registry.get("oversmoothing")
    assert r.missing(make_run(3)) == ["smoothing"]
    _, notes = run_rules(make_run(3))
    assert any(n.startswith("oversmoothing: skipped, needs smoothing") for n in notes)


def test_every_builtin_threshold_default_is_in_the_docs():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs/analyze.md").read_text()
    for r in registry:
        for name, default in r.defaults.items():
            assert f"| {r.code}.{name} | {default!r} |" in doc, f"{r.code}.{name}={default!r}"
