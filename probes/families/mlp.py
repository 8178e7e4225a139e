"""Residual and plain MLPs (``resdoctor.models.ResidualMLP``) on a teacher regression task."""

from __future__ import annotations

from typing import Any, cast

from torch import nn

from probes import data
from probes.faults import Gate
from probes.measure import At, SiteTap
from probes.recipe import FixNotApplicable, Recipe
from probes.train import Setup
from resdoctor.models import ResidualMLP

FIXES = frozenset(
    {
        "residual-scaling",
        "add-normalization",
        "pre-layernorm",
        "reduce-depth",
        "add-residual",
        "replace-activation",
        "leaky-relu",
        "xavier-init",
    }
)
DEFAULTS: dict[str, Any] = {
    "depth": 8,
    "dim": 32,
    "norm": False,
    "residual": True,
    "activation": "relu",
    "residual_scale": 1.0,
    "task": "teacher",
}
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}


def _dead_branches(model: ResidualMLP, bias: float, norm: bool) -> None:
    """End every branch with a ReLU after a bias of ``bias`` (< 0: the ReLU never fires).
    With ``norm`` (the add-normalization fix) a LayerNorm re-centres it before the ReLU."""
    for block in model.blocks:
        branch = cast(nn.Sequential, block.branch)
        last = cast(nn.Linear, branch[-1])
        nn.init.constant_(last.bias, bias)
        tail = [nn.LayerNorm(last.out_features)] if norm else []
        branch.extend([*tail, nn.ReLU()])


def _init(model: ResidualMLP, a: dict[str, Any]) -> None:
    """``init="kaiming"``: He init on every branch layer, no residual scaling; ``init_gain``:
    every branch layer's weights scaled (large pre-activations)."""
    for block in model.blocks:
        for layer in cast(nn.Sequential, block.branch):
            if isinstance(layer, nn.Linear):
                if a.get("init") == "kaiming":
                    nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
                if a.get("init_gain"):
                    layer.weight.data.mul_(float(a["init_gain"]))


def build(r: Recipe) -> Setup:
    """arch: depth, dim, norm, residual, activation, residual_scale, gate (block, init),
    guard_eps, dead_bias, task ("teacher" | "linear"), init ("kaiming"), init_gain, target_scale."""
    a: dict[str, Any] = {**DEFAULTS, **r.arch}
    if not a["residual"] and float(a["residual_scale"]) != 1.0:
        raise FixNotApplicable("residual-scaling: this MLP has no residual connections")
    dead = a.get("dead_bias")
    model = ResidualMLP(
        16,
        a["dim"],
        a["depth"],
        1,
        norm=bool(a["norm"]) and dead is None,
        residual=bool(a["residual"]),
        activation=ACTIVATIONS[a["activation"]],
        scale=float(a["residual_scale"]),
    )
    _init(model, a)
    if dead is not None:
        _dead_branches(model, float(dead), bool(a["norm"]))
    gate = a.get("gate")
    if gate is not None and gate[0] < a["depth"]:
        cast(nn.Sequential, model.blocks[gate[0]].branch).append(Gate(gate[1], a.get("guard_eps")))
    return Setup(
        model,
        _batches(a, r.seed),
        data.mse,
        taps(a["depth"], bool(a["residual"])),
        l1=float(a.get("l1", 0.0)),
    )


def _batches(a: dict[str, Any], seed: int) -> data.Batch:
    """The task's batches, with a corrupt record at one step (``bad_input`` / ``bad_target``:
    (step, sample)) and the check-inputs / stable-loss fix (``drop_bad_rows``)."""
    batch = (
        data.linear_regression(seed=seed) if a["task"] == "linear" else data.regression(seed=seed)
    )
    if a.get("target_scale"):  # unnormalised targets (prices, counts): large outputs
        batch = data.scaled_targets(batch, float(a["target_scale"]))
    if a.get("bad_input") is not None:
        batch = data.corrupt(batch, *a["bad_input"], where="input")
    if a.get("bad_target") is not None:
        batch = data.corrupt(batch, *a["bad_target"], where="target")
    return data.finite_rows(batch) if a.get("drop_bad_rows") else batch


def taps(depth: int, residual: bool) -> list[SiteTap]:
    if not residual:
        return [SiteTap(f"blocks.{i}", branch=At(f"blocks.{i}")) for i in range(depth)]
    return [
        SiteTap(f"blocks.{i}", skip=At(f"blocks.{i}", "in"), result=At(f"blocks.{i}"))
        for i in range(depth)
    ]
