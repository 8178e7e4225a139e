import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from resdoctor.models import TinyTransformer
from resdoctor.rules._common import first_run, has_norm, lr_fix, post_norm_sites
from resdoctor.rules._timeline import timeline
from resdoctor.rules.testing import make_run
from tests.rules.conftest import record


@pytest.mark.parametrize("norm, post", [("pre", False), ("post", True)])
def test_post_norm_sites_tell_post_ln_from_pre_ln(runs_dir, norm, post):
    torch.manual_seed(0)
    model = TinyTransformer(vocab=16, dim=8, depth=2, heads=2, max_len=8, norm=norm)
    ids = torch.randint(0, 16, (2, 6))
    run = record(
        str(runs_dir / f"{norm}ln.pt"),
        model,
        (ids,),
        lambda o: F.cross_entropy(o.flatten(0, 1), ids.flatten()),
        2,
    )
    found = post_norm_sites(run)
    assert (found == list(run.sites["name"])) if post else found == []
    assert has_norm(run, "blocks.0")


def test_first_run_needs_consecutive_rows_or_the_end():
    mask = pd.Series([False, True, False, True, True, True, False], index=range(0, 14, 2))
    assert first_run(mask, 3) == 6
    assert first_run(pd.Series([False, False, True]), 3) == 2  # true to the end
    assert first_run(pd.Series([True, False, False]), 2) is None


def test_lr_fix_from_update_ratios():
    run = make_run(
        10,
        scalars={"lr": [0.1] * 10},
        modules=[("a", "Linear", 4)],
        module_series={"update_ratio": {"a": [0.02] * 10}},
    )
    fix = lr_fix(run, timeline(run), 8)
    assert fix.params["factor"] == 0.05 and fix.params["new_lr"] == 0.005
    assert fix.params["update_ratio"] == 0.02


def test_lr_fix_from_the_lr_at_the_best_loss_when_the_lr_rose():
    lr = [0.01 * (t + 1) for t in range(10)]  # a warm-up that went too far
    loss = [2.0, 1.5, 1.2, 1.0, 0.9, 1.5, 3.0, 6.0, 9.0, 12.0]  # best at step 4, lr 0.05
    run = make_run(10, scalars={"lr": lr, "loss": loss})
    fix = lr_fix(run, timeline(run), 6)
    assert fix.params["new_lr"] == pytest.approx(0.025)  # half the LR of the best step
    assert "best at step 4" in fix.detail


def test_lr_fix_without_evidence_is_a_conventional_cut():
    run = make_run(10, scalars={"loss": [1.0] * 10})
    fix = lr_fix(run, timeline(run), 5)
    assert fix.params["factor"] == 0.1 and "conventional" in fix.detail
