"""watch(): lifecycle, hook hygiene, never hurting the run, steps, AMP, accumulation."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resdoctor
from resdoctor.models import ResidualMLP, ResNet, TinyTransformer
from tests._faults import BackwardNaN, ForwardNaN, LogBlock


def hooks_left(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


def mlp_step(model, opt, x, y):
    opt.zero_grad()
    loss = F.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss


def data(n=8):
    return torch.randn(n, 16), torch.randn(n, 1)


def test_no_hooks_after_close_exception_and_nesting(tmp_path):
    model = ResidualMLP(depth=3)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "a.pt") as outer:
        with resdoctor.watch(model, opt, tmp_path / "b.pt") as inner:
            mlp_step(model, opt, x, y)
            inner.log()
        assert hooks_left(model) > 0  # the outer watcher's hooks stay
        mlp_step(model, opt, x, y)
        outer.log()
    assert hooks_left(model) == 0
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    with pytest.raises(ZeroDivisionError):
        with resdoctor.watch(model, opt, tmp_path / "c.pt"):
            mlp_step(model, opt, x, y)
            raise ZeroDivisionError("a bug in the training loop")
    assert hooks_left(model) == 0
    assert resdoctor.load(tmp_path / "c.pt").steps == 1  # what ran before the crash is saved
    w = resdoctor.watch(model, opt, tmp_path / "d.pt")
    w.close()
    w.close()  # idempotent
    assert hooks_left(model) == 0


def train(model, opt, batches, doctor=None):
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if doctor is not None:
            doctor.log(loss=loss)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (ResNet((1, 1)), [(torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))] * 4),
        lambda: (
            TinyTransformer(depth=2, norm="post"),
            [(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8)))] * 4,
        ),
    ],
)
def test_watched_training_is_bit_identical(tmp_path, make):
    torch.manual_seed(1)
    model, batches = make()
    if isinstance(model, TinyTransformer):
        model.blocks[0].attn.dropout = 0.1  # random ops must consume the same RNG stream

        def loss_fn(out, y):
            return F.cross_entropy(out.flatten(0, 1), y.flatten())

    twin = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    opt2 = torch.optim.Adam(twin.parameters(), 1e-3)
    torch.manual_seed(2)
    _train_any(twin, opt2, batches)
    torch.manual_seed(2)
    with resdoctor.watch(
        model, opt, tmp_path / "r.pt", smoothing_every=1, update_every=1, grad_share_every=1
    ) as doctor:
        _train_any(model, opt, batches, doctor)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name
    assert resdoctor.load(tmp_path / "r.pt").errors.empty


def _train_any(model, opt, batches, doctor=None):
    for x, y in batches:
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out.flatten(0, -2) if out.dim() > 2 else out, y.flatten())
        loss.backward()
        opt.step()
        if doctor is not None:
            doctor.log(loss=loss)


def record_fault(tmp_path, block_insert, steps=8, model=None):
    torch.manual_seed(0)
    model = model or ResidualMLP(depth=4)
    if block_insert is not None:
        model.blocks[2].branch.insert(2, block_insert)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "nf.pt") as doctor:
        for _ in range(steps):
            doctor.log(loss=mlp_step(model, opt, x, y))
    return resdoctor.load(tmp_path / "nf.pt")


def test_forward_nan_onset_is_exact(tmp_path):
    run = record_fault(tmp_path, ForwardNaN(at=5))
    first = run.nonfinite.iloc[0]
    assert (first.step, first.module, first.phase) == (5, "blocks.2.branch.2", "forward")


def test_backward_nan_onset_is_backward_at_that_block_and_step(tmp_path):
    run = record_fault(tmp_path, BackwardNaN(at=4))
    first = run.nonfinite.iloc[0]
    assert (first.step, first.module, first.phase) == (4, "blocks.2.branch.2", "backward")
    assert not ((run.nonfinite.step == 4) & (run.nonfinite.phase == "forward")).any()


def test_functional_nan_inside_a_block_is_located_at_the_block(tmp_path):
    model = ResidualMLP(depth=4)
    model.blocks[1] = LogBlock(64, at=3)
    run = record_fault(tmp_path, None, model=model)
    first = run.nonfinite.iloc[0]
    assert (first.step, first.module, first.phase) == (3, "blocks.1", "forward")


def test_optimizer_made_nonfinite_parameters(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "o.pt") as doctor:
        for step in range(4):
            if step == 2:
                opt.param_groups[0]["lr"] = float("inf")
            doctor.log(loss=mlp_step(model, opt, x, y))
    first = resdoctor.load(tmp_path / "o.pt").nonfinite.iloc[0]
    assert (first.step, first.phase) == (2, "optimizer")


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    with resdoctor.watch(model, opt, tmp_path / "acc.pt") as doctor:
        for _step in range(3):
            opt.zero_grad()
            for _micro in range(4):
                x, y = data()
                loss = F.mse_loss(model(x), y) / 4
                loss.backward()
                doctor.log(loss=loss * 4)  # logged every micro-batch
            opt.step()
            doctor.log(loss=loss * 4)
    run = resdoctor.load(tmp_path / "acc.pt")
    assert run.steps == 3
    assert len(run.scalar("loss")) == 3
    assert len(run.skipped_steps) == 0


def test_without_optimizer_each_log_is_a_step(tmp_path):
    model = ResidualMLP(depth=2)
    x, y = data()
    with resdoctor.watch(model, path=tmp_path / "n.pt") as doctor:
        for _ in range(5):
            F.mse_loss(model(x), y).backward()
            doctor.log(loss=1.0)
    assert resdoctor.load(tmp_path / "n.pt").steps == 5


def test_without_log_the_next_forward_ends_the_step(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "nolog.pt"):
        for _ in range(6):
            mlp_step(model, opt, x, y)
    run = resdoctor.load(tmp_path / "nolog.pt")
    assert run.steps == 6 and len(run.series("grad_norm")) == 6


def _amp_steps(model, opt, scaler, doctor, x, y, steps, loss_scale=1.0, on_step=None):
    """A GradScaler loop; returns the steps it skipped (it lowers its scale exactly then)."""
    truth = []
    for step in range(steps):
        if on_step is not None:
            on_step(0, step)
        opt.zero_grad()
        loss = F.mse_loss(model(x), y) * loss_scale
        scaler.scale(loss).backward()
        before = scaler.get_scale()
        scaler.step(opt)
        scaler.update()
        if scaler.get_scale() < before:
            truth.append(step)
        doctor.log(loss=loss)
    return truth


def test_gradscaler_skipped_steps_are_recorded_as_skipped(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    # 2**127 x gradients of ~1e3 overflow float32; each skip divides the scale by 2**10
    scaler = torch.amp.GradScaler(
        "cpu", init_scale=2.0**127, growth_interval=1000, backoff_factor=2.0**-10
    )
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "amp.pt", scaler=scaler) as doctor:
        truth = _amp_steps(model, opt, scaler, doctor, x, y, 12, loss_scale=1e3)
    run = resdoctor.load(tmp_path / "amp.pt")
    assert run.steps == 12
    assert truth and len(truth) < 12
    assert [int(s) for s in run.skipped_steps] == truth
    assert not run.nonfinite[~run.nonfinite.detail.map(lambda d: d["amp_skipped"])].shape[0]
    # gradient norms are unscaled: the first stepped iteration (scale 1.7e35) shows the real
    # magnitude, not the scaled one
    stepped = min(set(range(12)) - set(truth))
    assert run.scalar("grad_norm_total")[stepped] < 1e8


def test_a_skipped_step_whose_gradients_hold_only_minus_inf_is_not_merged(tmp_path):
    """An fp16 overflow can leave -inf and no NaN/+inf in a gradient: the step the GradScaler
    skipped must still be one skipped step, not folded into the next as an accumulation
    micro-step (the fused check reads max |g|, not max g)."""
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    bad_steps = {2, 5}
    step_now = [0]
    weight = model.head.weight

    def overflow(g: torch.Tensor) -> torch.Tensor:  # one -inf among finite values
        if step_now[0] not in bad_steps:
            return g
        g = g.abs() + 1.0
        g.view(-1)[0] = -math.inf
        return g

    weight.register_hook(overflow)
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "neg.pt", scaler=scaler) as doctor:
        truth = _amp_steps(model, opt, scaler, doctor, x, y, 8, on_step=step_now.__setitem__)
    run = resdoctor.load(tmp_path / "neg.pt")
    assert truth == sorted(bad_steps)
    assert run.steps == 8 and [int(s) for s in run.skipped_steps] == truth
    assert run.scalar("loss").index.tolist() == list(range(8))


def test_errors_inside_resdoctor_are_recorded_not_raised(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "e.pt", smoothing_every=1) as doctor:

        def broken(_x):
            raise RuntimeError("sensor bug")

        doctor.recorder.smoothing = broken
        for _ in range(4):
            doctor.log(loss=mlp_step(model, opt, x, y))
    errors = resdoctor.load(tmp_path / "e.pt").errors
    bugs = errors[errors["type"] == "RuntimeError"]
    assert len(bugs) and bugs["count"].sum() >= 3  # the traced step's too: "smoothing"


def test_unknown_option_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="smoothing_evry"):
        resdoctor.watch(ResidualMLP(depth=1), path=tmp_path / "x.pt", smoothing_evry=3)


def test_validation_forwards_under_no_grad_are_not_recorded(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "v.pt") as doctor:
        for _ in range(3):
            doctor.log(loss=mlp_step(model, opt, x, y))
            with torch.no_grad():
                model(x * 1e30)  # would be a huge activation if it were recorded
    run = resdoctor.load(tmp_path / "v.pt")
    assert run.steps == 3 and run.series("stream_norm").max().max() < 1e3


def test_a_bug_in_discovery_is_recorded_and_training_goes_on(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = data()
    twin = copy.deepcopy(model)
    doctor = resdoctor.watch(model, opt, tmp_path / "t.pt")

    def broken(*args, **kwargs):
        raise RuntimeError("tracer bug")

    import resdoctor.recording.trace as trace

    original = trace.Tracer._on_add
    trace.Tracer._on_add = broken
    try:
        for _ in range(3):
            doctor.log(loss=mlp_step(model, opt, x, y))
    finally:
        trace.Tracer._on_add = original
        doctor.close()
    run = resdoctor.load(tmp_path / "t.pt")
    assert run.steps == 3 and run.errors.iloc[0]["where"] == "discovery"
    assert len(run.sites) == 0
    opt2 = torch.optim.SGD(twin.parameters(), 0.01)
    for _ in range(3):
        mlp_step(twin, opt2, x, y)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_an_unassigned_watcher_keeps_recording_until_exit(tmp_path):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import gc, torch, torch.nn.functional as F, resdoctor
        from resdoctor.models import ResidualMLP
        model = ResidualMLP(depth=2)
        opt = torch.optim.SGD(model.parameters(), 0.01)
        resdoctor.watch(model, opt, {str(tmp_path / "u.pt")!r}, flush_every=0, flush_seconds=0)
        gc.collect()
        x, y = torch.randn(8, 16), torch.randn(8, 1)
        for _ in range(7):
            opt.zero_grad(); F.mse_loss(model(x), y).backward(); opt.step()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    run = resdoctor.load(tmp_path / "u.pt")  # written at interpreter exit
    assert run.steps == 7


class Amplify(nn.Module):
    """Multiplies by 1e18: with an input RMS ~1 the output is huge but finite in float32."""

    def forward(self, x):
        return x * 1e18


def test_regression_huge_finite_activations_are_not_called_nonfinite(tmp_path):
    # Bug: the non-finite check used an fp32 L2 norm, whose sum of squares overflows for
    # finite values above ~1e19, so an exploding (still finite) layer was reported as the NaN
    # onset many steps early. The check now uses min/max, which cannot overflow.
    model = ResidualMLP(depth=2)
    model.blocks[0].branch.insert(2, Amplify())
    x, y = data()
    with resdoctor.watch(model, path=tmp_path / "huge.pt") as doctor:
        out = model(x)
        assert torch.isfinite(out).all() and out.abs().max() > 1e17
        out.sum().backward()
        doctor.log()
    run = resdoctor.load(tmp_path / "huge.pt")
    assert run.nonfinite.empty
    assert len(run.skipped_steps) == 0


def test_regression_huge_finite_gradients_are_not_called_nonfinite(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.0)
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "hugegrad.pt") as doctor:
        opt.zero_grad()
        (F.mse_loss(model(x), y) * 1e25).backward()  # gradient norms ~1e25: finite, > 1.8e19
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
        doctor.log()
    run = resdoctor.load(tmp_path / "hugegrad.pt")
    assert run.nonfinite.empty and len(run.skipped_steps) == 0


# -- regressions of issue 13 ---------------------------------------------------------------------
def test_regression_a_first_forward_that_raises_does_not_leave_discovery_incomplete(tmp_path):
    model = ResidualMLP(depth=2)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = data()
    calls = {"n": 0}
    real = model.blocks[1].forward

    def flaky(*args, **kwargs):  # the first forward raises inside the second block
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("bad first batch")
        return real(*args, **kwargs)

    model.blocks[1].forward = flaky
    full = len(resdoctor.discover(ResidualMLP(depth=2), x))
    with resdoctor.watch(model, opt, tmp_path / "r.pt") as doctor:
        with pytest.raises(RuntimeError):
            mlp_step(model, opt, x, y)
        for _ in range(3):
            doctor.log(loss=mlp_step(model, opt, x, y))
    run = resdoctor.load(tmp_path / "r.pt")
    assert full == 2 and len(run.sites) == full
    assert run.series("branch_ratio").notna().all().all()


def test_regression_record_eval_does_not_average_validation_into_the_step(tmp_path):
    torch.manual_seed(0)
    x, y = data()
    big = torch.randn(64, 16) * 50  # a validation batch at a very different scale

    def record(path, validate):
        torch.manual_seed(0)
        model = ResidualMLP(depth=2)
        opt = torch.optim.SGD(model.parameters(), 0.01)
        with resdoctor.watch(model, opt, path, record_eval=True) as doctor:
            for _ in range(3):
                loss = mlp_step(model, opt, x, y)
                if validate:
                    with torch.no_grad():
                        model(big)
                doctor.log(loss=loss)
        return resdoctor.load(path).series("skip_norm")

    plain, validated = record(tmp_path / "a.pt", False), record(tmp_path / "b.pt", True)
    assert torch.allclose(torch.tensor(plain.to_numpy()), torch.tensor(validated.to_numpy()))


def test_regression_rules_rule_works_after_a_plain_import():
    import subprocess
    import sys

    code = (
        "import resdoctor\n"
        "@resdoctor.rules.rule('my-check', requires=('grad_norm',))\n"
        "def my_check(run):\n    return []\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_regression_options_object_is_accepted_and_keywords_win(tmp_path):
    model = ResidualMLP(depth=2)
    opts = resdoctor.Options(smoothing_every=3, update_every=7)
    with resdoctor.watch(model, None, tmp_path / "o.pt", options=opts, update_every=2) as doc:
        assert doc.options.smoothing_every == 3 and doc.options.update_every == 2
    with resdoctor.Watcher(model, None, tmp_path / "p.pt", options=opts) as doc:
        assert doc.options == opts


def test_regression_watcher_takes_what_watch_takes(tmp_path):
    model = ResidualMLP(depth=2)
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="attribute_inputs"):  # parsed, not rejected as unknown
        resdoctor.Watcher(model, None, tmp_path / "w.pt", attribute_every=2)
    assert hooks_left(model) == 0
    pytest.importorskip("captum")
    with resdoctor.Watcher(
        model, None, tmp_path / "w.pt", attribute_every=1, attribute_inputs=x
    ) as doc:
        assert [type(i).__name__ for i in doc.integrations] == ["AttributionMonitor", "Announcer"]
        model(x).sum().backward()
        doc.log()
    assert resdoctor.load(tmp_path / "w.pt").has("attribution_share")


def test_regression_sites_false_runs_no_discovery(tmp_path, monkeypatch):
    from resdoctor.recording import trace

    seen = []
    real = trace.Tracer.__torch_function__

    def spy(self, func, types, args=(), kwargs=None):
        seen.append(getattr(func, "__name__", ""))
        return real(self, func, types, args, kwargs)

    monkeypatch.setattr(trace.Tracer, "__torch_function__", spy)
    model = ResidualMLP(depth=3)
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = data()
    with resdoctor.watch(model, opt, tmp_path / "s.pt", sites=False) as doctor:
        for _ in range(2):
            doctor.log(loss=mlp_step(model, opt, x, y))
        assert doctor.sites == []
    run = resdoctor.load(tmp_path / "s.pt")
    assert run.sites.empty and (run.modules["order"] >= 0).any()  # forward order still known
    assert not any(name in ("add", "__add__", "linear") for name in seen)


def test_regression_step_0_gets_site_signals_without_example_inputs(tmp_path):
    """Issue 14: the discovery forward is a training step too: its sites are measured."""
    model = ResNet((1, 1), "basic", (8, 16))
    opt = torch.optim.SGD(model.parameters(), 0.01)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    with resdoctor.watch(model, opt, tmp_path / "r.pt") as doctor:
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            doctor.log()
    ratio = resdoctor.load(tmp_path / "r.pt").series("branch_ratio")
    assert ratio.index[0] == 0 and ratio.loc[0].notna().all()
    # the same values the site sensors read at step 1 (same input, tiny SGD step): same scale
    assert ((ratio.loc[0] / ratio.loc[1]).between(0.8, 1.25)).all()


# -- several optimizers (issue 15) -----------------------------------------------------------
def _two_part_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 1))


def _train_two(model, optimizers, doctor, steps=3):
    x, y = data()
    for _ in range(steps):
        for o in optimizers:
            o.zero_grad()
        F.mse_loss(model(x), y).backward()
        for o in optimizers:
            o.step()
        doctor.log()


def test_regression_several_optimizers_are_one_step_and_each_is_measured(tmp_path):
    model = _two_part_model()
    o1 = torch.optim.SGD(model[0].parameters(), 0.1)
    o2 = torch.optim.Adam(model[2].parameters(), 1e-2)
    with resdoctor.watch(model, [o1, o2], tmp_path / "two.pt", update_every=1) as doctor:
        _train_two(model, [o1, o2], doctor)
    run = resdoctor.load(tmp_path / "two.pt")
    ratio = run.series("update_ratio")
    assert run.steps == 3 and (ratio > 0).all().all()  # o2's parameters too, not 0.0


def test_regression_parameters_no_watched_optimizer_steps_are_not_measured(tmp_path):
    model = _two_part_model()
    o1 = torch.optim.SGD(model[0].parameters(), 0.1)
    o2 = torch.optim.Adam(model[2].parameters(), 1e-2)
    with resdoctor.watch(model, o1, tmp_path / "one.pt", update_every=1) as doctor:
        _train_two(model, [o1, o2], doctor)
    ratio = resdoctor.load(tmp_path / "one.pt").series("update_ratio")
    assert (ratio["0"] > 0).all() and ratio["2"].isna().all()  # NaN: not measured, never 0.0


def test_regression_a_bad_optimizer_argument_leaves_no_hook(tmp_path):
    model = _two_part_model()
    o1 = torch.optim.SGD(model.parameters(), 0.1)
    with pytest.raises(TypeError, match="optimizer"):
        resdoctor.watch(model, [o1, "not an optimizer"], tmp_path / "bad.pt")
    assert hooks_left(model) == 0
    assert not o1._optimizer_step_pre_hooks and not o1._optimizer_step_post_hooks


def test_heard_while_training_the_first_nan_and_the_verdict(tmp_path, caplog):
    """Issue 16 (part): one log line at the first NaN/Inf onset, one verdict at close."""
    import logging

    x, y = data()
    for quiet in (False, True):
        caplog.clear()
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, 16), ForwardNaN(at=3), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), 0.01)
        path = tmp_path / f"q{quiet}.pt"
        with caplog.at_level(logging.INFO, logger="resdoctor"):
            heard = []  # the step after whose log() the NaN line had been logged
            with resdoctor.watch(model, opt, path, quiet=quiet) as doctor:
                for step in range(6):
                    doctor.log(loss=mlp_step(model, opt, x, y))
                    if not heard and any("NaN/Inf" in r.getMessage() for r in caplog.records):
                        heard.append(step)
        lines = [r.getMessage() for r in caplog.records if r.name == "resdoctor"]
        if quiet:
            assert lines == []
            continue
        assert len(lines) == 2, lines
        assert (
            lines[0]
            == f"resdoctor: NaN/Inf at step 3 in 1 (forward); run: resdoctor analyze {path}"
        )
        assert heard == [3]  # as it happens: not when the next batch of steps is folded in
        assert lines[1].startswith("resdoctor: CRITICAL after 6 steps: NaN/Inf at step 3")
