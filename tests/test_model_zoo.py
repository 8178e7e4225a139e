"""Models people train today, built from configs with random weights (no downloads): every
residual site is found and measured at every step, and a short healthy run raises nothing.

Issue 15 (the HF part): RMSNorm models (Llama, Mistral, Qwen2, Gemma2, T5) used to have their
sites found and never measured, because RMSNorm's ``x.to(float32)`` returns ``x`` itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import resdoctor

T = pytest.importorskip("transformers")

LAYERS = 2
DECODER = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
NEOX = dict(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
)


def _gemma2() -> Any:
    # Gemma scales embeddings by sqrt(hidden): at hidden 32 the tiny stream (0.02 * 5.7) is
    # dominated by its first branch for real; at a realistic width it is not
    cfg = {**DECODER, "hidden_size": 256, "intermediate_size": 512}
    return T.Gemma2ForCausalLM(T.Gemma2Config(**cfg, head_dim=64))


def _t5() -> Any:
    cfg = T.T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=LAYERS,
        num_decoder_layers=LAYERS,
        num_heads=4,
        decoder_start_token_id=0,
    )
    return T.T5ForConditionalGeneration(cfg)


# name -> (build, residual sites expected)
ZOO: dict[str, tuple[Callable[[], Any], int]] = {
    "llama": (lambda: T.LlamaForCausalLM(T.LlamaConfig(**DECODER)), 2 * LAYERS),
    "mistral": (lambda: T.MistralForCausalLM(T.MistralConfig(**DECODER)), 2 * LAYERS),
    "qwen2": (lambda: T.Qwen2ForCausalLM(T.Qwen2Config(**DECODER)), 2 * LAYERS),
    "gemma2": (_gemma2, 2 * LAYERS),
    # encoder blocks: attention + MLP; decoder blocks: self-, cross-attention + MLP
    "t5": (_t5, 2 * LAYERS + 3 * LAYERS),
    # parallel residual: x + attn(ln1 x) + mlp(ln2 x) is one site per block
    "gpt-neox-parallel": (
        lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**NEOX, use_parallel_residual=True)),
        LAYERS,
    ),
    "gpt-neox-serial": (
        lambda: T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**NEOX, use_parallel_residual=False)),
        2 * LAYERS,
    ),
    "falcon": (
        lambda: T.FalconForCausalLM(
            T.FalconConfig(
                vocab_size=100, hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4
            )
        ),
        LAYERS,
    ),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_site_is_found_and_measured_and_a_healthy_run_is_quiet(tmp_path, name):
    build, expected_sites = ZOO[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    ids = torch.randint(0, 100, (2, 12))
    steps = 4
    with resdoctor.watch(model, opt, tmp_path / "r.pt") as doctor:
        for _ in range(steps):
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    run = resdoctor.load(tmp_path / "r.pt")
    assert len(run.sites) == expected_sites
    ratio = run.series("branch_ratio")
    assert list(ratio.index) == list(range(steps))  # every step, step 0 included
    assert ratio.notna().all().all() and (ratio > 0).all().all()
    assert run.errors.empty
    report = resdoctor.analyze(run)
    assert [f.code for f in report.findings if f.severity != "info"] == []
