"""Benchmark workloads: a model, its optimizer and one fixed batch, stepped the usual way.

Data loading is left out on purpose (one pre-generated batch), so a step is exactly
``zero_grad -> forward -> loss -> backward -> optimizer.step()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

WORKLOADS = ("resnet", "gpt2", "vit")


@dataclass
class Workload:
    """One benchmark model with its optimizer and batch; ``step()`` runs one training step."""

    name: str
    title: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[], torch.Tensor]

    def step(self) -> torch.Tensor:
        """One training step; returns the detached loss (still on the device, no sync)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn()
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def resnet(device: torch.device, quick: bool = False) -> Workload:
    """CIFAR-style BasicBlock ResNet-20 (3 stages), batch 64 of 32x32 (quick: tiny)."""
    from resdoctor.models import ResNet

    widths, batch, size = ((4, 8, 16), 4, 16) if quick else ((16, 32, 64), 64, 32)
    model = ResNet(layers=(3, 3, 3), widths=widths).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size, device=device)  # [B, 3, H, W]
    y = torch.randint(0, 10, (batch,), device=device)
    title = f"ResNet-20 (BasicBlock, 3 stages), batch {batch}, {size}x{size}"
    return Workload("resnet", title, model, opt, lambda: nn.functional.cross_entropy(model(x), y))


def gpt2(device: torch.device, quick: bool = False) -> Workload:
    """GPT-2 small from a transformers config: 6 layers, d=384, seq 128, batch 8 (quick: tiny)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if quick:
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=128)
        batch, seq = 2, 16
    else:
        cfg = GPT2Config(n_layer=6, n_embd=384, n_head=6, n_positions=128)
        batch, seq = 8, 128
    model = GPT2LMHeadModel(cfg).to(device).train()  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), device=device)  # [B, T]
    title = f"GPT-2 (transformers), {cfg.n_layer} layers, d={cfg.n_embd}, seq {seq}, batch {batch}"
    return Workload("gpt2", title, model, opt, lambda: model(input_ids=ids, labels=ids).loss)


def vit(device: torch.device, quick: bool = False) -> Workload:
    """ViT from a transformers config: 12 layers, d=192, 3 heads, 32x32 images in 4x4
    patches (64 tokens), batch 16, 10 classes (quick: tiny)."""
    from transformers import ViTConfig, ViTForImageClassification

    # (hidden, layers, heads, mlp, image, patch), batch
    (d, n, h, mlp, image, patch), batch = (
        ((32, 2, 2, 64, 16, 8), 2) if quick else ((192, 12, 3, 768, 32, 4), 16)
    )
    cfg = ViTConfig(
        hidden_size=d,
        num_hidden_layers=n,
        num_attention_heads=h,
        intermediate_size=mlp,
        image_size=image,
        patch_size=patch,
        num_labels=10,
    )
    model = ViTForImageClassification(cfg).to(device).train()  # type: ignore[arg-type]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    title = (
        f"ViT (transformers), {cfg.num_hidden_layers} layers, d={cfg.hidden_size}, "
        f"{cfg.image_size}x{cfg.image_size} in {cfg.patch_size}x{cfg.patch_size} patches, "
        f"batch {batch}"
    )
    return Workload("vit", title, model, opt, lambda: model(pixel_values=x, labels=y).loss)


def build(name: str, device: torch.device, quick: bool = False) -> Workload:
    """The workload called ``name`` (one of ``WORKLOADS``), seeded for repeatability."""
    torch.manual_seed(0)
    if name == "resnet":
        return resnet(device, quick)
    if name == "gpt2":
        return gpt2(device, quick)
    if name == "vit":
        return vit(device, quick)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(WORKLOADS)}")
