"""W&B integration against a real wandb run in offline mode (no mocks): everything is read back
from what wandb wrote to disk, the run's ``.wandb`` transaction log and its media files."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import resdoctor
from resdoctor.findings import Finding, Fix
from resdoctor.models import ResidualMLP
from resdoctor.report.analysis import Report

wandb = pytest.importorskip("wandb")
from wandb.proto import wandb_internal_pb2 as pb  # noqa: E402

from resdoctor.integrations import _wandb_panels as panels  # noqa: E402
from resdoctor.integrations._wandb_html import heatmap_svg, report_html  # noqa: E402
from resdoctor.integrations.wandb import (  # noqa: E402
    CHART_FIELDS,
    WandbLogger,
    attach_report,
    vega_spec,
)

# a W&B failure at close is a "resdoctor: ..." warning (during training: an error in the run
# file): either one fails these tests
pytestmark = pytest.mark.filterwarnings("error:resdoctor")

# -- reading back an offline run -------------------------------------------------------------


def read_records(run_dir: Path, timeout: float = 20.0) -> list[pb.Record]:
    """The records of a finished run's ``.wandb`` file, once its ``exit`` record is on disk
    (wandb's service process may still be writing when ``finish()`` returns)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = _parse(next(run_dir.glob("run-*.wandb")).read_bytes())
        except Exception:  # noqa: BLE001 - a record half written: read again
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"no exit record in {run_dir}"
        time.sleep(0.1)


def _parse(data: bytes) -> list[pb.Record]:
    """A LevelDB-style log: 7-byte file header (":W&B", magic, version); 32 KiB blocks of
    chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last)."""
    assert data[:4] == b":W&B"
    block, pos, out, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            out.append(buf)
    records = []
    for raw in out:
        r = pb.Record()
        r.ParseFromString(raw)
        records.append(r)
    return records


class Offline:
    """What one offline run wrote: history rows, summary, metrics, config, alerts, media."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        self.records = read_records(run_dir)
        self.history: list[dict] = []
        self.history_at: list[int] = []  # record index of each history row
        self.summary: dict = {}
        self.config: dict = {}
        for at, r in enumerate(self.records):
            kind = r.WhichOneof("record_type")
            if kind == "history":
                row: dict = {}
                for item in r.history.item:
                    _set(row, item)
                self.history.append(row)
                self.history_at.append(at)
            for item in r.summary.update if kind == "summary" else ():
                _set(self.summary, item)
            for item in r.config.update if kind == "config" else ():
                _set(self.config, item)
        self.metrics = [r.metric for r in self.records if r.WhichOneof("record_type") == "metric"]
        self.alerts = [r.alert for r in self.records if r.WhichOneof("record_type") == "alert"]
        self.kinds = [r.WhichOneof("record_type") for r in self.records]

    def rows(self, key: str) -> list[dict]:
        return [h for h in self.history if key in h]

    def first(self, key: str) -> int:
        """Record index of the first history row holding ``key``."""
        return next(at for at, h in zip(self.history_at, self.history, strict=True) if key in h)

    def table(self, key: str) -> dict:
        """The last logged table ``key`` as {"columns", "data"} from its media file."""
        ref = self.summary[key]
        assert ref["_type"] == "table-file"
        return json.loads((self.dir / "files" / ref["path"]).read_text())

    def visualize(self, key: str) -> dict:
        return self.config["_wandb"]["visualize"][key]


def _set(tree: dict, item) -> None:
    """Apply one update item; ``nested_key`` is a path into nested dicts."""
    path = list(item.nested_key) or [item.key]
    for k in path[:-1]:
        tree = tree.setdefault(k, {})
    tree[path[-1]] = json.loads(item.value_json)


@pytest.fixture
def wb(tmp_path, monkeypatch):
    """Offline wandb writing under tmp_path; yields a function to read back a finished run."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):  # artifact staging etc.
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    yield lambda run: Offline(Path(run.dir).parent)
    if wandb.run is not None:
        wandb.run.finish()


def init(**kwargs):
    return wandb.init(
        project="resdoctor-tests", settings=wandb.Settings(x_disable_stats=True), **kwargs
    )


def train(model, opt, doctor, steps, nan_at=None, user_run=None):
    for i in range(steps):
        if i == nan_at:  # a weight turns NaN: the forward onset is blocks.1.branch.1 at step i
            with torch.no_grad():
                model.blocks[1].branch[1].weight.fill_(float("nan"))
        opt.zero_grad()
        loss = F.mse_loss(model(torch.randn(8, 16)), torch.randn(8, 1))
        loss.backward()
        opt.step()
        doctor.log(loss=loss)
        if user_run is not None:
            user_run.log({"user/metric": float(i)})


def mlp(depth=3):
    model = ResidualMLP(depth=depth, dim=16)
    return model, torch.optim.SGD(model.parameters(), lr=0.05)


# -- tests -------------------------------------------------------------------------------------


def test_import_resdoctor_does_not_import_wandb():
    code = (
        "import sys, resdoctor, resdoctor.integrations.wandb; "
        "print('wandb' in sys.modules)"
    )  # wandb itself loads when a logger is made
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_wandb_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an uninstalled package looks like
    with pytest.raises(ImportError, match=r"pip install resdoctor\[wandb\]"):
        WandbLogger(True)


def test_step_signals_under_stable_keys_on_their_own_axis(wb, tmp_path):
    model, opt = mlp()
    run = init()
    with resdoctor.watch(model, opt, tmp_path / "run.pt", wandb=True, wandb_every=5) as doc:
        train(model, opt, doc, 23, user_run=run)
    run.finish()
    out, rec = wb(run), resdoctor.load(tmp_path / "run.pt")
    assert rec.errors.empty
    ours = out.rows("resdoctor/loss")
    assert [r["resdoctor/step"] for r in ours] == [0, 5, 10, 15, 20, 22]  # + the last at close
    globs = {m.glob_name: m.step_metric for m in out.metrics if m.glob_name}
    assert globs == {"resdoctor/*": "resdoctor/step"}
    # the user's own rows are all there, in order, at their own _step: resdoctor's rows ride on
    # them (issue 17: it used to advance _step, 60 iterations landed on _step 1-69)
    users = out.rows("user/metric")
    assert [r["user/metric"] for r in users] == [float(i) for i in range(23)]
    assert [r["_step"] for r in users] == list(range(23))
    assert max(r["_step"] for r in out.history) <= 23  # + at most the report's row at finish
    row = ours[2]  # step 10
    modules = list(rec.series("grad_norm").columns)
    for m in modules:
        name = m or "(root)"
        assert row[f"resdoctor/grad_norm/{name}"] == pytest.approx(
            rec.series("grad_norm").loc[10, m], rel=1e-6
        )
    for site in ["blocks.0", "blocks.1", "blocks.2"]:
        assert row[f"resdoctor/sites/branch_ratio/{site}"] == pytest.approx(
            rec.series("branch_ratio").loc[10, site], rel=1e-6
        )
        assert f"resdoctor/sites/stream_norm/{site}" in row
    assert row["resdoctor/loss"] == pytest.approx(rec.scalar("loss")[10], rel=1e-6)
    assert row["resdoctor/grad_norm_total"] > 0 and row["resdoctor/lr"] == 0.05
    assert "resdoctor/update_ratio/head" in row  # update_every=10 samples step 10
    assert "resdoctor/update_ratio/head" not in ours[1]  # ... and not step 5
    # nothing that wandb.watch logs: no histograms anywhere
    assert not any(
        isinstance(v, dict) and v.get("_type") == "histogram"
        for r in out.history
        for v in r.values()
    )


def test_commit_false_rides_on_the_users_explicit_steps(wb, tmp_path):
    """A user logging with step=epoch: resdoctor's rows join theirs and none of theirs is lost."""
    model, opt = mlp()
    run = init()
    opts = {"run": run, "commit": False}
    with resdoctor.watch(model, opt, tmp_path / "run.pt", wandb=opts, wandb_every=1) as doc:
        for epoch in range(4):
            train(model, opt, doc, 3)
            run.log({"user/epoch": epoch}, step=epoch)
    run.finish()
    out = wb(run)
    assert resdoctor.load(tmp_path / "run.pt").errors.empty
    assert [r["user/epoch"] for r in out.rows("user/epoch")] == [0, 1, 2, 3]
    assert [r["_step"] for r in out.rows("user/epoch")] == [0, 1, 2, 3]
    # a row is committed when the user's next step arrives: it carries the latest resdoctor
    # values up to then, each on resdoctor's own x-axis (the last row: the values at close)
    assert [r["resdoctor/step"] for r in out.rows("user/epoch")] == [5, 8, 11, 11]
    assert len(out.rows("resdoctor/loss")) == 3 and "resdoctor/report" in out.history[-1]


def test_report_at_close_tables_charts_html_and_summary(wb, tmp_path):
    model, opt = mlp()
    run = init()
    with resdoctor.watch(model, opt, tmp_path / "run.pt", wandb=run, wandb_every=50) as doc:
        train(model, opt, doc, 12)
    run.finish()
    out, rec = wb(run), resdoctor.load(tmp_path / "run.pt")
    flow = out.table("resdoctor/tables/gradient_flow")
    assert flow["columns"] == [
        "step",
        "module",
        "depth",
        "grad_norm",
        "log10_grad_norm",
        "nonfinite",
    ]
    modules = rec.series("grad_norm").columns
    assert len(flow["data"]) == 12 * len(modules)
    by_depth = {r[2]: r[1] for r in flow["data"]}
    assert by_depth[0] == "proj" and by_depth[len(modules) - 1] == "head"  # input to output
    first = [r for r in flow["data"] if r[0] == 3 and r[1] == "blocks.2.branch.1"][0]
    assert first[3] == pytest.approx(rec.series("grad_norm").loc[3, "blocks.2.branch.1"])
    assert first[4] == pytest.approx(np.log10(first[3])) and first[5] is False
    ratio = out.table("resdoctor/tables/branch_ratio")
    assert {r[1] for r in ratio["data"]} == {"blocks.0", "blocks.1", "blocks.2"}
    assert out.table("resdoctor/findings")["columns"] == panels.FINDING_COLUMNS
    for chart in ("branch_ratio", "gradient_profile"):
        vis = out.visualize(f"resdoctor/charts/{chart}")
        assert vis["panel_config"]["panelDefId"] == "wandb/lineseries/v0"
        assert out.table(f"resdoctor/charts/{chart}_table")["data"]
    html_ref = out.summary["resdoctor/report"]
    assert html_ref["_type"] == "html-file"
    page = (out.dir / "files" / html_ref["path"]).read_text()
    assert "resdoctor: " in page and "12 steps" in page and "<svg" in page
    # the gradient-flow heatmap is a panel of its own, created with no preset to save first
    heat_ref = out.summary["resdoctor/charts/gradient_flow"]
    assert heat_ref["_type"] == "html-file"
    heat = (out.dir / "files" / heat_ref["path"]).read_text()
    assert heat.count("<rect") >= 12 * len(modules)  # one cell per module and step
    assert out.summary["resdoctor/verdict"] == resdoctor.analyze(rec).verdict
    assert out.summary["resdoctor/findings_count"] == len(resdoctor.analyze(rec).findings)


def test_nan_onset_alerts_during_training_with_the_fix(wb, tmp_path):
    model, opt = mlp()
    run = init()
    with resdoctor.watch(model, opt, tmp_path / "run.pt", wandb=True, wandb_every=100) as doc:
        train(model, opt, doc, 6, nan_at=4)
        logger = doc.integrations[0]
        assert len(logger.alerts) == 1  # sent while training, not at close
        train(model, opt, doc, 3)
    run.finish()
    out = wb(run)
    assert resdoctor.load(tmp_path / "run.pt").errors.empty
    live = logger.alerts[0]
    [alert] = [a for a in out.alerts if a.title == live["title"]]  # once, not per step or module
    assert alert.text == live["text"]
    assert alert.level == "ERROR" and len(alert.title) < 64
    assert "step 4" in alert.text and "blocks.1.branch.1" in alert.text
    assert "First fix (" in alert.text and str(tmp_path / "run.pt") in alert.text
    assert alert.text.startswith("Root cause: ") and len(alert.text) <= 500  # short (issue 17)
    # it was written while training: before rows of later steps and the close-time report
    at = next(i for i, r in enumerate(out.records) if r.alert.title == live["title"])
    assert at < out.first("resdoctor/report")
    assert out.summary["resdoctor/alerts"][0]["title"] == alert.title
    assert out.summary["resdoctor/alerts"][0]["step"] == 4
    # the alert is the rules' nonfinite finding, with its fix, and it tops the findings table
    report = resdoctor.analyze(tmp_path / "run.pt")
    nonfinite = next(f for f in report.findings if f.code == "nonfinite")
    assert nonfinite.severity == "critical" and nonfinite.location == "blocks.1.branch.1"
    assert alert.title == panels.alert_text(nonfinite)[0]
    assert nonfinite.fixes[0].title in alert.text
    rows = out.table("resdoctor/findings")["data"]
    assert rows[0][:2] == ["critical", "nonfinite"] and rows[0][3] == 4


def test_analyze_every_alerts_other_critical_findings_while_training(wb, tmp_path):
    model, opt = mlp(depth=2)
    run = init()
    opts = {"run": run, "analyze_every": 5}
    with resdoctor.watch(model, opt, tmp_path / "run.pt", wandb=opts, wandb_every=100) as doc:
        for i in range(40):
            opt.zero_grad()
            F.mse_loss(model(torch.randn(8, 16)), torch.randn(8, 1)).backward()
            opt.step()
            doc.log(loss=1.0 / (1 + i) if i < 20 else 0.05 * 1.5 ** (i - 20))  # diverges
        live = [dict(a) for a in doc.integrations[0].alerts]
    run.finish()
    assert [a["code"] for a in live] == ["loss-divergence"]  # sent before close
    out = wb(run)
    [alert] = out.alerts
    assert alert.title == live[0]["title"] and "First fix (" in alert.text
    assert out.records.index(next(r for r in out.records if r.alert.title)) < out.first(
        "resdoctor/report"
    )


def _critical_report(run_pt: Path) -> Report:
    rec = resdoctor.load(run_pt)
    fix = Fix(
        "clip-gradients",
        "Clip gradients",
        "Clip the global norm at 2.5 (p99).",
        "torch.nn.utils.clip_grad_norm_(model.parameters(), 2.5)",
        {"max_norm": 2.5},
    )
    findings = (
        Finding(
            "exploding-gradients",
            "critical",
            "Exploding gradients",
            "Gradient norms grew 1000x in 5 steps.",
            step=7,
            location="blocks.2",
            fixes=(fix,),
        ),
        Finding(
            "dead-branch",
            "warning",
            "Dead branch",
            "blocks.0 contributes nothing.",
            step=2,
            location="blocks.0",
        ),
    )
    return Report(rec, findings)


def test_alert_for_a_critical_finding_carries_its_fix(wb, tmp_path):
    model, opt = mlp()
    with resdoctor.watch(model, opt, tmp_path / "run.pt") as doc:
        train(model, opt, doc, 8)
    run = init()
    logger = WandbLogger(run)
    report = _critical_report(tmp_path / "run.pt")
    assert logger._alert_findings(run, doc, report, []) == 1
    assert logger._alert_findings(run, doc, report, []) == 0  # each finding alerts once
    run.finish()
    out = wb(run)
    [alert] = out.alerts
    assert alert.title == "resdoctor: Exploding gradients"
    assert "step 7 in blocks.2" in alert.text
    assert "First fix (clip-gradients): Clip gradients" in alert.text
    assert "clip_grad_norm_" not in alert.text  # the snippet stays in the report: <= 500 chars
    assert out.summary["resdoctor/alerts"][0]["code"] == "exploding-gradients"


def test_attach_report_resumes_the_run_by_id(wb, tmp_path):
    model, opt = mlp()
    with resdoctor.watch(model, opt, tmp_path / "run.pt") as doc:
        train(model, opt, doc, 8)
    first = init(id="rdattach1")
    first.log({"user/metric": 1.0})
    first.finish()
    report = _critical_report(tmp_path / "run.pt")
    where = attach_report(report, project="resdoctor-tests", run_id="rdattach1")
    assert wandb.run is None  # the run opened to attach was finished
    out = Offline(Path(where))
    assert out.records[1].run.run_id == "rdattach1" and Path(where) != Path(first.dir).parent
    rows = out.table("resdoctor/findings")["data"]
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        ("critical", "exploding-gradients", 7, "blocks.2"),
        ("warning", "dead-branch", 2, "blocks.0"),
    ]
    assert rows[0][7] == "Clip gradients: Clip the global norm at 2.5 (p99)."
    page = (out.dir / "files" / out.summary["resdoctor/report"]["path"]).read_text()
    assert "critical" in page and "clip_grad_norm_" in page and "Exploding gradients" in page
    assert out.summary["resdoctor/verdict"] == "critical"
    assert out.summary["resdoctor/critical_count"] == 1
    assert not out.alerts  # attaching a report afterwards pages nobody


