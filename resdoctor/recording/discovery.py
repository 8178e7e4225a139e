"""Residual sites: what they are and how they are found (DESIGN.md section 3)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from resdoctor.recording.trace import Addition, Tap, Tracer

SiteKind = Literal["identity", "projection"]


@dataclass(frozen=True)
class Site:
    """One residual addition ``out = skip + branch``.

    Attributes:
        name: dotted path of the smallest module holding the addition, ``#k`` when it holds several.
        kind: ``identity`` (skip is the block input, or a parameter-free transform of it) or
            ``projection`` (the skip passes through its own layers, e.g. a 1x1 conv + BN).
        module: class name of the holding module.
        skip, branch, result, source: module boundaries where the operands, the sum and the
            branch's source can be tapped at run time (None where no module boundary carries it).
    """

    name: str
    kind: SiteKind
    module: str
    index: int
    owner: str
    skip: Tap | None
    branch: Tap | None
    result: Tap | None
    source: Tap | None
    shape: tuple[int, ...]
    # the owner's call, the addition's ordinal within it, the skip is the first operand: where
    # an AdditionTaps mode measures a site no module boundary carries
    at: tuple[int, int, bool] = (0, 0, True)

    @property
    def measurable(self) -> bool:
        """True when both operands (or one operand and the sum) can be tapped at module
        boundaries; other sites are measured at the addition itself."""
        return self.skip is not None and (self.branch is not None or self.result is not None)

    def to_dict(self) -> dict[str, Any]:
        taps = {
            k: (getattr(self, k).to_dict() if getattr(self, k) else None)
            for k in ("skip", "branch", "result", "source")
        }
        return {
            "name": self.name,
            "kind": self.kind,
            "module": self.module,
            "index": self.index,
            "owner": self.owner,
            "shape": list(self.shape),
            **taps,
        }


def discover(model: nn.Module, *example_inputs: Any, **example_kwargs: Any) -> list[Site]:
    """Find the residual sites of ``model`` by tracing one forward pass on the example input.

    The pass leaves no trace: buffers (e.g. BatchNorm statistics) and the RNG are restored, and
    every hook is removed. Gradients are not needed and no backward is run.
    """
    return sites_from(trace(model, *example_inputs, **example_kwargs), model)


def trace(model: nn.Module, *example_inputs: Any, **example_kwargs: Any) -> Tracer:
    """One traced forward pass on the example input (see ``discover``): its additions, the
    modules' forward order and the NaN-prone ops each module ran."""
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    tracer = Tracer(model)
    try:
        with torch.random.fork_rng(devices=_cuda_devices(model)):
            tracer.attach()
            with tracer:
                model(*example_inputs, **example_kwargs)
    finally:
        tracer.detach()
        with torch.no_grad():
            for name, b in model.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    return tracer


def sites_from(tracer: Tracer, model: nn.Module) -> list[Site]:
    """Turn the additions a finished trace found into named, tappable sites."""
    modules = dict(model.named_modules())
    additions = tracer.residuals()
    per_module = Counter(a.module for a in additions)
    seen: Counter[str] = Counter()
    sites = []
    for index, add in enumerate(additions):
        k = seen[add.module]
        seen[add.module] += 1
        base = add.module or "<root>"
        name = f"{base}#{k}" if per_module[add.module] > 1 else base
        owner = modules.get(add.module, model)
        sites.append(_site(name, index, type(owner).__name__, add))
    return sites


def _site(name: str, index: int, cls: str, add: Addition) -> Site:
    owner = add.module
    return Site(
        name=name,
        kind=add.kind,  # type: ignore[arg-type]
        module=cls,
        index=index,
        owner=owner,
        skip=_pick(add.skip.taps, owner),
        branch=_pick(add.branch.taps, owner),
        result=_pick(add.result.taps, owner),
        source=_pick(add.source.taps, owner),
        shape=add.shape,
        at=(add.call, add.ordinal, add.skip_first),
    )


def _pick(taps: list[Tap], owner: str) -> Tap | None:
    """Prefer a boundary of the owner itself, then one inside it, then the first seen."""
    if not taps:
        return None
    inside = owner + "." if owner else ""

    def rank(t: Tap) -> tuple[int, int]:
        if t.module == owner:
            return (0, 0)
        if t.module.startswith(inside):
            return (1, -t.module.count("."))
        return (2, 0)

    return min(taps, key=rank)


def architecture(model: nn.Module) -> str:
    """What kind of network ``model`` is, for fixes that fit it: ``graph`` (a message-passing
    layer: torch_geometric's ``MessagePassing``), ``transformer`` (an attention module),
    ``convolutional`` (a Conv layer) or ``mlp``."""
    kinds = set()
    for module in model.modules():
        bases = {c.__name__ for c in type(module).__mro__}
        name = type(module).__name__.lower()
        if "MessagePassing" in bases:
            kinds.add("graph")
        elif "attention" in name or isinstance(module, nn.MultiheadAttention):
            kinds.add("transformer")
        elif isinstance(module, nn.modules.conv._ConvNd):
            kinds.add("convolutional")
    return next((k for k in ("graph", "transformer", "convolutional") if k in kinds), "mlp")


def _cuda_devices(model: nn.Module) -> list[int]:
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


def repeated_layers(model: nn.Module, min_layers: int = 3) -> list[tuple[str, nn.Module]]:
    """The longest ModuleList/Sequential of same-type, parameterised modules: the model's layers."""
    best: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        children = list(module.named_children())
        if len(children) < max(min_layers, len(best) + 1):
            continue
        kinds = {type(child) for _, child in children}
        if len(kinds) == 1 and any(True for _ in children[0][1].parameters()):
            prefix = f"{name}." if name else ""
            best = [(prefix + n, child) for n, child in children]
    return best
