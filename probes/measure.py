"""Direct measurement of a probe run with plain torch hooks and autograd, independent of resdoctor.

The measurer records, per step: the loss, each parameterised module's gradient norm, the first
non-finite onset found by brute force (forward: the innermost module whose output holds NaN/Inf
while its inputs were finite; backward: the module nearest the output, in forward order, whose
parameter gradients are non-finite; optimizer: a parameter that turns non-finite in the step),
and at each tapped residual addition ``‖branch‖ / ‖skip‖``, the RMS of ``skip + branch`` and the
mean pairwise cosine similarity of its positions. Labels (``probes.labels``) are computed from this.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class At:
    """A tensor at a module boundary: ``module``'s input or output number (or kwarg) ``index``."""

    module: str
    where: Literal["in", "out"] = "out"
    index: int | str = 0


@dataclass(frozen=True)
class SiteTap:
    """One residual addition ``skip + branch``. Give ``branch``, or ``result`` (the sum, so
    ``branch = result - skip``); ``skip=None`` taps a plain layer output (``branch``)."""

    name: str
    branch: At | None = None
    skip: At | None = None
    result: At | None = None

    @property
    def ats(self) -> tuple[At, ...]:
        return tuple(a for a in (self.branch, self.skip, self.result) if a is not None)


@dataclass(frozen=True)
class Onset:
    """The first non-finite value: step, module (dotted path) and phase."""

    step: int
    module: str
    phase: Literal["input", "forward", "loss", "backward", "optimizer"]


@dataclass
class Measurement:
    """Per-step arrays of one run (``nan`` where a value was not measured)."""

    modules: list[str]  # parameterised modules in forward order
    numel: list[int]
    sites: list[str]
    loss: list[float] = field(default_factory=list)
    grad: list[np.ndarray] = field(default_factory=list)  # [modules] per step
    ratio: list[np.ndarray] = field(default_factory=list)  # [sites] per step
    stream: list[np.ndarray] = field(default_factory=list)
    similarity: list[np.ndarray] = field(default_factory=list)
    act_grad: list[np.ndarray] = field(default_factory=list)  # ||dLoss/d(site output)||
    dead: list[float] = field(default_factory=list)  # per step: the largest dead-unit share
    # of any ReLU module (units that output 0 for the whole batch)
    saturated: list[float] = field(default_factory=list)  # per step: the largest share of a
    # sigmoid / tanh module's inputs beyond +-5
    half_peak: list[float] = field(default_factory=list)  # per step: the largest finite
    # |value| in any module's float16 output (nan: no float16 output)
    half_module: list[str] = field(default_factory=list)  # ... and the module that made it
    skipped: list[int] = field(default_factory=list)
    onset: Onset | None = None

    def array(self, name: str) -> np.ndarray:
        """``loss`` [steps], ``grad`` [steps, modules] or a site signal [steps, sites]."""
        rows = getattr(self, name)
        if name in ("loss", "dead", "saturated", "half_peak"):
            return np.asarray(rows, dtype=np.float64)
        width = len(self.modules) if name == "grad" else len(self.sites)
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)


def _pick(args: Any, kwargs: dict[str, Any], output: Any, at: At) -> torch.Tensor | None:
    if isinstance(at.index, str):
        value = kwargs.get(at.index)
    elif at.where == "out":
        value = output[at.index] if isinstance(output, (tuple, list)) else output
    else:
        value = args[at.index] if at.index < len(args) else None
    return value if isinstance(value, torch.Tensor) else None


