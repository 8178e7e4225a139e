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


class GCNII(nn.Module):
    """torch_geometric's GCNII example (``GCN2Conv``): every layer re-adds the initial
    representation ``alpha * x0`` (a side input, no stream skip) and mixes ``(1 - beta) h +
    beta h W`` in one ``addmm``: no residual addition on the stream."""

    def __init__(self, d_in: int = 8, dim: int = 16, layers: int = 4, classes: int = 3) -> None:
        super().__init__()
        import torch_geometric.nn as gnn

        self.lin0 = nn.Linear(d_in, dim)
        self.convs = nn.ModuleList(
            gnn.GCN2Conv(dim, alpha=0.1, theta=0.5, layer=i + 1) for i in range(layers)
        )
        self.lin1 = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        x = x0 = self.lin0(x).relu()
        for conv in self.convs:
            x = conv(x, x0, edge_index).relu()
        return self.lin1(x)


class DeepGCN(nn.Module):
    """torch_geometric's ogbn-proteins DeepGCN: ``GENConv`` in ``DeepGCNLayer(block='res+')``,
    edge features encoded once and fed to every layer, layer 0's conv called bare.

    Residual additions: the ``layers - 1`` res+ adds ``x + conv(act(norm(x)))`` and each
    GENConv's own ``out + x``; the message ``x_j + edge_attr`` adds a side input (the same
    edge features in every layer) and is no site."""

    def __init__(
        self, d_in: int = 8, dim: int = 16, layers: int = 6, ckpt: bool = False, classes: int = 3
    ) -> None:
        super().__init__()
        import torch_geometric.nn as gnn

        self.node_encoder = nn.Linear(d_in, dim)
        self.edge_encoder = nn.Linear(4, dim)
        self.layers = nn.ModuleList()
        for _ in range(layers):
            conv = gnn.GENConv(
                dim, dim, aggr="softmax", t=1.0, learn_t=True, num_layers=2, norm="layer"
            )
            norm = nn.LayerNorm(dim, elementwise_affine=True)
            self.layers.append(
                gnn.DeepGCNLayer(conv, norm, nn.ReLU(), block="res+", dropout=0.1, ckpt_grad=ckpt)
            )
        self.lin = nn.Linear(dim, classes)

    def forward(
        self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor
    ) -> torch.Tensor:
        x = self.node_encoder(x)
        edge_attr = self.edge_encoder(edge_attr)
        x = self.layers[0].conv(x, edge_index, edge_attr)
        for layer in self.layers[1:]:
            x = layer(x, edge_index, edge_attr)
        x = self.layers[0].act(self.layers[0].norm(x))
        return self.lin(x)