def test_cli_analyze_wandb_attaches_the_report_and_keeps_json_clean(wb, tmp_path):
    model, opt = mlp()
    with resdoctor.watch(model, opt, tmp_path / "run.pt") as doc:
        train(model, opt, doc, 6, nan_at=3)
    cmd = [
        sys.executable,
        "-m",
        "resdoctor.cli.main",
        "analyze",
        str(tmp_path / "run.pt"),
        "--json",
        "--wandb",
        "--wandb-project",
        "resdoctor-tests",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)  # stdout is exactly the JSON object
    [run_dir] = (tmp_path / "wandb").glob("offline-run-*")
    out = Offline(run_dir)
    assert out.summary["resdoctor/verdict"] == printed["verdict"]
    rows = out.table("resdoctor/findings")["data"]
    assert [(r[1], r[3]) for r in rows] == [(f["code"], f["step"]) for f in printed["findings"]]


def test_attach_report_by_id_leaves_another_active_run_alone(wb, tmp_path):
    model, opt = mlp()
    with resdoctor.watch(model, opt, tmp_path / "run.pt") as doc:
        train(model, opt, doc, 4)
    other = init(id="rdother1")
    other.finish()
    active = init()
    where = attach_report(
        resdoctor.analyze(tmp_path / "run.pt"), project="resdoctor-tests", run_id="rdother1"
    )
    assert wandb.run is active and not active._is_finished
    active.log({"user/metric": 2.0})
    active.finish()
    attached, untouched = Offline(Path(where)), wb(active)
    assert attached.records[1].run.run_id == "rdother1" and "resdoctor/verdict" in attached.summary
    assert "resdoctor/verdict" not in untouched.summary
    assert untouched.rows("user/metric")[0]["user/metric"] == 2.0


