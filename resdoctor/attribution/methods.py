"""The two attribution methods over the operands of residual additions, both run by captum.

``gradient``: captum ``LayerGradientXActivation`` on two ``OperandTap`` modules per site, one
forward and one backward for all sites: ``g * a`` and ``g * b``, first order.
``ablation``: captum ``FeatureAblation`` on gates that scale each operand (1 = as is): removing
one operand at a time gives the exact change of the output, in one batched forward pass.

Each returns ``{site position: (branch, skip, coherence)}``, the position being the site's place
in ``sites``; sums of absolute per-sample values over the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from resdoctor.attribution.inputs import Batch, Objective
from resdoctor.attribution.router import OperandRouter, OperandTap
from resdoctor.recording.discovery import Site

Totals = dict[int, tuple[float, float, float]]
ABLATION_BATCH = 256  # samples per ablation forward: perturbations are stacked up to this
INSTALL = "resdoctor attribution needs captum: pip install resdoctor[captum]"


def captum_attr() -> Any:
    """``captum.attr``, imported on first use."""
    try:
        import captum.attr
    except ImportError as e:
        raise ImportError(INSTALL) from e
    return captum.attr


def gradient(
    model: nn.Module, batch: Batch, objective: Objective, sites: list[Site], routed: list[int]
) -> Totals:
    """First-order attribution ``g * operand`` at every routed site, one captum pass."""
    taps = [(OperandTap(), OperandTap()) for _ in routed]
    router = OperandRouter(model, sites, routed, lambda k, a, b: (taps[k][0](a), taps[k][1](b)))
    forward = _forward(model, batch, objective, router)
    method = captum_attr().LayerGradientXActivation
    slots = list(range(len(routed)))
    with _attached(router):
        try:
            result = method(forward, [t for k in slots for t in taps[k]]).attribute(batch.tensors())
        except Exception:
            slots = [k for k in slots if routed[k] in router.matched]
            if not slots or len(slots) == len(routed):
                raise
            # an addition that did not run this time (control flow): attribute the others
            result = method(forward, [t for k in slots for t in taps[k]]).attribute(batch.tensors())
    per_sample = torch.stack([_per_sample(a) for a in result]).cpu()  # [2 * sites, B]
    totals: Totals = {}
    for j, k in enumerate(slots):
        skip, branch = per_sample[2 * j].double(), per_sample[2 * j + 1].double()
        scale = float(skip.abs().sum() + branch.abs().sum())
        coherence = float((skip + branch).abs().sum()) / scale if scale > 0 else float("nan")
        totals[routed[k]] = (float(branch.abs().sum()), float(skip.abs().sum()), coherence)
    return totals


def ablation(
    model: nn.Module,
    batch: Batch,
    objective: Objective,
    sites: list[Site],
    routed: list[int],
    stack: bool = True,
) -> Totals:
    """Exact change of the output when one operand is zeroed, per operand, through captum.

    ``stack=False`` runs one perturbation per forward (needed in train mode, where BatchNorm
    would otherwise mix the statistics of different perturbations)."""
    box: dict[str, torch.Tensor] = {}

    def route(k: int, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        gates = box["gates"]  # [N, 2 * sites]
        if a.dim() == 0 or a.shape[0] != gates.shape[0]:
            return None  # no batch dimension to gate per perturbation
        shape = (-1,) + (1,) * (a.dim() - 1)
        return (
            a * gates[:, 2 * k].view(shape).to(a.dtype),
            b * gates[:, 2 * k + 1].view(shape).to(b.dtype),
        )

    router = OperandRouter(model, sites, routed, route)  # type: ignore[arg-type]
    inner = _forward(model, batch, objective, router)

    def forward(gates: torch.Tensor, *tensors: torch.Tensor) -> torch.Tensor:
        box["gates"] = gates
        return inner(*tensors)

    tensors = batch.tensors()
    gates = torch.ones(batch.size, 2 * len(routed), device=tensors[0].device)
    per_eval = max(1, min(2 * len(routed), ABLATION_BATCH // max(batch.size, 1))) if stack else 1
    with _attached(router), torch.no_grad():
        attr = (
            captum_attr()
            .FeatureAblation(forward)
            .attribute(gates, additional_forward_args=tensors, perturbations_per_eval=per_eval)
        )
    delta = attr.detach().double().abs().sum(0).cpu()  # [2 * sites]
    return {
        i: (float(delta[2 * k + 1]), float(delta[2 * k]), float("nan"))
        for k, i in enumerate(routed)
        if i in router.matched
    }


def _forward(model: nn.Module, batch: Batch, objective: Objective, router: OperandRouter) -> Any:
    def forward(*tensors: torch.Tensor) -> torch.Tensor:
        args, kwargs = batch.rebuild(tensors)
        router.reset()
        with router:
            output = model(*args, **kwargs)
        return objective(output)

    return forward


@contextlib.contextmanager
def _attached(router: OperandRouter) -> Iterator[None]:
    router.attach()
    try:
        yield
    finally:
        router.detach()


def _per_sample(attr: Any) -> torch.Tensor:
    """Attribution summed over every element of each sample: ``[B]``."""
    t = attr[0] if isinstance(attr, tuple) else attr
    return t.detach().reshape(t.shape[0], -1).float().sum(1)
