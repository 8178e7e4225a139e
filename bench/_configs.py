"""The configurations the overhead benchmark alternates, each set up and torn down cleanly.

A configuration wraps the plain training step: ``setup()`` installs its instrumentation,
``after_step()`` runs whatever the user adds to the loop (``doctor.log``, ``run.log``),
``teardown()`` removes everything. ``hook_census()`` counts every hook torch can hold, so the
benchmark proves that nothing survives a teardown.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench._workloads import Workload

CONFIGS = ("plain", "resdoctor", "resdoctor-all", "wandb", "anomaly", "naive")
TITLES = {
    "plain": "plain training",
    "resdoctor": "resdoctor.watch (defaults)",
    "resdoctor-all": "resdoctor.watch (every signal every step)",
    "wandb": 'wandb.watch(log="gradients", log_freq=1), offline',
    "anomaly": "torch.autograd.set_detect_anomaly(True)",
    "naive": "naive hooks with .item() per norm",
}
_MODULE_HOOKS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


class Config:
    """Plain training: no instrumentation. Subclasses add theirs."""

    name = "plain"

    def setup(self, work: Workload, tmp: Path) -> None:
        """Install the instrumentation on ``work`` (files go under ``tmp``)."""

    def after_step(self, loss: torch.Tensor) -> None:
        """What the training loop adds after ``optimizer.step()``."""

    def step_context(self) -> contextlib.AbstractContextManager[Any]:
        """Entered around each watched step (for process-wide switches such as anomaly mode)."""
        return contextlib.nullcontext()

    def teardown(self) -> None:
        """Remove everything ``setup`` installed."""


class Resdoctor(Config):
    """``resdoctor.watch`` with the given options; ``doctor.log(loss=...)`` every step."""

    def __init__(self, name: str = "resdoctor", **options: Any) -> None:
        self.name, self.options = name, options
        self.doctor: Any = None
        self._runs = 0

    def setup(self, work: Workload, tmp: Path) -> None:
        import resdoctor

        self._runs += 1
        path = tmp / f"resdoctor-{id(self)}-{self._runs}.pt"
        self.doctor = resdoctor.watch(
            work.model, optimizer=work.optimizer, path=path, **self.options
        )

    def after_step(self, loss: torch.Tensor) -> None:
        self.doctor.log(loss=loss)

    def teardown(self) -> None:
        doctor, self.doctor = self.doctor, None
        if doctor is not None:
            doctor.close()


class Wandb(Config):
    """``wandb.watch(model, log="gradients", log_freq=1)`` in offline mode; ``run.log`` per step.

    The run is created once per process (``wandb.init`` is not a per-step cost) and finished by
    ``finish()``; each round watches and unwatches the model.
    """

    name = "wandb"
    _run: Any = None
    _dir: str | None = None

    def setup(self, work: Workload, tmp: Path) -> None:
        if Wandb._run is None:
            os.environ.setdefault("WANDB_MODE", "offline")
            os.environ.setdefault("WANDB_SILENT", "true")
            import wandb

            Wandb._dir = tempfile.mkdtemp(prefix="resdoctor-bench-wandb-")
            Wandb._run = wandb.init(
                mode="offline",
                dir=Wandb._dir,
                project="resdoctor-bench",
                settings=wandb.Settings(silent=True, console="off"),
            )
        self.model = work.model
        Wandb._run.watch(work.model, log="gradients", log_freq=1)

    def after_step(self, loss: torch.Tensor) -> None:
        # commits the histograms the hooks queued (they log with commit=False)
        Wandb._run.log({"loss": float(loss)})

    def teardown(self) -> None:
        Wandb._run.unwatch(self.model)

    @classmethod
    def finish(cls) -> None:
        if cls._run is not None:
            run, cls._run = cls._run, None
            run.finish()
        if cls._dir is not None:
            shutil.rmtree(cls._dir, ignore_errors=True)
            cls._dir = None


class Anomaly(Config):
    """``torch.autograd.set_detect_anomaly(True)`` for each watched step (on around the step and
    off after it, so the plain twin model's steps run without it)."""

    name = "anomaly"

    def step_context(self) -> contextlib.AbstractContextManager[Any]:
        return _anomaly()

    def teardown(self) -> None:
        torch.autograd.set_detect_anomaly(False)


@contextlib.contextmanager
def _anomaly() -> Iterator[None]:
    torch.autograd.set_detect_anomaly(True)
    try:
        yield
    finally:
        torch.autograd.set_detect_anomaly(False)


class Naive(Config):
    """What one writes by hand: a forward hook per module storing ``out.norm().item()`` and a
    tensor hook per parameter storing ``grad.norm().item()`` (one host sync per norm)."""

    name = "naive"

    def setup(self, work: Workload, tmp: Path) -> None:
        self.values: dict[str, float] = {}
        self.handles: list[Any] = []
        for name, module in work.model.named_modules():
            self.handles.append(module.register_forward_hook(functools.partial(self._out, name)))
        for name, p in work.model.named_parameters():
            if p.requires_grad:
                self.handles.append(p.register_hook(functools.partial(self._grad, name)))

    def _out(self, name: str, module: nn.Module, args: Any, output: Any) -> None:
        t = _first_tensor(output)
        if t is not None and t.is_floating_point():
            self.values["out/" + name] = t.detach().norm().item()

    def _grad(self, name: str, grad: torch.Tensor) -> None:
        self.values["grad/" + name] = grad.norm().item()

    def teardown(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def make(name: str) -> Config:
    """The configuration called ``name``: one of ``CONFIGS``, or ``resdoctor:opt=value,...``
    for resdoctor with other options (``resdoctor:nonfinite=False,sites=False``)."""
    if name.startswith("resdoctor:"):
        return Resdoctor(name, **_options(name.split(":", 1)[1]))
    if name == "plain":
        return Config()
    if name == "resdoctor":
        return Resdoctor()
    if name == "resdoctor-all":
        return Resdoctor("resdoctor-all", smoothing_every=1, update_every=1, grad_share_every=1)
    factories = {"wandb": Wandb, "anomaly": Anomaly, "naive": Naive}
    if name not in factories:
        raise ValueError(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
    return factories[name]()


def _options(text: str) -> dict[str, Any]:
    import ast

    out = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = ast.literal_eval(value.strip())
    return out


def hook_census(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> Counter:
    """Every hook and mode that could make one configuration leak into the next."""
    import torch.nn.modules.module as module_globals
    import torch.optim.optimizer as optim_globals

    counts: Counter = Counter()
    for module in model.modules():
        for attr in _MODULE_HOOKS:
            counts[attr] += len(getattr(module, attr, None) or {})
        counts["module_attributes"] += len(vars(module))
    for p in model.parameters():
        counts["param_backward_hooks"] += len(p._backward_hooks or {})
        counts["param_post_accumulate_hooks"] += len(
            getattr(p, "_post_accumulate_grad_hooks", None) or {}
        )
    if optimizer is not None:
        counts["optimizer_step_pre_hooks"] += len(optimizer._optimizer_step_pre_hooks)
        counts["optimizer_step_post_hooks"] += len(optimizer._optimizer_step_post_hooks)
    for attr in dir(module_globals):
        if attr.startswith("_global_") and attr.endswith("hooks"):
            counts["global" + attr] += len(getattr(module_globals, attr))
    for attr in ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks"):
        counts["global" + attr] += len(getattr(optim_globals, attr, {}))
    counts["anomaly_mode"] += int(torch.is_anomaly_enabled())
    counts["torch_function_modes"] += torch._C._len_torch_function_stack()
    counts["grad_enabled"] += int(torch.is_grad_enabled())
    return counts


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        for item in x:
            t = _first_tensor(item)
            if t is not None:
                return t
    return None
