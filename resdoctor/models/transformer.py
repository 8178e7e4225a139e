"""A small decoder-style transformer with pre-LN or post-LN blocks."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class TransformerBlock(nn.Module):
    """One transformer block with two residual sites (attention, MLP).

    Args:
        norm: ``"pre"`` (x + F(LN(x))), ``"post"`` (LN(x + F(x))) or ``"none"``.
        residual_scale: multiplies each branch before the addition (1.0 = plain residual).
    """

    def __init__(
        self,
        dim: int,
        heads: int = 4,
        mlp_ratio: int = 4,
        norm: Literal["pre", "post", "none"] = "pre",
        dropout: float = 0.0,
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.norm = norm
        self.residual_scale = residual_scale
        self.ln1 = nn.LayerNorm(dim) if norm != "none" else nn.Identity()
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(dim) if norm != "none" else nn.Identity()
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim)
        )

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1)
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.residual_scale
        if self.norm == "post":
            x = self.ln1(x + s * self._attend(x) if s != 1.0 else x + self._attend(x))
            return self.ln2(x + s * self.mlp(x) if s != 1.0 else x + self.mlp(x))
        h = self._attend(self.ln1(x))
        x = x + (s * h if s != 1.0 else h)
        h = self.mlp(self.ln2(x))
        return x + (s * h if s != 1.0 else h)


class TinyTransformer(nn.Module):
    """Token embedding + learned positions + ``depth`` blocks + LM head."""

    def __init__(
        self,
        vocab: int = 64,
        dim: int = 32,
        depth: int = 4,
        heads: int = 4,
        max_len: int = 64,
        norm: Literal["pre", "post", "none"] = "pre",
        residual_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, heads, norm=norm, residual_scale=residual_scale)
            for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(dim) if norm == "pre" else nn.Identity()
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed(ids) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))