def _floats(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _floats(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _floats(o)]
    return []


def _finite(obj: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in _floats(obj))


def _bad_argument(model: nn.Module, args: Any, kwargs: dict[str, Any]) -> str:
    """The name of the first model argument holding NaN/Inf (``args[i]`` when unnamed)."""
    names = [
        p.name
        for p in inspect.signature(model.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    for i, a in enumerate(args):
        if not _finite(a):
            return names[i] if i < len(names) else f"args[{i}]"
    return next((k for k, v in kwargs.items() if not _finite(v)), "?")


def rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def cosine_similarity(x: torch.Tensor, samples: int = 64) -> float:
    """Mean pairwise cosine similarity of positions: rows of [N, D], tokens of sample 0 of
    [B, T, D], spatial positions of sample 0 of [B, C, H, W]."""
    x = x.detach().float()
    if x.dim() == 4:
        x = x[0].flatten(1).T
    elif x.dim() == 3:
        x = x[0]
    x = x[:: max(1, -(-x.shape[0] // samples))]
    n = x.shape[0]
    unit = torch.nn.functional.normalize(x, dim=1)
    gram = unit @ unit.T
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


class Measurer:
    """Attach to a model for one run; the training loop calls ``after_backward``, ``after_step``
    and ``end_step``. ``smooth_every`` spaces the (costlier) similarity measurements."""

    def __init__(self, model: nn.Module, taps: list[SiteTap], smooth_every: int = 5) -> None:
        self.model, self.taps, self.smooth_every = model, taps, smooth_every
        named = [
            (n, m)
            for n, m in model.named_modules()
            if any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        self._params = {
            n: [p for p in m.parameters(recurse=False) if p.requires_grad] for n, m in named
        }
        self._order: list[str] = []
        self._forward_order: dict[str, int] = {}  # every module, by first forward completion
        self._bwd: dict[str, list[bool]] = {}  # name -> [output grad bad, input grad bad]
        self.m = Measurement([], [], [t.name for t in taps])
        self._handles: list[Any] = []
        self._values: dict[At, torch.Tensor] = {}
        self._inputs_ok: dict[str, list[bool]] = {}
        self._step = 0
        self._forward_bad = False
        self._grad_taps: dict[At, list[int]] = {}
        for i, t in enumerate(taps):  # the gradient at the site's output: result, else branch
            out = t.result or t.branch
            if out is not None:
                self._grad_taps.setdefault(out, []).append(i)
        self._act_grad = np.full(len(taps), np.nan)
        self._dead = float("nan")
        self._saturated = float("nan")
        self._half: tuple[float, str] = (float("nan"), "")
        self._attach()

    def _attach(self) -> None:
        wanted = {at for t in self.taps for at in t.ats}
        for module in self.model.modules():
            if isinstance(module, (nn.ReLU, nn.ReLU6)):
                self._handles.append(module.register_forward_hook(self._relu))
            if isinstance(module, (nn.Sigmoid, nn.Tanh)):
                self._handles.append(module.register_forward_hook(self._squash))
        for name, module in self.model.named_modules():
            ats = [a for a in wanted if a.module == name]
            self._handles.append(
                module.register_forward_pre_hook(self._pre(name, ats), with_kwargs=True)
            )
            self._handles.append(
                module.register_forward_hook(self._post(name, ats), with_kwargs=True)
            )

    def _relu(self, module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() >= 2 and output.numel():
            x = output.detach()
            unit = 1 if x.dim() == 4 else x.dim() - 1
            alive = (x > 0).movedim(unit, 0).reshape(x.shape[unit], -1).any(dim=1)
            share = 1.0 - float(alive.float().mean())
            self._dead = share if np.isnan(self._dead) else max(self._dead, share)

    def _squash(self, module: nn.Module, args: Any, output: Any) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].numel():
            share = float((args[0].detach().abs() > 5).float().mean())
            self._saturated = share if np.isnan(self._saturated) else max(self._saturated, share)

    def _pre(self, name: str, ats: list[At]) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any) -> None:
            if name == "" and self.m.onset is None and not _finite((args, kwargs)):
                self.m.onset = Onset(self._step, _bad_argument(module, args, kwargs), "input")
            self._inputs_ok.setdefault(name, []).append(_finite((args, kwargs)))
            self._watch_grads(name, (args, kwargs), 1)
            for at in ats:
                if at.where == "in" and (v := _pick(args, kwargs, None, at)) is not None:
                    self._keep(at, v)

        return hook

    def _keep(self, at: At, v: torch.Tensor) -> None:
        self._values[at] = v.detach().clone()  # e.g. ResNet's ``out += identity`` is in place
        for i in self._grad_taps.get(at, ()):
            if v.requires_grad:
                v.register_hook(self._grad_hook(i))

    def _grad_hook(self, i: int) -> Any:
        def hook(g: torch.Tensor) -> None:
            self._act_grad[i] = float(torch.linalg.vector_norm(g.detach().float()))

        return hook

    def _post(self, name: str, ats: list[At]) -> Any:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if name in self._params and name not in self._order:
                self._order.append(name)
            self._forward_order.setdefault(name, len(self._forward_order))
            self._watch_grads(name, output, 0)
            ok_in = self._inputs_ok[name].pop()
            if self.m.onset is None and ok_in and not _finite(output):
                self.m.onset = Onset(self._step, name, "forward")
            self._forward_bad |= not _finite(output)
            self._half_peak(name, output)
            for at in ats:
                if at.where == "out" and (v := _pick(args, kwargs, output, at)) is not None:
                    self._keep(at, v)

        return hook

    def _half_peak(self, name: str, output: Any) -> None:
        """The largest finite |value| of ``name``'s float16 outputs, if the step's largest."""
        for t in _floats(output):
            if t.dtype != torch.float16 or not t.numel():
                continue
            x = t.detach().float().abs()
            peak = float(x[torch.isfinite(x)].max()) if bool(torch.isfinite(x).any()) else 0.0
            if np.isnan(self._half[0]) or peak > self._half[0]:
                self._half = (peak, name)

    def _watch_grads(self, name: str, tensors: Any, slot: int) -> None:
        """Flag non-finite gradients reaching ``name``'s outputs (slot 0) or inputs (slot 1)."""
        if self.m.onset is not None or not torch.is_grad_enabled():
            return
        for t in _floats(tensors):
            if t.requires_grad:
                t.register_hook(self._flag(name, slot))

    def _flag(self, name: str, slot: int) -> Any:
        def hook(g: torch.Tensor) -> None:
            if not bool(torch.isfinite(g).all()):
                self._bwd.setdefault(name, [False, False])[slot] = True

        return hook

    def _backward_origin(self, grad_bad: list[str]) -> str:
        """The innermost module whose output gradients are finite while its input or parameter
        gradients are not (ties: the latest in forward order)."""
        cands = {n for n, (out_bad, in_bad) in self._bwd.items() if in_bad and not out_bad}
        cands |= {n for n in grad_bad if not self._bwd.get(n, [False, False])[0]}
        if not cands:
            return grad_bad[-1]
        inner = [
            n
            for n in cands
            if not any(c.startswith(n + ".") or (not n and c) for c in cands if c != n)
        ]
        return max(inner, key=lambda n: self._forward_order.get(n, -1))

    def begin_step(self, step: int) -> None:
        self._step, self._forward_bad = step, False
        self._bwd.clear()
        self._values.clear()
        self._act_grad = np.full(len(self.taps), np.nan)
        self._dead = float("nan")
        self._saturated = float("nan")
        self._half = (float("nan"), "")

    def check_loss(self, loss: float) -> None:
        """The loss is non-finite while every module output was finite: the loss made it."""
        if self.m.onset is None and not self._forward_bad and not np.isfinite(loss):
            self.m.onset = Onset(self._step, "loss", "loss")

    def after_backward(self, scale: float = 1.0) -> None:
        """Gradient norms (divided by an AMP loss ``scale``) and the backward onset."""
        if not self.m.modules:
            order = self._order + [n for n in self._params if n not in self._order]
            self.m.modules = order
            self.m.numel = [sum(p.numel() for p in self._params[n]) for n in order]
        norms = np.array([self._grad_norm(n) / scale for n in self.m.modules])
        self.m.grad.append(norms)
        self._grads_bad = not np.all(np.isfinite(norms))

    def _grad_norm(self, name: str) -> float:
        grads = [p.grad.detach().float() for p in self._params[name] if p.grad is not None]
        return (
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            if grads
            else 0.0
        )

    def after_step(self, skipped: bool) -> None:
        """Call after ``optimizer.step()``; ``skipped`` when an AMP GradScaler skipped it."""
        if skipped:
            self.m.skipped.append(self._step)
            return
        if self.m.onset is not None or self._forward_bad:
            return
        if self._grads_bad:
            bad = [n for n, g in zip(self.m.modules, self.m.grad[-1]) if not np.isfinite(g)]
            self.m.onset = Onset(self._step, self._backward_origin(bad), "backward")
            return
        for name in self.m.modules:
            if not all(bool(torch.isfinite(p).all()) for p in self._params[name]):
                self.m.onset = Onset(self._step, name, "optimizer")
                return

    def end_step(self, loss: float) -> None:
        """Record the loss and the residual-site measurements of this step's forward pass."""
        self.m.loss.append(loss)
        n = len(self.taps)
        ratio, stream, sim = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        smooth = self.smooth_every > 0 and self._step % self.smooth_every == 0
        with torch.no_grad():
            for i, tap in enumerate(self.taps):
                parts = self._operands(tap)
                if parts is None:
                    continue
                branch, skip, total = parts
                stream[i] = rms(total)
                if skip is not None:
                    ratio[i] = rms(branch) / max(rms(skip), 1e-30)
                if smooth:
                    sim[i] = cosine_similarity(total)
        self.m.ratio.append(ratio)
        self.m.stream.append(stream)
        self.m.similarity.append(sim)
        self.m.act_grad.append(self._act_grad)
        self.m.dead.append(self._dead)
        self.m.saturated.append(self._saturated)
        self.m.half_peak.append(self._half[0])
        self.m.half_module.append(self._half[1])

    def _operands(self, tap: SiteTap) -> tuple[torch.Tensor, Any, torch.Tensor] | None:
        get = self._values.get
        skip = get(tap.skip) if tap.skip is not None else None
        if tap.skip is not None and skip is None:
            return None
        if tap.result is not None and (result := get(tap.result)) is not None:
            result = result.float()
            return (result - skip.float() if skip is not None else result), skip, result
        branch = get(tap.branch) if tap.branch is not None else None
        if branch is None:
            return None
        branch = branch.float()
        return branch, skip, (branch if skip is None else branch + skip.float())

    def close(self) -> Measurement:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return self.m
