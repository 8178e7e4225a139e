"""Graph networks from torch_geometric on a stochastic-block-model graph (node classification)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from probes import data
from probes.measure import At, SiteTap
from probes.recipe import Recipe
from probes.train import Setup


class PlainGCN(nn.Module):
    """``depth`` GCNConv + ReLU layers, no skip. ``initial_residual`` (GCNII, Chen et al. 2020)
    mixes ``alpha x0`` into every layer; ``pairnorm`` (Zhao & Akoglu 2020) follows each conv."""

    def __init__(self, depth: int, dim: int, classes: int, initial_residual: float = 0.0,
                 pairnorm: bool = False) -> None:
        super().__init__()
        from torch_geometric.nn import GCN2Conv, GCNConv, PairNorm

        self.inp = nn.Linear(16, dim)
        self.alpha = initial_residual
        self.convs = nn.ModuleList(
            GCN2Conv(dim, initial_residual, theta=0.5, layer=i + 1) if initial_residual
            else GCNConv(dim, dim) for i in range(depth))
        self.norms = nn.ModuleList(PairNorm() if pairnorm else nn.Identity() for _ in range(depth))
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
    ``"res"`` conv-norm-act + skip; ``norm=False`` drops the LayerNorm."""

    def __init__(self, depth: int, dim: int, classes: int, block: str = "res+",
                 norm: bool = True, pairnorm: bool = False, conv_gain: float = 1.0) -> None:
        super().__init__()
        from torch_geometric.nn import DeepGCNLayer, GCNConv, PairNorm

        self.inp = nn.Linear(16, dim)
        layers = []
        for _ in range(depth):
            conv = GCNConv(dim, dim)
            with torch.no_grad():
                conv.lin.weight.mul_(conv_gain)
            n: nn.Module = PairNorm() if pairnorm else nn.LayerNorm(dim) if norm else nn.Identity()
            layers.append(DeepGCNLayer(conv, n, nn.ReLU(), block=block))
        self.layers = nn.ModuleList(layers)
        self.out = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x, edge_index)
        return self.out(x)


def build(r: Recipe) -> Setup:
    """arch: kind ("plain" | "res"), depth, dim, block, norm, pairnorm, initial_residual,
    conv_gain, residual (True turns a plain GCN into res+ blocks)."""
    a: dict[str, Any] = {"kind": "plain", "depth": 8, "dim": 32, "block": "res+", "norm": True,
                         **r.arch}
    kind = "res" if a.get("residual") else a["kind"]
    if kind == "plain":
        model: nn.Module = PlainGCN(a["depth"], a["dim"], 4, float(a.get("initial_residual", 0)),
                                    bool(a.get("pairnorm")))
        taps = [SiteTap(f"convs.{i}", branch=At(f"acts.{i}")) for i in range(a["depth"])]
    else:
        model = ResGCN(a["depth"], a["dim"], 4, a["block"], bool(a["norm"]),
                       bool(a.get("pairnorm")), float(a.get("conv_gain", 1.0)))
        taps = [SiteTap(f"layers.{i}", skip=At(f"layers.{i}", "in"), result=At(f"layers.{i}"))
                for i in range(a["depth"])]
    return Setup(model, data.graph(seed=r.seed), data.cross_entropy, taps)
