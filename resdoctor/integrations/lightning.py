"""Lightning: record a ``Trainer.fit`` with one line (needs ``pip install resdoctor[lightning]``).

    trainer = L.Trainer(..., callbacks=[ResDoctorCallback(path="run.pt")])

A step is one optimizer step (``trainer.global_step``): with ``accumulate_grad_batches=N`` the N
batches fold into it. The loss is what ``training_step`` returns (un-divided by N), else
``train_loss`` / ``loss`` from ``self.log``. Under AMP the precision plugin's GradScaler is passed
on, so gradient norms are unscaled and overflow steps are recorded as skipped. Under DDP / FSDP
every rank records ``run.rank{r}.pt`` and rank 0 writes the merged ``run.pt`` at the end of fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch

from resdoctor.recording.watcher import Watcher, watch

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the standalone package
    try:
        from pytorch_lightning.callbacks import Callback  # type: ignore[assignment]
    except ImportError as e:
        raise ImportError(
            "resdoctor.integrations.lightning needs Lightning: pip install resdoctor[lightning]"
        ) from e

from resdoctor.integrations._callback import check_options, safe_hook  # noqa: E402
from resdoctor.recording.integration import Context  # noqa: E402

__all__ = ["ResDoctorCallback"]

_safe = safe_hook("lightning")


class ResDoctorCallback(Callback):
    """Watches the LightningModule during ``fit``; options are ``resdoctor.watch``'s."""

    def __init__(self, path: str = "run.pt", **watch_options: Any) -> None:
        check_options(watch_options)
        self.path = path
        self.watch_options = watch_options
        self.watcher: Watcher | None = None
        self._forward_open = False
        self._losses: list[torch.Tensor | float] = []  # micro-batches of the current step
        self._global_step = 0

    @_safe
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        optimizers = list(trainer.optimizers)
        options = dict(self.watch_options)
        options.setdefault("scaler", getattr(trainer.precision_plugin, "scaler", None))
        if "tensorboard" not in options:  # the trainer's own TensorBoard writer, when it has one
            options["tensorboard"] = _tensorboard_writer(trainer)
        try:
            self.watcher = watch(
                pl_module,
                optimizer=optimizers or None,  # every optimizer of the module
                path=self.path,
                **options,
            )
        except Exception as e:  # noqa: BLE001 - a resdoctor failure must not stop training
            warnings.warn(f"resdoctor: not recording this fit: {e}", stacklevel=2)

    # training_step need not call self(...): the callback opens the module's forward itself, so
    # the recorder sees every submodule call from the batch start to the loss
    @_safe
    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        self._global_step = trainer.global_step
        ctx = self._context()
        if ctx is not None and not self._forward_open:
            self._forward_open = True
            ctx.begin_forward()

    @_safe
    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self._close_forward(pl_module, loss)

    @_safe
    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._close_forward(pl_module, None)
        if self.watcher is None:
            return
        loss = _loss(outputs, trainer, pl_module)
        if loss is not None:
            self._losses.append(loss)
        if trainer.global_step == self._global_step:
            return  # an accumulation micro-batch: the step goes on (a skipped AMP step counts)
        losses, self._losses = self._losses, []
        mean = sum(losses) / len(losses) if losses else None  # tensors: no device sync
        self.watcher.log(**({"loss": mean} if mean is not None else {}))

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.close()

    def close(self) -> None:
        """Write the run file and remove every hook (idempotent)."""
        if self.watcher is not None:
            self.watcher.close()

    def _context(self) -> Context | None:
        if self.watcher is None or self.watcher.closed:
            return None
        return self.watcher.context

    def _close_forward(self, pl_module: Any, output: Any) -> None:
        ctx = self._context()
        if ctx is not None and self._forward_open:
            self._forward_open = False
            ctx.end_forward(output)


def _tensorboard_writer(trainer: Any) -> Any:
    """The ``SummaryWriter`` of the trainer's ``TensorBoardLogger``, if it has one."""
    for logger in getattr(trainer, "loggers", None) or []:
        if type(logger).__name__ == "TensorBoardLogger":
            return logger.experiment
    return None


def _loss(outputs: Any, trainer: Any, pl_module: Any) -> torch.Tensor | float | None:
    """The batch loss without a device sync; Lightning divides it by the accumulation count."""
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        if getattr(pl_module, "automatic_optimization", True):
            loss = loss.detach() * trainer.accumulate_grad_batches
        return loss.detach().reshape(())
    metrics = trainer.callback_metrics
    for key in ("train_loss", "loss", "train_loss_step"):
        value = metrics.get(key)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.detach().reshape(())
    return None