def test_attach_report_to_the_active_run_leaves_it_open(wb, tmp_path):
    model, opt = mlp()
    with resdoctor.watch(model, opt, tmp_path / "run.pt") as doc:
        train(model, opt, doc, 4)
    run = init()
    where = attach_report(resdoctor.analyze(tmp_path / "run.pt"))
    assert wandb.run is run and where == str(Path(run.dir).parent)
    run.finish()
    assert wb(run).summary["resdoctor/findings_count"] == len(
        resdoctor.analyze(tmp_path / "run.pt").findings
    )


def test_custom_chart_presets_map_the_shipped_spec_fields(wb, tmp_path):
    model, opt = mlp()
    run = init()
    charts = {"gradient_flow": "me/resdoctor-gradient-flow", "branch_ratio": "me/rd-branch"}
    opts = {"run": run, "charts": charts, "prefix": "doc"}
    with resdoctor.watch(model, opt, tmp_path / "run.pt", wandb=opts, wandb_every=3) as doc:
        train(model, opt, doc, 5)
    run.finish()
    out = wb(run)
    assert resdoctor.load(tmp_path / "run.pt").errors.empty
    assert [r["doc/step"] for r in out.rows("doc/loss")] == [0, 3, 4]
    for name, spec in charts.items():
        cfg = out.visualize(f"doc/charts/{name}_custom")["panel_config"]
        assert cfg["panelDefId"] == spec and cfg["fieldSettings"] == CHART_FIELDS[name]
        columns = out.table(f"doc/charts/{name}_custom_table")["columns"]
        assert set(CHART_FIELDS[name].values()) <= set(columns)
    with pytest.raises(ValueError, match="unknown resdoctor chart"):
        WandbLogger(run, charts={"heatmap": "x"})


