"""Every section of the app on real recorded runs (sick: NaN at step 13; healthy), via AppTest."""

from __future__ import annotations

import numpy as np
import pytest

import resdoctor
from tests.app.conftest import chart_data, texts


def _metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _y_title(spec: dict) -> str:
    return spec["layer"][0]["encoding"]["y"]["title"]


def _clean(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("kind", ["sick", "healthy"])
def test_header_and_diagnosis(app, runs, kind: str) -> None:
    at = app(run=runs[kind])
    _clean(at)
    run = resdoctor.load(runs[kind])
    report = resdoctor.analyze(run)
    assert f"Verdict: {report.verdict}" in texts(at)
    assert _metric(at, "steps") == "30"
    assert _metric(at, "residual sites") == str(len(run.sites))
    onset = run.nonfinite["step"].min() if len(run.nonfinite) else None
    assert _metric(at, "first NaN/Inf step") == ("–" if onset is None else str(onset))
    assert (onset is not None) == (kind == "sick")
    # the root cause first, then one block per finding; each snippet of the plan once
    shown = [m.value for m in at.markdown if m.value.startswith("#### ")]
    assert len(shown) == len(report.findings) + (report.root_cause is not None)
    if report.root_cause is not None:
        assert shown[0].endswith(f"Root cause: `{report.root_cause.code}`")
    snippets = [x.snippet for x in report.plan if x.snippet]
    assert [c.value.strip() for c in at.code] == [s.strip() for s in snippets]
    if not report.findings:
        assert "No findings" in texts(at)


@pytest.mark.parametrize("kind", ["sick", "healthy"])
def test_gradient_flow_heatmap_marks_the_nan_onset(app, runs, kind: str) -> None:
    at = app(run=runs[kind], tab="Gradient flow")
    _clean(at)
    run = resdoctor.load(runs[kind])
    ((spec, frames),) = chart_data(at)
    cells = max(frames, key=len)
    modules = run.series("grad_norm").shape[1]
    assert len(cells) == modules * 30  # a small run is drawn exactly: every module, every step
    # coloured by the per-parameter RMS the vanishing rule uses: ||grad W|| / sqrt(n)
    size = dict(zip(run.modules["name"], run.modules["params"]))
    grads = run.series("grad_norm")
    grads = grads / [max(size[c], 1) ** 0.5 for c in grads.columns]
    finite = cells[~cells["nonfinite"]]
    row = finite[(finite["step"] == 5) & (finite["name"] == grads.columns[0])]
    assert row["value"].item() == pytest.approx(grads.iloc[5, 0])
    bad_steps = sorted(set(cells.loc[cells["nonfinite"], "step"]))
    if kind == "sick":
        onset = int(run.nonfinite["step"].min())
        # a gradient norm can read inf a step before the exact onset: huge but finite gradients
        # overflow float32 in the norm, while the onset itself is checked exactly (min/max)
        assert bad_steps and bad_steps[0] <= onset and onset in bad_steps
        rules = [f for f in frames if "label" in f.columns]
        assert rules and rules[0]["step"].tolist() == [onset]
        # the modules the findings name are marked on their rows (issue 17)
        marks = [f for f in frames if "why" in f.columns]
        report = resdoctor.analyze(run)
        named = {f.location for f in report.findings} & set(grads.columns)
        assert marks and named and named <= set(marks[0]["name"])
        assert at.dataframe[0].value["step"].min() == onset  # the exact onsets table
    else:
        assert bad_steps == []
        assert not at.dataframe


def test_gradient_flow_other_signals(app, runs) -> None:
    at = app(run=runs["healthy"], tab="Gradient flow")
    at.radio[0].set_value("update_ratio").run()
    _clean(at)
    ((spec, frames),) = chart_data(at)
    cells = max(frames, key=len)
    ratios = resdoctor.load(runs["healthy"]).series("update_ratio")
    assert cells["value"].max() == pytest.approx(np.nanmax(ratios.to_numpy()))
    assert "update ratio" in str(spec)


@pytest.mark.parametrize("kind", ["sick", "healthy"])
def test_residual_sites_over_time_and_by_depth(app, runs, kind: str) -> None:
    at = app(run=runs[kind], tab="Residual sites")
    _clean(at)
    run = resdoctor.load(runs[kind])
    ratio = run.series("branch_ratio")
    charts = chart_data(at)
    assert len(charts) == 3  # over time, depth profile, all-sites heatmap
    lines = charts[0][1][0]
    assert set(lines["name"]) == set(ratio.columns)
    slider = at.slider[0]
    finite_steps = ratio.index[np.isfinite(ratio.to_numpy()).any(axis=1)]
    assert slider.value == finite_steps[-1]
    step = int(finite_steps[len(finite_steps) // 2])
    slider.set_value(step).run()
    _clean(at)
    profile = chart_data(at)[1][1][0]
    assert profile["value"].tolist() == pytest.approx(ratio.loc[step].tolist())
    assert profile["name"].tolist() == run.sites.sort_values("index")["name"].tolist()


def test_residual_sites_gradient_share(app, runs) -> None:
    at = app(run=runs["healthy"], tab="Residual sites")
    at.radio[0].set_value("grad_branch_share").run()
    _clean(at)
    share = resdoctor.load(runs["healthy"]).series("grad_branch_share")
    lines = chart_data(at)[0][1][0]
    assert len(lines) == np.isfinite(share.to_numpy()).sum()
    assert lines["value"].between(0, 1).all()


@pytest.mark.parametrize("kind", ["sick", "healthy"])
def test_activation_growth_by_depth(app, runs, kind: str) -> None:
    at = app(run=runs[kind], tab="Activation growth")
    _clean(at)
    stream = resdoctor.load(runs[kind]).series("stream_norm")
    charts = chart_data(at)
    assert len(charts) == 2
    snaps = charts[0][1][0]
    assert 1 <= snaps["step"].nunique() <= 5
    last = snaps["step"].max()
    got = snaps[snaps["step"] == last]["value"].tolist()
    assert got == pytest.approx(stream.loc[last].dropna().tolist())
    assert '"type": "log"' in str(charts[0][0]).replace("'", '"')


@pytest.mark.parametrize("kind", ["sick", "healthy"])
def test_oversmoothing(app, runs, kind: str) -> None:
    at = app(run=runs[kind], tab="Over-smoothing")
    _clean(at)
    sim = resdoctor.load(runs[kind]).series("smoothing")
    charts = chart_data(at)
    assert len(charts) == 3  # heatmap, similarity and energy by depth
    cells = max(charts[0][1], key=len)
    assert cells["step"].nunique() == len(sim)  # every sampled step, exactly
    assert cells.loc[~cells["nonfinite"], "value"].between(-1, 1).all()
    bad = cells.loc[cells["nonfinite"], "step"]
    if kind == "sick":  # NaN activations from the onset on, drawn as NaN cells
        onset = resdoctor.load(runs[kind]).nonfinite["step"].min()
        assert len(bad) and bad.min() >= onset
    else:
        assert not len(bad)


@pytest.mark.parametrize("kind", ["sick", "healthy"])
def test_loss_lr_and_skipped(app, runs, kind: str) -> None:
    at = app(run=runs[kind], tab="Loss & LR")
    _clean(at)
    run = resdoctor.load(runs[kind])
    charts = {_y_title(spec): frames[0] for spec, frames in chart_data(at)}
    assert set(charts) == {"loss", "learning rate", "total gradient norm"}
    loss = charts["loss"]
    expected = run.scalar("loss")
    expected = expected[np.isfinite(expected)]
    assert loss["value"].tolist() == pytest.approx(expected.tolist())
    lr = charts["learning rate"]["value"]
    assert lr.tolist() == pytest.approx([0.1 if kind == "sick" else 0.02] * 30)
    total = run.scalar("grad_norm_total")
    assert len(charts["total gradient norm"]) == np.isfinite(total).sum()
    assert "No step was skipped" in texts(at)
    at.toggle[0].set_value(False).run()
    _clean(at)
    assert '"type": "log"' not in str(chart_data(at)[0][0]).replace("'", '"')


TABS = [
    "Diagnosis",
    "Gradient flow",
    "Residual sites",
    "Activation growth",
    "Over-smoothing",
    "Loss & LR",
]


@pytest.mark.parametrize("kind", ["plain", "empty"])
def test_runs_without_sites_or_steps(app, edge_runs, kind: str) -> None:
    notes = []
    for tab in TABS if kind == "empty" else TABS[2:5]:
        at = app(run=edge_runs[kind], tab=tab)
        _clean(at)
        notes += [i.value for i in at.info]
    no_sites = "No residual site was found in this model, so there is nothing to show here."
    assert notes.count(no_sites) == 3  # sites, activation growth, over-smoothing
    assert ("No step recorded yet" in " ".join(notes)) == (kind == "empty")
    if kind == "empty":
        assert any(n.startswith("Not recorded in this run: `grad_rms`, `grad_norm`") for n in notes)


def test_a_nan_run_opens_on_its_finite_window(app, runs) -> None:
    """Issue 17: a run that went NaN shows, by default, its steps up to a few past the onset
    (afterwards every cell is magenta); ?steps=all shows every step."""
    run = resdoctor.load(runs["sick"])
    onset = int(run.nonfinite["step"].min())
    at = app(run=runs["sick"], tab="Gradient flow", window=True)
    _clean(at)
    cells = max(chart_data(at)[0][1], key=len)
    assert onset < cells["step"].max() < run.steps - 1
    assert f"the run went non-finite at step {onset}" in texts(at)
    full = app(run=runs["sick"], tab="Gradient flow")
    assert max(chart_data(full)[0][1], key=len)["step"].max() == run.steps - 1


def test_every_builtin_finding_links_to_a_tab_that_exists() -> None:
    from resdoctor.app.main import SECTIONS
    from resdoctor.app.sections.diagnosis import CHART_TAB
    from resdoctor.rules import registry

    assert {r.code for r in registry} <= set(CHART_TAB)
    assert set(CHART_TAB.values()) <= set(SECTIONS)


def test_a_finding_card_opens_the_tab_of_its_chart(app, runs) -> None:
    """Issue 17: cards link to the charts that show them (the browser test clicks one too)."""
    at = app(run=runs["sick"])
    _clean(at)
    report = resdoctor.analyze(resdoctor.load(runs["sick"]))
    buttons = [b for b in at.button if (b.key or "").startswith("chart-")]
    assert len(buttons) == len(report.findings)
    target = buttons[-1].label.removeprefix("See it in ").removesuffix(" →")
    buttons[-1].click().run()
    _clean(at)
    assert at.session_state["tab"] == target


def test_a_narrow_healthy_range_does_not_span_the_whole_palette() -> None:
    """Issue 17: values within 0.8-1.26 sit mid-palette; a wide range keeps its quantiles."""
    import pandas as pd

    from resdoctor.app import charts

    narrow = pd.Series(np.log10(np.linspace(0.8, 1.26, 200)))
    lo, hi = charts.robust_domain(narrow, min_span=charts.MIN_LOG_SPAN)
    assert hi - lo == pytest.approx(1.0)
    assert lo < narrow.min() and narrow.max() < hi
    wide = pd.Series(np.linspace(-6, 2, 200))
    lo, hi = charts.robust_domain(wide, min_span=charts.MIN_LOG_SPAN)
    assert -6 < lo < -5.5 and 1.5 < hi < 2
