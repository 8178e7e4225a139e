"""Models people train today, built from configs with random weights (no downloads): every
residual site is found and measured at every step, and a short healthy run raises nothing.

Issue 15: RMSNorm models (Llama, Mistral, Qwen2, Gemma2, T5) used to have their sites found and
never measured (RMSNorm's ``x.to(float32)`` returns ``x`` itself); GCNII counted its initial
representation, re-added in every layer, as a skip; DeepGCN counted its edge features the same
way and lost its checkpointed sites after step 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import resdoctor
from resdoctor.models import ResNet
from tests import _models

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
    "gpt2": (lambda: _models.gpt2(LAYERS)[0], 2 * LAYERS),
}
IDS = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
PIXELS = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _train(model: Any, loss_of: Callable[[Any], torch.Tensor], path: Any, steps: int = 4) -> Any:
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    with resdoctor.watch(model, opt, path) as doctor:
        for _ in range(steps):
            loss = loss_of(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            doctor.log(loss=loss)
    return resdoctor.load(path)


def _assert_measured_and_quiet(run: Any, expected_sites: int, steps: int = 4) -> None:
    assert len(run.sites) == expected_sites
    ratio = run.series("branch_ratio")
    assert list(ratio.index) == list(range(steps))  # every step, step 0 included
    assert ratio.notna().all().all()
    assert run.errors.empty
    report = resdoctor.analyze(run)
    assert [f.code for f in report.findings if f.severity != "info"] == []
    assert not [n for n in report.notes if "not measured" in n or "missing" in n]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_site_is_found_and_measured_and_a_healthy_run_is_quiet(tmp_path, name):
    build, expected_sites = ZOO[name]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
    run = _train(model, lambda m: m(input_ids=IDS, labels=IDS).loss, tmp_path / "r.pt")
    _assert_measured_and_quiet(run, expected_sites)
    assert (run.series("branch_ratio") > 0).all().all()


def _pooled(out: Any) -> torch.Tensor:
    return out.last_hidden_state.mean(1).pow(2).mean()


@pytest.mark.parametrize(
    "name, build, inputs, sites",
    [
        ("bert", lambda: _models.bert(LAYERS)[0], {"input_ids": IDS}, 2 * LAYERS),
        (
            "vit",
            lambda: _models.vit(LAYERS)[0],
            {"pixel_values": torch.randn(2, 3, 32, 32)},
            2 * LAYERS,
        ),
    ],
)
def test_encoders(tmp_path, name, build, inputs, sites):
    torch.manual_seed(0)
    run = _train(build(), lambda m: _pooled(m(**inputs)), tmp_path / "r.pt")
    _assert_measured_and_quiet(run, sites)


def test_zero_init_bn_resnet_and_layer_scale_convnext(tmp_path):
    """Branches zero at init by design (zero-init last BN; layer-scale 1e-6): measured from step
    0 (a zero branch is a ratio of 0, not a missing value) and no dead-branch alarm."""
    from tests.rules.test_dead_branch import _ConvNeXtBlock

    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    torch.manual_seed(0)
    resnet = ResNet((2, 2), widths=(8, 16), zero_init_residual=True)
    run = _train(resnet, lambda m: torch.nn.functional.cross_entropy(m(x), y), tmp_path / "a.pt")
    _assert_measured_and_quiet(run, 4)
    assert (run.series("branch_ratio").iloc[0] == 0).all()  # zero at init, by design
    convnext = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 4, 4),
        *[_ConvNeXtBlock(16) for _ in range(3)],
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 10),
    )
    run = _train(convnext, lambda m: torch.nn.functional.cross_entropy(m(x), y), tmp_path / "b.pt")
    _assert_measured_and_quiet(run, 3)


GRAPH = (torch.randn(30, 8), torch.randint(0, 30, (2, 90)), torch.randn(90, 4))
LABELS = torch.randint(0, 3, (30,))


def test_gcnii_has_no_stream_skip_and_is_measured_per_layer(tmp_path):
    """GCNII's initial residual re-adds x0 in every layer (a side input) and its identity
    mapping is one addmm: no residual site; over-smoothing is sampled at its layers instead,
    and the report says so."""
    pytest.importorskip("torch_geometric")
    torch.manual_seed(0)
    x, edges, _ = GRAPH
    run = _train(
        _models.GCNII(),
        lambda m: torch.nn.functional.cross_entropy(m(x, edges), LABELS),
        tmp_path / "g.pt",
        steps=12,
    )
    assert len(run.sites) == 0 and run.state["layers"] == [f"convs.{i}" for i in range(4)]
    smoothing = run.series("smoothing")
    assert smoothing.notna().any().all()  # every layer sampled
    report = resdoctor.analyze(run)
    assert any(n.startswith("no residual signals") for n in report.notes)
    assert report.to_dict()["verdict"] != "HEALTHY" or report.notes


@pytest.mark.parametrize("ckpt", [False, True], ids=["plain", "checkpointed"])
def test_deepgcn_res_plus(tmp_path, ckpt):
    """5 res+ adds + 6 GENConv ``out + x``; the edge features re-added in every message are no
    site; a reentrant-checkpointed layer is measured on every step, not only the first."""
    pytest.importorskip("torch_geometric")
    torch.manual_seed(0)
    x, edges, attr = GRAPH
    run = _train(
        _models.DeepGCN(layers=6, ckpt=ckpt),
        lambda m: torch.nn.functional.cross_entropy(m(x, edges, attr), LABELS),
        tmp_path / "d.pt",
    )
    _assert_measured_and_quiet(run, 11)
    owners = list(run.sites["owner"])
    assert owners.count("layers.0.conv") == 1 and "layers.0" not in owners
    assert sum(o.startswith("layers.") and o.count(".") == 1 for o in owners) == 5  # res+
