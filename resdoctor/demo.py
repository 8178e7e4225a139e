"""``resdoctor demo``: train a small sick residual network under watch, then diagnose it.

The sick run is a 12-block residual MLP without normalisation (LeCun-normal init, so each branch
is about as large as its input) trained with SGD at a learning rate that is too high: the residual
stream grows exponentially with depth, gradients surge, and the run turns to NaN within a few
dozen steps. ``healthy=True`` records the same model with pre-LayerNorm branches and a sane LR;
``fixed=True`` re-runs the sick recipe with the top fix resdoctor suggested for the sick run.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from resdoctor.models import ResidualMLP
from resdoctor.recording.watcher import watch

DEMO_STEPS = 80
STOP_AFTER_NAN = 5  # consecutive non-finite losses after which training stops


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one demo run; fixes edit it."""

    depth: int = 12
    dim: int = 64
    norm: bool = False
    lr: float = 0.01
    scale: float = 1.0
    clip: float | None = None
    warmup: int = 0
    description: str = "sick: unnormalised 12-block residual MLP, SGD lr=0.01 (too high)"


SICK = Recipe()
HEALTHY = Recipe(
    norm=True, lr=0.003, description="healthy: pre-LayerNorm 12-block residual MLP, SGD lr=0.003"
)


def _data(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """A separable 10-class problem: labels from a random linear teacher."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(512, 16, generator=g)  # [N, 16]
    y = (x @ torch.randn(16, 10, generator=g)).argmax(1)  # [N]
    return x, y, g


def _model(recipe: Recipe, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = ResidualMLP(
        d_in=16, dim=recipe.dim, depth=recipe.depth, d_out=10, norm=recipe.norm, scale=recipe.scale
    )
    for module in model.modules():
        if isinstance(module, nn.Linear):  # LeCun normal: unit-gain branches
            nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(module.in_features))
    return model


def train(recipe: Recipe, path: str, steps: int = DEMO_STEPS, seed: int = 0) -> str:
    """Record up to ``steps`` SGD steps of ``recipe`` into ``path`` (stopping 5 steps after the
    loss turns non-finite); returns ``path``."""
    model = _model(recipe, seed)
    x, y, g = _data(seed)
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9)
    nan_steps = 0
    with watch(model, opt, path, smoothing_every=5, update_every=1, grad_share_every=5) as doctor:
        for step in range(steps):
            if nan_steps >= STOP_AFTER_NAN:  # as a training script would: stop a dead run
                break
            lr = recipe.lr * min(1.0, (step + 1) / recipe.warmup) if recipe.warmup else recipe.lr
            for group in opt.param_groups:
                group["lr"] = lr
            idx = torch.randint(0, len(x), (64,), generator=g)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            if recipe.clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), recipe.clip)
            opt.step()
            doctor.log(loss=loss, lr=lr)
            nan_steps = nan_steps + 1 if not math.isfinite(loss.item()) else 0
    return path


def apply_fix(recipe: Recipe, fix: Any) -> Recipe:
    """The recipe with one suggested ``Fix`` applied (its parameters come from the sick run)."""
    p = dict(fix.params)
    code = fix.code
    if code == "lower-lr":
        return replace(recipe, lr=float(p.get("new_lr", recipe.lr * p.get("factor", 0.1))))
    if code == "clip-gradients":
        return replace(recipe, clip=float(p["max_norm"]))
    if code == "lr-warmup":
        return replace(recipe, warmup=int(p.get("warmup_steps", 20)))
    if code == "residual-scaling":
        return replace(recipe, scale=float(p.get("scale", 1.0 / math.sqrt(recipe.depth))))
    if code in ("pre-layernorm", "add-normalization", "pre-activation"):
        return replace(recipe, norm=True)
    if code == "reduce-depth":
        return replace(recipe, depth=int(p.get("depth", max(1, recipe.depth // 2))))
    raise ValueError(f"the demo cannot apply fix {code!r}")


def top_fix(path: str) -> Any:
    """The first fix of the report's plan, for the run at ``path``, that the demo can apply."""
    from resdoctor.report.analysis import analyze

    for fix in analyze(path).plan:
        try:
            apply_fix(SICK, fix)
        except (ValueError, KeyError, TypeError):
            continue
        return fix
    return None


def record_demo(
    path: str,
    steps: int = DEMO_STEPS,
    seed: int = 0,
    healthy: bool = False,
    fixed: bool = False,
    from_run: str | None = None,
) -> str:
    """Record the demo run into ``path`` and return ``path``.

    Args:
        steps: training steps (the sick run reaches NaN well before the default 80).
        seed: seeds the model init and the data.
        healthy: record the healthy control (pre-LayerNorm, lower LR) instead.
        fixed: record the sick recipe with the top fix suggested for the sick run applied
            (the sick run is recorded first into a temporary file and analysed).
        from_run: with ``fixed``, take the fix from this already recorded sick run.
    """
    recipe = HEALTHY if healthy else SICK
    if fixed and not healthy:
        fix = top_fix(from_run) if from_run else _top_fix_of_fresh_run(steps, seed)
        if fix is not None:
            recipe = replace(apply_fix(SICK, fix), description=f"fixed: {fix.code} {fix.params}")
    return train(recipe, path, steps, seed)


def _top_fix_of_fresh_run(steps: int, seed: int) -> Any:
    fd, sick_path = tempfile.mkstemp(suffix=".pt")
    os.close(fd)
    try:
        train(SICK, sick_path, steps, seed)
        return top_fix(sick_path)
    finally:
        os.unlink(sick_path)


def record_demo_fixed(path: str, steps: int = DEMO_STEPS, seed: int = 0) -> str:
    """The sick recipe re-run with its top suggested fix; see ``record_demo(fixed=True)``."""
    return record_demo(path, steps=steps, seed=seed, fixed=True)
