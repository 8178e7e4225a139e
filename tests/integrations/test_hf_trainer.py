"""ResDoctorCallback in a real Hugging Face Trainer: a tiny GPT-2 on random tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import resdoctor

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from resdoctor.integrations.hf import ResDoctorCallback  # noqa: E402

ACCUMULATE, STEPS, LOGGING = 2, 6, 2


def hook_count(module: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in module.modules()
    )


def tiny_gpt2() -> nn.Module:
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def train(tmp, **args_kwargs):
    torch.manual_seed(0)
    model = tiny_gpt2()
    before = hook_count(model)
    tokens = torch.randint(0, 64, (48, 16))
    data = [{"input_ids": t, "labels": t} for t in tokens]
    args = transformers.TrainingArguments(
        output_dir=str(tmp / "out"),
        per_device_train_batch_size=2,
        max_steps=STEPS,
        gradient_accumulation_steps=ACCUMULATE,
        logging_steps=LOGGING,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **args_kwargs,
    )
    callback = ResDoctorCallback(path=str(tmp / "run.pt"), flush_seconds=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    return model, trainer, callback, resdoctor.load(tmp / "run.pt"), before


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train(tmp_path_factory.mktemp("hf"), use_cpu=True)


def test_steps_are_optimizer_steps(trained) -> None:
    _, trainer, _, run, _ = trained
    assert trainer.state.global_step == STEPS
    assert run.steps == STEPS  # 12 micro-batches folded into 6 optimizer steps
    grads = run.series("grad_norm")
    assert list(grads.index) == list(range(STEPS))
    assert np.isfinite(grads.to_numpy()).all() and (grads.to_numpy() > 0).any()


def test_loss_is_the_trainers_logged_loss(trained) -> None:
    _, trainer, _, run, _ = trained
    logged = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    assert sorted(logged) == list(range(LOGGING, STEPS + 1, LOGGING))
    loss = run.scalar("loss")
    assert list(loss.index) == [s - 1 for s in sorted(logged)]  # global_step s is step s - 1
    np.testing.assert_allclose(loss.to_numpy(), [logged[s] for s in sorted(logged)], rtol=1e-6)


def test_gpt2_sites_and_learning_rate_recorded(trained) -> None:
    _, trainer, _, run, _ = trained
    assert len(run.sites) == 4  # two residual additions per GPT-2 block
    assert np.isfinite(run.series("branch_ratio").to_numpy()).all()
    lr = run.scalar("lr").to_numpy()
    assert len(lr) == STEPS and lr[0] == pytest.approx(1e-3) and lr[-1] < lr[0]  # linear decay
    assert run.errors.empty


def test_no_hooks_remain_after_training(trained) -> None:
    model, trainer, callback, _, before = trained
    assert callback.watcher is not None and callback.watcher.closed
    assert hook_count(model) == before
    opt = callback.watcher.recorder.optimizer
    assert isinstance(opt, torch.optim.AdamW)  # unwrapped from Accelerate's optimizer
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_unknown_option_fails_at_construction() -> None:
    with pytest.raises(TypeError, match="unknown watch"):
        ResDoctorCallback(path="x.pt", not_an_option=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 training needs a CUDA device")
def test_fp16_gradscaler_passed_on(tmp_path) -> None:
    _, trainer, callback, run, _ = train(tmp_path, fp16=True)
    scaler = trainer.accelerator.scaler
    assert scaler is not None and callback.watcher.recorder.scaler is scaler
    assert run.steps == trainer.state.global_step == STEPS
    grads = run.series("grad_norm").to_numpy()
    finite = grads[np.isfinite(grads).all(axis=1)]
    assert len(finite) and finite.max() < 1e3  # unscaled: the loss scale (2^16) is divided out