@pytest.mark.parametrize("name", sorted(CHART_FIELDS))
def test_vega_specs_are_valid_vega_lite_once_wandb_fills_the_fields(name, tmp_path):
    altair = pytest.importorskip("altair")
    import jsonschema

    text = json.dumps(vega_spec(name))
    assert set(re.findall(r"\$\{field:(\w+)\}", text)) == set(CHART_FIELDS[name])
    for field, column in CHART_FIELDS[name].items():
        text = text.replace(f"${{field:{field}}}", column)
    text = text.replace("${string:title}", "t")
    assert "${" not in text
    spec = json.loads(text)
    assert spec.pop("data") == {"name": "wandb"}  # W&B binds the logged table here
    spec["data"] = {
        "values": [
            {
                "step": 0,
                "module": "a",
                "site": "a",
                "depth": 0,
                "log10_grad_norm": -1.0,
                "nonfinite": False,
                "branch_ratio": 0.5,
            }
        ]
    }
    jsonschema.validate(spec, altair.vegalite.v6.schema.load_schema())


def test_no_run_warns_once_and_training_goes_on(wb, tmp_path):
    model, opt = mlp()
    with pytest.warns(UserWarning, match="no wandb run is active") as caught:
        with resdoctor.watch(model, opt, tmp_path / "run.pt", wandb=True) as doc:
            train(model, opt, doc, 4)
    assert sum("wandb" in str(w.message) for w in caught) == 1
    assert resdoctor.load(tmp_path / "run.pt").steps == 4


