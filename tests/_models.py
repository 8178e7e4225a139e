"""Third-party models built from configs with random weights (no downloads)."""

from __future__ import annotations

import torch
from torch import nn


def gpt2(layers: int = 2, dim: int = 32):
    import transformers as T

    cfg = T.GPT2Config(
        n_layer=layers,
        n_embd=dim,
        n_head=4,
        vocab_size=100,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return T.GPT2LMHeadModel(cfg), {"input_ids": torch.randint(0, 100, (2, 12))}


def bert(layers: int = 2):
    import transformers as T

    cfg = T.BertConfig(
        num_hidden_layers=layers,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
    )
    return T.BertModel(cfg), {"input_ids": torch.randint(0, 100, (2, 12))}


def vit(layers: int = 2):
    import transformers as T

    cfg = T.ViTConfig(
        num_hidden_layers=layers,
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    return T.ViTModel(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)}


def hf_resnet(depths=(1, 2), layer_type: str = "basic"):
    import transformers as T

    cfg = T.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16] if layer_type == "basic" else [16, 32],
        depths=list(depths),
        layer_type=layer_type,
    )
    return T.ResNetModel(cfg), {"pixel_values": torch.randn(2, 3, 32, 32)}


class ResGCN(nn.Module):
    """A residual GCN with torch_geometric's DeepGCNLayer ('res+': x + conv(act(norm(x))))."""

    def __init__(self, d_in: int = 8, dim: int = 16, layers: int = 3) -> None:
        super().__init__()
        import torch_geometric.nn as gnn

        self.inp = nn.Linear(d_in, dim)
        self.layers = nn.ModuleList(
            gnn.DeepGCNLayer(gnn.GCNConv(dim, dim), nn.LayerNorm(dim), nn.ReLU(), block="res+")
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x, edge_index)
        return x


class PlainGCN(nn.Module):
    def __init__(self, d_in: int = 8, dim: int = 16, layers: int = 3) -> None:
        super().__init__()
        import torch_geometric.nn as gnn

        self.convs = nn.ModuleList(gnn.GCNConv(d_in if i == 0 else dim, dim) for i in range(layers))

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x, edge_index))
        return x


def graph(nodes: int = 10, edges: int = 30):
    return torch.randn(nodes, 8), torch.randint(0, nodes, (2, edges))
