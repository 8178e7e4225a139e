"""Gradient vs ablation attribution shares, site by site, on the models resdoctor ships.

``ablation`` is exact (the change of the output when one operand is zeroed; the tests check it
against hand-written ablation hooks to 1e-4); ``gradient`` is its first-order estimate, with
``coherence`` telling where the estimate cancels out. Usage:
``python -m bench.attribution_agreement`` (seeded, CPU, a few seconds).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

import resdoctor
from resdoctor.models import PreActResNet, ResidualMLP, ResNet, TinyTransformer


def sick_mlp() -> nn.Module:
    """A residual MLP whose block 1 is dead (scale 0) and block 2's branch is 50x too strong."""
    model = ResidualMLP(d_in=8, dim=16, depth=4, d_out=3)
    blocks: Any = model.blocks
    blocks[1].scale = 0.0
    with torch.no_grad():
        blocks[2].branch[3].weight.mul_(50)
    return model


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        vocab_size=100,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def cases() -> list[tuple[str, Any, Any]]:
    """(title, model factory, input factory); everything seeded in ``main``."""

    def ids() -> torch.Tensor:
        return torch.randint(0, 32, (4, 8))  # [B, T]

    return [
        ("ResidualMLP, block 1 dead, block 2 dominant", sick_mlp, lambda: torch.randn(8, 8)),
        (
            "ResNet (2, 2), post-activation",
            lambda: ResNet(layers=(2, 2), widths=(8, 16)),
            lambda: torch.randn(8, 3, 8, 8),
        ),
        (
            "PreActResNet (2, 2)",
            lambda: PreActResNet(layers=(2, 2), widths=(8, 16)),
            lambda: torch.randn(8, 3, 8, 8),
        ),
        (
            "TinyTransformer pre-LN, 2 blocks",
            lambda: TinyTransformer(vocab=32, dim=32, depth=2, max_len=8),
            ids,
        ),
        (
            "TinyTransformer post-LN, 2 blocks",
            lambda: TinyTransformer(vocab=32, dim=32, depth=2, max_len=8, norm="post"),
            ids,
        ),
        (
            "GPT-2 (transformers), 2 layers, d=32",
            gpt2,
            lambda: {"input_ids": torch.randint(0, 100, (4, 12))},
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.attribution_agreement", description=__doc__.split("\n")[0]
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'model':<44} {'site':<20} {'ablation':>8} {'gradient':>8} {'coherence':>9}")
    for title, make_model, make_inputs in cases():
        torch.manual_seed(args.seed)
        model, inputs = make_model(), make_inputs()
        exact = resdoctor.attribute(model, inputs, method="ablation")
        first = resdoctor.attribute(model, inputs, method="gradient")
        for k, (a, g) in enumerate(zip(exact, first, strict=True)):
            name = title if k == 0 else ""
            print(f"{name:<44} {a.name:<20} {a.share:>8.3f} {g.share:>8.3f} {g.coherence:>9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
