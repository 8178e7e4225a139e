"""Residual-site discovery: exact site counts and names on real models (DESIGN.md section 3)."""

import pytest
import torch
from torch import nn

from resdoctor import discover
from resdoctor.models import PreActResNet, ResidualMLP, ResNet, TinyTransformer
from tests import _models


def names(sites):
    return [s.name for s in sites]


def test_torchvision_basicblock_resnet_with_projections_and_inplace_add():
    sites = discover(ResNet((2, 2, 2)), torch.randn(2, 3, 16, 16))
    assert names(sites) == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1"]
    assert [s.kind for s in sites] == [
        "identity",
        "identity",
        "projection",
        "identity",
        "projection",
        "identity",
    ]
    assert {s.module for s in sites} == {"BasicBlock"}
    proj = sites[2]
    assert proj.skip.module == "layer2.0.downsample.1" and proj.branch.module == "layer2.0.bn2"


def test_bottleneck_resnet():
    sites = discover(ResNet((2, 1), block="bottleneck", widths=(8, 16)), torch.randn(2, 3, 16, 16))
    assert names(sites) == ["layer1.0", "layer1.1", "layer2.0"]
    assert [s.kind for s in sites] == ["projection", "identity", "projection"]


def test_preactivation_resnet():
    sites = discover(PreActResNet((2, 2)), torch.randn(2, 3, 16, 16))
    assert names(sites) == ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]
    assert [s.kind for s in sites] == ["identity", "identity", "projection", "identity"]


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_transformer_blocks_have_two_sites_each(norm):
    sites = discover(TinyTransformer(depth=3, norm=norm), torch.randint(0, 64, (2, 10)))
    assert names(sites) == [f"blocks.{i}#{k}" for i in range(3) for k in (0, 1)]
    assert all(s.kind == "identity" and s.measurable for s in sites)


def test_gpt2_two_sites_per_layer_and_gelu_is_not_a_site():
    model, inputs = _models.gpt2(layers=3)
    sites = discover(model, **inputs)
    assert names(sites) == [f"transformer.h.{i}#{k}" for i in range(3) for k in (0, 1)]
    # gelu_new computes x + 0.044715 * x**3 inside GPT2MLP: not residual
    assert not any("mlp" in s.owner for s in sites)


def test_bert_two_sites_per_layer_embeddings_are_not_sites():
    model, inputs = _models.bert(layers=2)
    sites = discover(model, **inputs)
    expected = [f"encoder.layer.{i}.{m}" for i in range(2) for m in ("attention.output", "output")]
    assert names(sites) == expected
    assert not any("embeddings" in s.owner for s in sites)


def test_vit_two_sites_per_layer_with_a_reused_dropout():
    model, inputs = _models.vit(layers=2)
    sites = discover(model, **inputs)
    assert len(sites) == 4 and all(s.module == "ViTLayer" for s in sites)
    # ViTLayer's two additions share one dropout module: taps are told apart by call index
    first, second = sites[0], sites[1]
    if first.branch and second.branch and first.branch.module == second.branch.module:
        assert (first.branch.call, second.branch.call) == (0, 1)


@pytest.mark.parametrize("layer_type,count", [("basic", 3), ("bottleneck", 3)])
def test_hf_resnet_one_site_per_layer(layer_type, count):
    model, inputs = _models.hf_resnet(layer_type=layer_type)
    sites = discover(model, **inputs)
    assert len(sites) == count
    assert all(s.owner.startswith("encoder.stages.") and ".layers." in s.owner for s in sites)


def test_residual_gcn_from_torch_geometric():
    sites = discover(_models.ResGCN(layers=3), *_models.graph())
    assert names(sites) == ["layers.0", "layers.1", "layers.2"]


def test_plain_gcn_and_plain_mlp_have_no_sites():
    assert discover(_models.PlainGCN(), *_models.graph()) == []
    assert discover(ResidualMLP(depth=3, residual=False), torch.randn(4, 16)) == []


class EmbedPlusPosition(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok, self.pos = nn.Embedding(50, 8), nn.Embedding(16, 8)
        self.lin = nn.Linear(8, 8)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[1]))
        return self.lin(x) + self.lin.bias  # a bias add is not residual either


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x, y):
        return (self.a(x) + self.b(y)) * (x + y)  # two sums of independent inputs


class TwoEqualBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x) + self.b(x)  # two parallel branches, no skip


@pytest.mark.parametrize(
    "model,inputs",
    [
        (EmbedPlusPosition(), (torch.randint(0, 50, (2, 6)),)),
        (TwoInputs(), (torch.randn(2, 4), torch.randn(2, 4))),
        (TwoEqualBranches(), (torch.randn(2, 4),)),
    ],
)
def test_non_residual_additions_are_not_sites(model, inputs):
    assert discover(model, *inputs) == []


def test_discover_leaves_no_trace():
    model = ResNet((1, 1))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 16, 16)
    rng = torch.get_rng_state()
    discover(model, x)
    assert torch.equal(rng, torch.get_rng_state())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