def test_run_finished_before_close_warns_and_keeps_the_run_file(wb, tmp_path):
    model, opt = mlp()
    run = init()
    with pytest.warns(UserWarning, match="has finished: close the watcher before"):
        with resdoctor.watch(model, opt, tmp_path / "run.pt", wandb=True, wandb_every=1) as doc:
            train(model, opt, doc, 2)
            run.finish()
            train(model, opt, doc, 2)
    assert resdoctor.load(tmp_path / "run.pt").steps == 4
    assert [r["resdoctor/step"] for r in wb(run).rows("resdoctor/loss")] == [0, 1]


def test_step_metrics_and_heatmap_from_a_nan_run(tmp_path):
    model, opt = mlp()
    with resdoctor.watch(model, opt, tmp_path / "run.pt") as doc:
        train(model, opt, doc, 6, nan_at=4)
        ctx = doc.context
        row = panels.step_metrics(
            ctx.latest(), ctx.param_modules, [s.name for s in ctx.sites or []], "rd"
        )
    assert row["rd/step"] == 5 and np.isnan(row["rd/loss"])
    assert np.isnan(row["rd/grad_norm/blocks.1.branch.1"])  # measured NaN is kept
    assert not any(k.startswith("rd/branch_ratio/") and np.isnan(v) for k, v in row.items())
    flow = panels.gradient_flow(resdoctor.load(tmp_path / "run.pt"))
    bad = [r for r in flow.rows if r[5]]
    assert bad and min(r[0] for r in bad) == 4 and all(r[3] is None for r in bad)
    svg = heatmap_svg(flow)
    assert svg.count("<rect") == len(flow.rows) and svg.count("#e53935") == len(bad)
    page = report_html(_critical_report(tmp_path / "run.pt"), flow)
    assert "<script" not in page and "Exploding gradients" in page


