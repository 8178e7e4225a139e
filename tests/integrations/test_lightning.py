"""ResDoctorCallback in a real Lightning Trainer (CPU, a few steps, gradient accumulation)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import resdoctor
from resdoctor.models import ResidualMLP

L = pytest.importorskip("lightning.pytorch")
from resdoctor.integrations.lightning import ResDoctorCallback  # noqa: E402

ACCUMULATE, STEPS = 2, 4


class Regression(L.LightningModule):
    """training_step calls ``self.net`` directly, never ``self(...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = ResidualMLP(d_in=8, dim=16, depth=2)
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.losses.append(float(loss.detach()))
        return {"loss": loss}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def hook_count(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def fit(tmp_path, **trainer_kwargs) -> tuple[Regression, L.Trainer, ResDoctorCallback]:
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    module = Regression()
    callback = ResDoctorCallback(path=str(tmp_path / "run.pt"), flush_seconds=0)
    trainer_kwargs.setdefault("logger", False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=STEPS,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        accumulate_grad_batches=ACCUMULATE,
        **trainer_kwargs,
    )
    trainer.fit(module, loader)
    return module, trainer, callback


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lightning")
    before = hook_count(Regression())
    module, trainer, callback = fit(tmp)
    return module, trainer, callback, resdoctor.load(tmp / "run.pt"), before


def test_steps_are_optimizer_steps(fitted) -> None:
    module, trainer, _, run, _ = fitted
    assert trainer.global_step == STEPS
    assert len(module.losses) == STEPS * ACCUMULATE
    assert run.steps == STEPS
    assert list(run.series("grad_norm").index) == list(range(STEPS))


def test_loss_is_the_training_step_loss_undivided(fitted) -> None:
    module, _, _, run, _ = fitted
    expected = np.array(module.losses).reshape(STEPS, ACCUMULATE).mean(axis=1)
    np.testing.assert_allclose(run.scalar("loss").to_numpy(), expected, rtol=1e-5)


def test_submodules_recorded_without_self_call(fitted) -> None:
    _, _, _, run, _ = fitted
    assert len(run.sites) == 2  # the two residual blocks of self.net
    ratios = run.series("branch_ratio")
    assert ratios.shape == (STEPS, 2) and np.isfinite(ratios.to_numpy()).all()
    assert np.isfinite(run.series("grad_norm").to_numpy()).all()
    assert run.errors.empty


def test_no_hooks_remain_after_fit(fitted) -> None:
    module, trainer, callback, _, before = fitted
    assert callback.watcher is not None and callback.watcher.closed
    assert hook_count(module) == before
    opt = trainer.optimizers[0]
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_gradscaler_passed_on_and_skips_counted(fitted, tmp_path) -> None:
    """fp16 with a real CPU GradScaler: norms are unscaled, overflow steps are skipped steps."""
    from lightning.pytorch.plugins import MixedPrecision

    init = 2.0**16
    scaler = torch.amp.GradScaler("cpu", init_scale=init)
    _, trainer, callback = fit(tmp_path, plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    run = resdoctor.load(tmp_path / "run.pt")
    assert callback.watcher is not None and callback.watcher.recorder.scaler is scaler
    assert run.steps == trainer.global_step == STEPS
    halvings = round(np.log2(init / scaler.get_scale()))  # each overflow halves the scale
    assert halvings >= 1  # this seed overflows once: the skip path is exercised
    assert len(run.skipped_steps) == halvings
    fp32 = fitted[3].series("grad_norm").iloc[0]  # same data and init in float32
    np.testing.assert_allclose(run.series("grad_norm").iloc[0], fp32, rtol=0.02)


def test_unknown_option_fails_at_construction() -> None:
    with pytest.raises(TypeError, match="unknown watch"):
        ResDoctorCallback(path="x.pt", not_an_option=1)


def test_a_resdoctor_failure_does_not_stop_training(tmp_path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.warns(UserWarning, match="resdoctor: could not write"):
        _, trainer, callback = fit(blocker / "sub")  # run.pt cannot be written there
    assert trainer.global_step == STEPS and callback.watcher.closed


def test_the_trainers_tensorboard_logger_gets_the_signals(tmp_path) -> None:
    """Issue 17: Lightning users get TensorBoard through their existing logger."""
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path / "tb"), name="exp")
    fit(tmp_path, logger=logger)
    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "resdoctor/loss" in tags and "resdoctor.grad_norm/net.head" in tags
    assert "resdoctor/report" in " ".join(acc.Tags()["tensors"])
