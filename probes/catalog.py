"""The probe catalogue. Every truth below was set from ``python -m probes label NAME`` (a run
with plain hooks, no resdoctor): ``expect`` = the conditions measured present, ``allow`` = those
measured borderline plus, for NaN probes, ``loss-divergence`` (a NaN loss may be read as one).
``tests/probes`` re-measures the fast ones; ``python -m probes eval`` re-measures all of them."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

from probes.families import cnn, gnn, hf, mlp, transformer
from probes.measure import Onset
from probes.probe import Probe, Truth, register
from probes.recipe import Recipe
from probes.train import Setup


def _t(expect: str = "", allow: str = "", onset: Onset | None = None, traps: str = "") -> Truth:
    """``expect``'s first code is the probe's primary condition."""
    codes = expect.split()
    return Truth(
        frozenset(codes),
        frozenset(allow.split()),
        onset,
        frozenset(traps.split()),
        codes[0] if codes else None,
    )


def _probe(
    name: str,
    family: str,
    summary: str,
    truth: Truth,
    recipe: Recipe,
    module: ModuleType,
    build: Callable[[Recipe], Setup] | None = None,
    fast: bool = False,
    cause: str = "",
    remedy: str = "",
    **params: Any,
) -> None:
    """``remedy``/``params``: the fix a practitioner would apply (``eval --remedies``)."""
    register(
        Probe(
            name,
            family,
            summary,
            truth,
            recipe,
            build or module.build,
            module.FIXES,
            fast=fast,
            cause=cause,
            defaults=module.DEFAULTS,
            remedy=(remedy, params) if remedy else None,
        )
    )


# -- non-finite: forward and backward faults at an exact step and module ------------------------
_probe(
    "mlp-sqrt-nan",
    "mlp",
    "sqrt() of an L1-pruned gate that crosses zero: forward NaN",
    _t("nonfinite", "loss-divergence", Onset(32, "blocks.3.branch.4", "forward")),
    Recipe(steps=40, lr=1e-2, arch={"norm": True, "depth": 6, "gate": (3, 0.3), "l1": 1.0}),
    mlp,
    fast=True,
    cause="an L1 penalty drives gate g below 0 at step 32; sqrt(g) is NaN",
    remedy="guard-op",
    eps=1e-6,
)
_probe(
    "postln-sqrt-nan",
    "post-ln",
    "post-LN transformer, sqrt() of a pruned gate in block 2",
    _t("nonfinite", "loss-divergence", Onset(34, "blocks.2.mlp.fault", "forward")),
    Recipe(steps=40, lr=3e-3, arch={"norm": "post", "depth": 4, "gate": (2, 0.1), "l1": 1.0}),
    transformer,
    cause="gate g crosses zero after ~g0/lr Adam steps; sqrt(g) is NaN",
    remedy="guard-op",
    eps=1e-6,
)
_probe(
    "gpt2-where-nan",
    "hf",
    "HF GPT-2, torch.where(g>0, sqrt(g), 0): finite forward, NaN grad",
    _t("nonfinite", "loss-divergence", Onset(34, "transformer.h.1.mlp.fault", "backward")),
    Recipe(steps=40, lr=3e-3, arch={"depth": 3, "where_gate": (1, 0.1), "l1": 1.0}),
    hf,
    build=hf.gpt2,
    cause="the unselected sqrt branch of torch.where has a NaN derivative once g < 0",
    remedy="guard-op",
    eps=1e-6,
)
_probe(
    "resnet-nangrad",
    "cnn",
    "ResNet whose block layer2.0 has a backward that returns NaN",
    _t("nonfinite", "loss-divergence", Onset(12, "layer2.0.bn2.fault", "backward")),
    Recipe(steps=24, lr=1e-2, arch={"layers": (1, 1, 1), "nan_grad": ("layer2.0", 12)}),
    cnn,
    fast=True,
    cause="a custom autograd.Function after bn2 returns NaN at step 12",
    remedy="guard-op",
    eps=1e-6,
)
_probe(
    "mlp-input-nan",
    "mlp",
    "one NaN feature in one sample of the input batch at step 9: the data, not the model",
    _t("nonfinite", "loss-divergence", Onset(9, "x", "input")),
    Recipe(steps=20, lr=1e-2, arch={"norm": True, "depth": 4, "bad_input": (9, 5)}),
    mlp,
    fast=True,
    cause="a corrupt record in the data set reaches the model at step 9",
    remedy="check-inputs",
)
_probe(
    "mlp-target-nan",
    "mlp",
    "a NaN regression target at step 9: the loss is NaN while every output is finite",
    _t("nonfinite", "loss-divergence", Onset(9, "loss", "loss")),
    Recipe(steps=20, lr=1e-2, arch={"norm": True, "depth": 4, "bad_target": (9, 5)}),
    mlp,
    fast=True,
    cause="a corrupt label in the data set makes the MSE loss NaN at step 9",
    remedy="stable-loss",
)

# -- exploding gradients / loss divergence --------------------------------------------------------
_probe(
    "mlp-sgd-explode",
    "mlp",
    "residual MLP, SGD warmed up to an unstable learning rate",
    _t(
        "exploding-gradients loss-divergence nonfinite",
        "",
        Onset(43, "blocks.7.branch.3", "forward"),
    ),
    Recipe(steps=60, lr=0.5, warmup=60, optimizer="sgd", momentum=0.0, arch={"depth": 8}),
    mlp,
    fast=True,
    cause="the LR crosses 2/sharpness during warm-up; activations overflow float32",
    remedy="lower-lr",
    factor=0.2,
)
_probe(
    "mlp-adam-explode",
    "mlp",
    "pre-LN residual MLP, Adam warmed up to lr 0.3",
    _t("exploding-gradients loss-divergence loss-spike grad-spike dead-units"),
    Recipe(steps=80, lr=0.3, warmup=60, arch={"norm": True, "depth": 8}),
    mlp,
    remedy="lower-lr",
    factor=0.1,
)
_probe(
    "preln-lr-diverge",
    "pre-ln",
    "pre-LN transformer, Adam warmed up to lr 0.5",
    _t(
        "loss-divergence branch-dominance",
        "activation-growth exploding-gradients dead-branch grad-spike",
    ),
    Recipe(steps=80, lr=0.5, warmup=60, arch={"depth": 4}),
    transformer,
    remedy="lower-lr",
    factor=0.1,
)
_probe(
    "gpt2-lr-diverge",
    "hf",
    "HF GPT-2, Adam warmed up to lr 0.3",
    _t("loss-divergence branch-dominance", "activation-growth dead-branch"),
    Recipe(steps=80, lr=0.3, warmup=60, arch={"depth": 3}),
    hf,
    build=hf.gpt2,
    remedy="lower-lr",
    factor=0.1,
)

# -- vanishing gradients / over-smoothing ---------------------------------------------------------
_probe(
    "mlp-sigmoid-vanish",
    "mlp",
    "plain 12-layer sigmoid MLP (no skips)",
    _t("vanishing-gradients oversmoothing"),
    Recipe(steps=60, lr=1e-2, arch={"residual": False, "depth": 12, "activation": "sigmoid"}),
    mlp,
    fast=True,
    remedy="add-residual",
)
_probe(
    "gcn-plain-deep",
    "gcn",
    "plain 16-layer GCN on an SBM graph (no skips)",
    _t(
        "oversmoothing vanishing-gradients exploding-gradients grad-spike dead-units",
        "stalled-training",
    ),
    Recipe(steps=60, lr=5e-3, arch={"kind": "plain", "depth": 16}),
    gnn,
    remedy="pairnorm",
)
_probe(
    "resgcn-nonorm-oversmooth",
    "gcn",
    "16 residual GCN layers (DeepGCN 'res'), no norm",
    _t("oversmoothing activation-growth", "dead-units"),
    Recipe(steps=60, lr=1e-2, arch={"kind": "res", "block": "res", "depth": 16}),
    gnn,
    remedy="pairnorm",
)

# -- branch dominance / dead branches / activation growth -----------------------------------------
_probe(
    "bert-initrange-dominance",
    "hf",
    "HF BERT (post-LN) with initializer_range=1.0",
    _t("branch-dominance oversmoothing"),
    Recipe(steps=40, lr=3e-3, arch={"depth": 3, "init_range": 1.0}),
    hf,
    build=hf.bert,
    remedy="residual-scaling",
    scale=0.02,
)  # back to the default init's 0.02 / 1.0
_probe(
    "postln-scale-dominance",
    "post-ln",
    "post-LN transformer scaling each branch by 8",
    _t("branch-dominance oversmoothing vanishing-gradients", "stalled-training"),
    Recipe(steps=60, lr=3e-3, arch={"norm": "post", "depth": 4, "residual_scale": 8.0}),
    transformer,
    remedy="residual-scaling",
    scale=0.125,
)
_probe(
    "preln-tinyscale-dead",
    "pre-ln",
    "pre-LN transformer scaling each branch by 1e-3 at a low LR: branches near 0 that never grow",
    _t("dead-branch", "stalled-training"),
    Recipe(steps=60, lr=3e-4, arch={"depth": 4, "residual_scale": 1e-3}),
    transformer,
    fast=True,
    remedy="residual-scaling",
    scale=1.0,
)
_probe(
    "mlp-deadrelu",
    "mlp",
    "residual MLP whose branches end in ReLU after a -4 bias",
    _t("dead-branch dead-units"),
    Recipe(steps=60, lr=1e-3, arch={"depth": 6, "dead_bias": -4.0}),
    mlp,
    fast=True,
    remedy="add-normalization",
)
_probe(
    "mlp-kaiming-growth",
    "mlp",
    "12 un-normalised residual blocks with He init, no scaling",
    _t("activation-growth", "exploding-gradients oversmoothing"),
    Recipe(steps=60, lr=1e-3, arch={"depth": 12, "init": "kaiming"}),
    mlp,
    fast=True,
    remedy="residual-scaling",
    scale=0.29,
)
_probe(
    "resnet-nobn-growth",
    "cnn",
    "ResNet (6, 6) without BatchNorm, He init",
    _t("activation-growth", "exploding-gradients"),
    Recipe(steps=40, lr=1e-4, arch={"norm": False, "init": "kaiming", "layers": (6, 6)}),
    cnn,
    remedy="residual-scaling",
    scale=0.5,
)

_probe(
    "llama-scale-dominance",
    "hf",
    "HF Llama (RMSNorm) scaling each branch by 8",
    _t("branch-dominance oversmoothing"),
    Recipe(steps=40, lr=3e-3, arch={"depth": 3, "residual_scale": 8.0}),
    hf,
    build=hf.llama,
    remedy="residual-scaling",
    scale=0.125,
)
_probe(
    "llama-tinyscale-dead",
    "hf",
    "HF Llama (RMSNorm) scaling each branch by 1e-3 at a low LR: branches that never grow",
    _t("dead-branch", "stalled-training"),
    Recipe(steps=60, lr=1e-4, arch={"depth": 3, "residual_scale": 1e-3}),
    hf,
    build=hf.llama,
    remedy="residual-scaling",
    scale=1.0,
)

# -- spikes ---------------------------------------------------------------------------------------
_probe(
    "preln-bad-batches",
    "pre-ln",
    "pre-LN transformer meeting three batches from another distribution (scrambled tokens)",
    _t("loss-spike", "grad-spike"),  # the gradient norm spikes x2-3: borderline
    Recipe(steps=80, lr=3e-3, arch={"depth": 4, "bad_batches": (40, 55, 70)}),
    transformer,
    cause="three corrupt batches at steps 40, 55 and 70: the loss spikes and recovers",
)

_probe(
    "mlp-tiny-lr-stalled",
    "mlp",
    "residual MLP with SGD at lr 1e-6: the loss stays at its start, gradients are fine",
    _t("stalled-training"),
    Recipe(steps=64, lr=1e-6, optimizer="sgd", momentum=0.0, arch={"depth": 4}),
    mlp,
    fast=True,
    cause="a learning rate 10,000x too small",
    remedy="raise-lr",
    factor=100.0,
)

_probe(
    "preln-tiny-lr-stalled",
    "pre-ln",
    "pre-LN transformer with Adam at lr 1e-6: the loss stays where it started, gradients are fine",
    _t("stalled-training"),
    Recipe(steps=64, lr=1e-6, arch={"depth": 2}),
    transformer,
    cause="a learning rate 1,000x too small",
    remedy="raise-lr",
    factor=100.0,
)

_probe(
    "mlp-tanh-saturated",
    "mlp",
    "plain 6-layer tanh MLP with every weight scaled x5: the tanh inputs sit beyond +-5",
    _t("saturation grad-spike", "exploding-gradients"),
    Recipe(
        steps=60,
        lr=1e-3,
        arch={"residual": False, "depth": 6, "activation": "tanh", "init_gain": 5.0},
    ),
    mlp,
    cause="an initialisation 5x too large for a tanh network",
    remedy="xavier-init",
)

_probe(
    "mlp-sigmoid-saturated",
    "mlp",
    "plain 6-layer sigmoid MLP with every weight scaled x8: the sigmoid inputs sit beyond +-5",
    _t("saturation"),
    Recipe(
        steps=60,
        lr=1e-3,
        arch={"residual": False, "depth": 6, "activation": "sigmoid", "init_gain": 8.0},
    ),
    mlp,
    cause="an initialisation 8x too large for a sigmoid network",
    remedy="xavier-init",
)

# -- healthy controls (traps) -------------------------------------------------------------------
_probe(
    "mlp-converged",
    "mlp",
    "trap: a converged model with tiny gradients",
    _t(traps="converged"),
    Recipe(steps=120, lr=2e-2, arch={"norm": True, "depth": 4, "dim": 16, "task": "linear"}),
    mlp,
    fast=True,
)
_probe(
    "resnet-preact",
    "cnn",
    "trap: pre-activation ResNet, stream grows like sqrt(depth)",
    _t(),
    Recipe(steps=40, lr=1e-2, arch={"preact": True, "layers": (2, 2, 2)}),
    cnn,
)
_probe(
    "resnet-zeroinit",
    "cnn",
    "trap: zero-initialised residual branches that wake up",
    _t(traps="zero-init"),
    Recipe(steps=40, lr=1e-2, arch={"layers": (1, 1, 1), "zero_init": True}),
    cnn,
    fast=True,
)
_probe(
    "mlp-fp16-overflow",
    "mlp",
    "fp16 autocast, plain MLP, regression targets of order 1e5: the head's output climbs to 65504",
    _t(
        "precision-overflow nonfinite",
        "exploding-gradients loss-divergence",
        onset=Onset(43, "head", "forward"),
    ),
    Recipe(
        steps=60, lr=0.03, amp="fp16", arch={"depth": 2, "residual": False, "target_scale": 1e5}
    ),
    mlp,
    fast=True,
    remedy="mixed-precision",
    dtype="bfloat16",
)
_probe(
    "mlp-fp16-overflow-seed1",
    "mlp",
    "fp16 autocast, plain MLP, targets of order 1e5, another seed and data draw",
    _t(
        "precision-overflow nonfinite",
        "exploding-gradients loss-divergence",
        onset=Onset(39, "head", "forward"),
    ),
    Recipe(
        steps=60,
        lr=0.03,
        amp="fp16",
        seed=1,
        arch={"depth": 2, "residual": False, "target_scale": 1e5},
    ),
    mlp,
    remedy="mixed-precision",
    dtype="bfloat16",
)
_probe(
    "mlp-amp-fp16",
    "mlp",
    "trap: fp16 autocast + GradScaler skipping overflow steps",
    _t(traps="amp-skips"),
    Recipe(steps=60, lr=1e-3, amp="fp16", init_scale=2.0**24, arch={"norm": True, "depth": 8}),
    mlp,
    fast=True,
)
_probe(
    "preln-healthy",
    "pre-ln",
    "pre-LN transformer, sane learning rate",
    _t(),
    Recipe(steps=60, lr=3e-3, arch={"depth": 4}),
    transformer,
)
_probe(
    "gpt2-healthy",
    "hf",
    "HF GPT-2 from a config, sane learning rate",
    _t(),
    Recipe(steps=40, lr=3e-3, arch={"depth": 3}),
    hf,
    build=hf.gpt2,
)
_probe(
    "resgcn-healthy",
    "gcn",
    "8 DeepGCN res+ layers with LayerNorm",
    _t(),
    Recipe(steps=60, lr=1e-2, arch={"kind": "res", "depth": 8, "norm": True}),
    gnn,
)
_probe(
    "llama-layerscale",
    "hf",
    "trap: HF Llama with learnable layer-scale 1e-3 on every branch, waking under AdamW",
    _t(allow="dead-branch", traps="layer-scale"),  # measured low (0.02) but waking
    Recipe(steps=80, lr=3e-3, arch={"depth": 3, "layer_scale": 1e-3}),
    hf,
    build=hf.llama,
)
