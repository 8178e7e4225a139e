"""The signal registry is the one list of signals: the journal records exactly those, and the
README's signal table documents every one of them."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

import resdoctor
from resdoctor.models import ResidualMLP
from resdoctor.runfile.signals import BY_NAME, SIGNALS, label, merge_rule

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_signal_table_lists_every_registered_signal():
    text = README.read_text()
    table = text[text.index("| signal | per | meaning |") : text.index("**Residual sites are")]
    documented = set(re.findall(r"`([a-z_]+)`", table))
    missing = {s.name for s in SIGNALS if s.per != "step"} - documented
    assert not missing


def test_a_recorded_run_holds_only_registered_signals(tmp_path):
    model = ResidualMLP(depth=3)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    with resdoctor.watch(model, opt, tmp_path / "r.pt", smoothing_every=1) as doctor:
        for _ in range(2):
            opt.zero_grad()
            loss = F.mse_loss(model(torch.randn(8, 16)), torch.randn(8, 1))
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    run = resdoctor.load(tmp_path / "r.pt")
    assert set(run.state["series"]) <= set(BY_NAME)
    assert {"grad_norm", "branch_ratio", "smoothing", "scalars"} <= set(run.signals)


def test_labels_and_merge_rules_come_from_the_registry():
    assert label("branch_ratio") == BY_NAME["branch_ratio"].label
    assert label("my_signal") == "my_signal"
    assert merge_rule("stream_norm") == "rms" and merge_rule("grad_norm") == "norm"
    assert merge_rule("unknown") == "mean"
