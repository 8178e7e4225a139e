"""CIFAR-style ResNets (post-activation torchvision blocks and pre-activation blocks)."""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from probes import data
from probes.faults import NaNGrad, Wrapped
from probes.measure import At, SiteTap
from probes.recipe import Recipe
from probes.train import Setup
from resdoctor.models import PreActResNet, ResNet

FIXES = frozenset({"pre-activation", "add-normalization", "residual-scaling", "reduce-depth"})

DEFAULTS: dict[str, Any] = {
    "layers": (1, 1, 1),
    "widths": (8, 16, 16),
    "norm": True,
    "preact": False,
    "residual_scale": 1.0,
}


def build(r: Recipe) -> Setup:
    """arch: layers (or depth), widths, norm, preact, zero_init, nan_grad (block path, step),
    guard_eps, residual_scale, init ("kaiming")."""
    a: dict[str, Any] = {**DEFAULTS, **r.arch}
    layers = _spread(int(a["depth"]), len(a["layers"])) if "depth" in a else tuple(a["layers"])
    if a.get("preact"):
        model: nn.Module = PreActResNet(layers, a["widths"][: len(layers)])
    else:
        model = ResNet(
            layers,
            "basic",
            a["widths"][: len(layers)],
            norm=bool(a["norm"]),
            zero_init_residual=bool(a.get("zero_init")),
        )
        if a.get("init") == "kaiming":
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    blocks = _blocks(model)
    if a.get("nan_grad") and not a.get("preact"):
        path, step = a["nan_grad"]
        block = dict(model.named_modules())[path]
        block.bn2 = Wrapped(block.bn2, NaNGrad(step, a.get("guard_eps")))
    scale = float(a.get("residual_scale", 1.0))
    if scale != 1.0:
        for _, block in blocks:
            last = cast(nn.Module, block.conv2 if a.get("preact") else block.bn2)
            last.register_forward_hook(lambda m, i, o, s=scale: o * s)
    return Setup(
        model, data.images(seed=r.seed), data.cross_entropy, taps(model, bool(a.get("preact")))
    )


def _spread(depth: int, stages: int) -> tuple[int, ...]:
    """``depth`` blocks over ``stages`` stages (reduce-depth), at least one per stage."""
    return tuple(max(1, depth // stages + (i < depth % stages)) for i in range(stages))


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "conv2")]


def taps(model: nn.Module, preact: bool) -> list[SiteTap]:
    out = []
    for name, block in _blocks(model):
        if preact:
            skip = At(f"{name}.shortcut") if block.shortcut is not None else At(name, "in")
            out.append(SiteTap(name, branch=At(f"{name}.conv2"), skip=skip))
        else:
            skip = At(f"{name}.downsample") if block.downsample is not None else At(name, "in")
            out.append(SiteTap(name, branch=At(f"{name}.bn2"), skip=skip))
    return out
