"""Hugging Face ``transformers`` models built from a config with random weights (no download)."""

from __future__ import annotations

from typing import Any

from torch import nn

from probes import data
from probes.faults import WhereGate, Wrapped
from probes.measure import At, SiteTap
from probes.recipe import Recipe
from probes.train import Setup

FIXES = frozenset({"residual-scaling", "reduce-depth"})

DEFAULTS: dict[str, Any] = {
    "depth": 3,
    "dim": 32,
    "heads": 4,
    "init_range": 0.02,
    "residual_scale": 1.0,
}


def _scale_branches(model: nn.Module, outputs: list[str], scale: float) -> None:
    """Residual scaling: multiply each branch's output (a forward hook on its last layer)."""
    modules = dict(model.named_modules())
    for name in outputs:
        modules[name].register_forward_hook(lambda m, i, o, s=scale: o * s)


def gpt2(r: Recipe) -> Setup:
    """arch: depth, dim, heads, init_range, where_gate (block, init), guard_eps, l1,
    residual_scale."""
    from transformers import GPT2Config, GPT2LMHeadModel

    a: dict[str, Any] = {**DEFAULTS, **r.arch}
    cfg = GPT2Config(
        n_layer=a["depth"],
        n_embd=a["dim"],
        n_head=a["heads"],
        vocab_size=64,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=a["init_range"],
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(cfg)
    model.config.use_cache = False
    gate = a.get("where_gate")
    if gate is not None and gate[0] < a["depth"]:
        block = model.transformer.h[gate[0]]
        block.mlp = Wrapped(block.mlp, WhereGate(gate[1], a.get("guard_eps")))
    mlp = "mlp.inner" if gate is not None else "mlp"
    h = [f"transformer.h.{i}" for i in range(a["depth"])]
    if a.get("residual_scale", 1.0) != 1.0:
        _scale_branches(
            model,
            [f"{b}.attn.c_proj" for b in h] + [f"{b}.{mlp}.c_proj" for b in h],
            float(a["residual_scale"]),
        )
    taps = []
    for b in h:
        taps += [
            SiteTap(f"{b}#0", skip=At(b, "in"), result=At(f"{b}.ln_2", "in")),
            SiteTap(f"{b}#1", skip=At(f"{b}.ln_2", "in"), result=At(b)),
        ]
    return Setup(
        model, data.tokens(seed=r.seed), data.cross_entropy, taps, l1=float(a.get("l1", 0.0))
    )


def bert(r: Recipe) -> Setup:
    """BERT (post-LN) as a token classifier over the next-token task.
    arch: depth, dim, heads, init_range, residual_scale."""
    from transformers import BertConfig, BertForTokenClassification

    a: dict[str, Any] = {**DEFAULTS, **r.arch}
    cfg = BertConfig(
        num_hidden_layers=a["depth"],
        hidden_size=a["dim"],
        num_attention_heads=a["heads"],
        intermediate_size=4 * a["dim"],
        vocab_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=a["init_range"],
        classifier_dropout=0.0,
    )
    cfg.num_labels = 64
    model = BertForTokenClassification(cfg)
    layers = [f"bert.encoder.layer.{i}" for i in range(a["depth"])]
    outs = [f"{b}.attention.output" for b in layers] + [f"{b}.output" for b in layers]
    if a.get("residual_scale", 1.0) != 1.0:
        _scale_branches(model, [f"{o}.dense" for o in outs], float(a["residual_scale"]))
    taps = []
    for b in layers:  # BertSelfOutput / BertOutput: LayerNorm(dense(h) + input_tensor)
        for i, o in enumerate((f"{b}.attention.output", f"{b}.output")):
            taps.append(SiteTap(f"{o}#{i}", skip=At(o, "in", 1), result=At(f"{o}.LayerNorm", "in")))
    return Setup(model, data.tokens(seed=r.seed), data.cross_entropy, taps)


class LayerScale(nn.Module):
    """``gamma * x`` with a learnable per-channel gamma (CaiT / ConvNeXt layer-scale)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        import torch

        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Any) -> Any:
        return self.gamma * x


def llama(r: Recipe) -> Setup:
    """HF Llama (RMSNorm, pre-norm, SwiGLU; its RMSNorm's no-op ``.to(float32)`` once hid
    every site). arch: depth, dim, heads, init_range, residual_scale (each branch's output
    multiplied by a constant), layer_scale (a learnable layer-scale gamma initialised at it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    a: dict[str, Any] = {**DEFAULTS, **r.arch}
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=a["dim"],
        intermediate_size=2 * a["dim"],
        num_hidden_layers=a["depth"],
        num_attention_heads=a["heads"],
        num_key_value_heads=a["heads"],
        max_position_embeddings=32,
        initializer_range=a["init_range"],
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg)
    model.config.use_cache = False
    layers = [f"model.layers.{i}" for i in range(a["depth"])]
    if a.get("layer_scale"):
        for layer in model.model.layers:
            layer.self_attn.o_proj = nn.Sequential(
                layer.self_attn.o_proj, LayerScale(a["dim"], a["layer_scale"])
            )
            layer.mlp.down_proj = nn.Sequential(
                layer.mlp.down_proj, LayerScale(a["dim"], a["layer_scale"])
            )
    if a.get("residual_scale", 1.0) != 1.0:
        outs = [f"{b}.self_attn.o_proj" for b in layers] + [f"{b}.mlp.down_proj" for b in layers]
        _scale_branches(model, outs, float(a["residual_scale"]))
    taps = []
    for b in layers:  # h = x + attn(norm1(x)); out = h + mlp(norm2(h))
        taps += [
            SiteTap(f"{b}#0", skip=At(b, "in"), result=At(f"{b}.post_attention_layernorm", "in")),
            SiteTap(f"{b}#1", skip=At(f"{b}.post_attention_layernorm", "in"), result=At(b)),
        ]
    return Setup(
        model, data.tokens(seed=r.seed), data.cross_entropy, taps, l1=float(a.get("l1", 0.0))
    )
