"""Hugging Face ``Trainer``: record a training run with one line (``pip install resdoctor[hf]``).

    trainer = Trainer(..., callbacks=[ResDoctorCallback(path="run.pt")])

A step is one optimizer step (``state.global_step``): with ``gradient_accumulation_steps=N`` the
N micro-batches fold into it. The loss is the Trainer's logged ``loss`` (its mean since the last
log), recorded at the steps the Trainer logs: ``logging_steps=1`` gives one value per step. Under
fp16 the Accelerate optimizer's GradScaler is passed on, so gradient norms are unscaled and
overflow steps are recorded as skipped. Under DDP / FSDP every rank records ``run.rank{r}.pt``
and rank 0 writes the merged ``run.pt`` at the end of training.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from resdoctor.recording.watcher import Watcher, watch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "resdoctor.integrations.hf needs transformers: pip install resdoctor[hf]"
    ) from e

from resdoctor.integrations._callback import check_options, safe_hook  # noqa: E402

__all__ = ["ResDoctorCallback"]

_safe = safe_hook("hf")


class ResDoctorCallback(TrainerCallback):
    """Watches the Trainer's model and optimizer; options are ``resdoctor.watch``'s."""

    def __init__(self, path: str = "run.pt", **watch_options: Any) -> None:
        check_options(watch_options)
        self.path = path
        self.watch_options = watch_options
        self.watcher: Watcher | None = None
        self._awaiting_log = False

    @_safe
    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        options = dict(self.watch_options)
        options.setdefault("scaler", getattr(optimizer, "scaler", None))
        try:
            self.watcher = watch(model, optimizer=_unwrap(optimizer), path=self.path, **options)
        except Exception as e:  # noqa: BLE001 - a resdoctor failure must not stop training
            warnings.warn(f"resdoctor: not recording this run: {e}", stacklevel=2)

    @_safe
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watcher is None:
            return
        if control.should_log:  # the Trainer logs this step next: take its loss in on_log
            self._awaiting_log = True
        else:
            self.watcher.log()

    @_safe
    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if self.watcher is None or not self._awaiting_log:
            return
        self._awaiting_log = False
        loss = (logs or {}).get("loss")
        self.watcher.log(**({"loss": loss} if isinstance(loss, (int, float)) else {}))

    @_safe
    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watcher is not None and self._awaiting_log:
            self._awaiting_log = False
            self.watcher.log()
        self.close()

    def close(self) -> None:
        """Write the run file and remove every hook (idempotent)."""
        if self.watcher is not None:
            self.watcher.close()


def _unwrap(optimizer: Any) -> torch.optim.Optimizer | None:
    """The torch optimizer inside Accelerate's ``AcceleratedOptimizer`` (its hooks fire there)."""
    for _ in range(4):  # wrappers of wrappers (Accelerate, DeepSpeed) end at a torch optimizer
        inner = getattr(optimizer, "optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer) or inner is optimizer:
            break
        optimizer = inner
    return optimizer
