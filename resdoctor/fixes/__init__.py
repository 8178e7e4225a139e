"""The fix catalogue (DESIGN.md section 7): one builder per fix code.

Every builder takes parameters measured on the run and returns a ``Fix`` whose ``params`` hold
them and whose ``snippet`` is Python that runs as is (or, for architectural changes, a template
that compiles). Snippets assume your objects are called ``model`` and ``optimizer``.
"""

from __future__ import annotations

from resdoctor.fixes.arch import (
    NORM_TYPES,
    add_normalization,
    add_normalization_layers,
    add_residual,
    guard_op,
    leaky_relu,
    pre_activation,
    pre_layernorm,
    qk_norm,
    reduce_depth,
    replace_activation,
    residual_scaling,
    xavier_init,
)
from resdoctor.fixes.data import check_inputs, overfit_batch, skip_batch, stable_loss
from resdoctor.fixes.graph import initial_residual, pairnorm
from resdoctor.fixes.optim import (
    TARGET_UPDATE_RATIO,
    clip_gradients,
    lower_lr,
    lr_warmup,
    mixed_precision,
    raise_lr,
)

FIX_CODES = (
    "clip-gradients",
    "lower-lr",
    "lr-warmup",
    "pre-activation",
    "pre-layernorm",
    "add-normalization",
    "residual-scaling",
    "guard-op",
    "mixed-precision",
    "reduce-depth",
    "initial-residual",
    "pairnorm",
    "check-inputs",
    "stable-loss",
    "add-residual",
    "skip-batch",
    "qk-norm",
    "raise-lr",
    "overfit-batch",
    "leaky-relu",
    "replace-activation",
    "xavier-init",
)

__all__ = [
    "FIX_CODES",
    "TARGET_UPDATE_RATIO",
    "NORM_TYPES",
    "add_normalization",
    "add_normalization_layers",
    "add_residual",
    "check_inputs",
    "clip_gradients",
    "guard_op",
    "initial_residual",
    "leaky_relu",
    "lower_lr",
    "lr_warmup",
    "mixed_precision",
    "overfit_batch",
    "pairnorm",
    "pre_activation",
    "pre_layernorm",
    "qk_norm",
    "raise_lr",
    "reduce_depth",
    "replace_activation",
    "residual_scaling",
    "skip_batch",
    "stable_loss",
    "xavier_init",
]
