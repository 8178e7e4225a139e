"""Graph networks from torch_geometric on a stochastic-block-model graph (node classification)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from probes import data
from probes.measure import At, SiteTap
from probes.recipe import FixNotApplicable, Recipe
from probes.train import Setup

FIXES = frozenset(
    {
        "pairnorm",
        "initial-residual",
        "add-residual",
        "add-normalization",
        "residual-scaling",
        "reduce-depth",
    }
)

DEFAULTS: dict[str, Any] = {
    "kind": "plain",
    "depth": 8,
    "dim": 32,
    "block": "res+",
    "norm": False,
    "pairnorm": False,
    "initial_residual": 0.0,
    "residual_scale": 1.0,
}


def _norm(kind: str, dim: int) -> nn.Module:
    from torch_geometric.nn import PairNorm

    return {"pair": PairNorm(), "layer": nn.LayerNorm(dim)}.get(kind, nn.Identity())


class PlainGCN(nn.Module):
    """``depth`` GCNConv + ReLU layers, no skip. ``initial_residual`` (GCNII, Chen et al. 2020)
    mixes ``alpha x0`` into every layer; ``norm`` ("pair" = PairNorm, Zhao & Akoglu 2020, or
    "layer") follows each conv."""

    def __init__(
        self, depth: int, dim: int, classes: int, initial_residual: float = 0.0, norm: str = "none"
    ) -> None:
        super().__init__()
        from torch_geometric.nn import GCN2Conv, GCNConv

        self.inp = nn.Linear(16, dim)
        self.alpha = initial_residual
        self.convs = nn.ModuleList(
            GCN2Conv(dim, initial_residual, theta=0.5, layer=i + 1)
            if initial_residual
            else GCNConv(dim, dim)
            for i in range(depth)
        )
        self.norms = nn.ModuleList(_norm(norm, dim) for _ in range(depth))
        self.acts = nn.ModuleList(nn.ReLU() for _ in range(depth))
        self.out = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = x0 = self.inp(x)
        for conv, norm, act in zip(self.convs, self.norms, self.acts):
            h = conv(x, x0, edge_index) if self.alpha else conv(x, edge_index)
            x = act(norm(h))
        return self.out(x)


class ResGCN(nn.Module):
    """DeepGCNLayer blocks (Li et al. 2020): ``block="res+"`` is norm-act-conv + skip,
    ``"res"`` conv-norm-act + skip. ``initial_residual`` feeds ``(1-a) x + a x0`` to each layer;
    ``scale`` multiplies each branch (residual scaling)."""

    def __init__(
        self,
        depth: int,
        dim: int,
        classes: int,
        block: str = "res+",
        norm: str = "layer",
        initial_residual: float = 0.0,
        scale: float = 1.0,
    ) -> None:
        super().__init__()
        from torch_geometric.nn import DeepGCNLayer, GCNConv

        self.inp = nn.Linear(16, dim)
        self.alpha = initial_residual
        layers = []
        for _ in range(depth):
            conv = GCNConv(dim, dim)
            if scale != 1.0:
                conv.register_forward_hook(lambda m, i, o, s=scale: o * s)
            layers.append(DeepGCNLayer(conv, _norm(norm, dim), nn.ReLU(), block=block))
        self.layers = nn.ModuleList(layers)
        self.out = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = x0 = self.inp(x)
        for layer in self.layers:
            x = layer((1 - self.alpha) * x + self.alpha * x0 if self.alpha else x, edge_index)
        return self.out(x)


def _norm_kind(a: dict[str, Any]) -> str:
    if a.get("pairnorm"):
        return "pair"
    return "layer" if a.get("norm") is True else "none"


def build(r: Recipe) -> Setup:
    """arch: kind ("plain" | "res"), depth, dim, block, norm (True: LayerNorm), pairnorm,
    initial_residual, residual_scale, residual (True turns a plain GCN into res+ blocks)."""
    a: dict[str, Any] = {**DEFAULTS, **r.arch}
    if a.get("residual") and a["kind"] == "res":
        raise FixNotApplicable("add-residual: the GCN is residual already")
    kind = "res" if a.get("residual") else a["kind"]
    alpha, scale = float(a.get("initial_residual", 0.0)), float(a.get("residual_scale", 1.0))
    if kind == "plain":
        if scale != 1.0:
            raise FixNotApplicable("residual-scaling: this GCN has no residual connections")
        model: nn.Module = PlainGCN(a["depth"], a["dim"], 4, alpha, _norm_kind(a))
        taps = [SiteTap(f"convs.{i}", branch=At(f"acts.{i}")) for i in range(a["depth"])]
    else:
        model = ResGCN(a["depth"], a["dim"], 4, a["block"], _norm_kind(a), alpha, scale)
        taps = [
            SiteTap(f"layers.{i}", skip=At(f"layers.{i}", "in"), result=At(f"layers.{i}"))
            for i in range(a["depth"])
        ]
    return Setup(model, data.graph(seed=r.seed), data.cross_entropy, taps)
