"""Over-smoothing fixes: initial-residual (GCNII) and PairNorm."""

from __future__ import annotations

from collections.abc import Sequence

from resdoctor.findings import Fix
from resdoctor.fixes.snippets import short_list


def initial_residual(layers: Sequence[str], alpha: float = 0.1) -> Fix:
    """Mix a fraction ``alpha`` of the first layer's representation into every layer (GCNII)."""
    snippet = (
        "from torch import nn\n\n\n"
        "class InitialResidual(nn.Module):\n"
        '    """layer((1 - alpha) * x + alpha * x0): each layer keeps part of x0."""\n\n'
        f"    def __init__(self, layer: nn.Module, alpha: float = {alpha}) -> None:\n"
        "        super().__init__()\n"
        "        self.layer, self.alpha = layer, alpha\n\n"
        "    def forward(self, x, x0, *args, **kwargs):\n"
        "        return self.layer((1 - self.alpha) * x + self.alpha * x0, *args, **kwargs)\n"
    )
    return Fix(
        code="initial-residual",
        title=f"Add an initial residual (alpha={alpha}) to the deep layers",
        detail=(
            "Feed alpha of the first representation x0 into every layer so no depth can "
            "erase it (GCNII: Chen et al. 2020, alpha = 0.1). Deep layers: "
            f"{short_list(layers)}."
        ),
        snippet=snippet,
        params={"alpha": alpha, "layers": list(layers)},
    )


def pairnorm(layers: Sequence[str], scale: float = 1.0) -> Fix:
    """Centre and rescale representations after each layer (Zhao & Akoglu 2020)."""
    snippet = (
        "import torch\nfrom torch import nn\n\n\n"
        "class PairNorm(nn.Module):\n"
        '    """Keeps the total pairwise distance of the rows constant (torch_geometric.nn.'
        'PairNorm too)."""\n\n'
        f"    def __init__(self, scale: float = {scale}, eps: float = 1e-5) -> None:\n"
        "        super().__init__()\n"
        "        self.scale, self.eps = scale, eps\n\n"
        "    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, D]\n"
        "        x = x - x.mean(0, keepdim=True)\n"
        "        return self.scale * x / (self.eps + x.pow(2).sum(1).mean()).sqrt()\n"
    )
    return Fix(
        code="pairnorm",
        title=f"Insert PairNorm (s={scale}) after the layers that smooth",
        detail=(
            "PairNorm keeps node / token representations apart so repeated averaging cannot "
            f"collapse them (Zhao & Akoglu 2020). Layers: {short_list(layers)}."
        ),
        snippet=snippet,
        params={"scale": scale, "layers": list(layers)},
    )