def test_tables_stay_bounded(tmp_path):
    model, opt = mlp(depth=2)
    with resdoctor.watch(model, opt, tmp_path / "run.pt") as doc:
        train(model, opt, doc, 40)
    rec = resdoctor.load(tmp_path / "run.pt")
    modules = len(rec.series("grad_norm").columns)
    flow = panels.gradient_flow(rec, max_rows=10 * modules)
    steps = sorted({r[0] for r in flow.rows})
    assert len(flow.rows) == 10 * modules and steps[0] == 0 and steps[-1] == 39
    assert len(panels.site_table(rec, max_rows=20).rows) <= 20


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_logging_and_live_alerts_add_no_sync(wb, tmp_path):
    """doctor.log() with W&B logging every step and a NaN onset diagnosed live: any host-device
    synchronisation in it raises (sync debug mode) and would be recorded as an error."""
    model = ResidualMLP(depth=3, dim=16).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(8, 16, device="cuda"), torch.randn(8, 1, device="cuda")
    run = init()
    with resdoctor.watch(
        model, opt, tmp_path / "run.pt", wandb=True, wandb_every=1, flush_every=0, flush_seconds=0
    ) as doc:
        for i in range(8):
            if i == 4:
                with torch.no_grad():
                    model.blocks[1].branch[1].weight.fill_(float("nan"))
            opt.zero_grad()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            torch.cuda.set_sync_debug_mode("error")
            try:
                doc.log(loss=loss)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    run.finish()
    assert resdoctor.load(tmp_path / "run.pt").errors.empty
    out = wb(run)
    assert len(out.rows("resdoctor/loss")) >= 6 and out.alerts


def test_a_nan_at_step_3_run_has_its_site_signals_before_the_nan(wb, tmp_path):
    """Issue 17: with wandb_every=10 only step 0 precedes the NaN; it must hold the site
    signals (smoothing included), NaN values are logged as NaN, and _step is the user's."""
    model, opt = mlp()
    run = init()
    with resdoctor.watch(model, opt, tmp_path / "run.pt", wandb=True, wandb_every=10) as doc:
        train(model, opt, doc, 12, nan_at=3, user_run=run)
    run.finish()
    out = wb(run)
    ours = {r["resdoctor/step"]: r for r in out.rows("resdoctor/step")}
    first = ours[0]
    for signal in ("branch_ratio", "stream_norm", "smoothing"):
        keys = [k for k in first if k.startswith(f"resdoctor/sites/{signal}/")]
        assert len(keys) == 3 and all(np.isfinite(first[k]) for k in keys), signal
    late = ours[10]  # after the NaN: measured non-finite values are logged, not dropped
    assert any(
        not np.isfinite(v) for k, v in late.items() if k.startswith("resdoctor/sites/stream_norm/")
    )
    assert [r["_step"] for r in out.rows("user/metric")] == list(range(12))
