"""Recipe: every knob of one probe run, and how a fix code turns into a changed recipe."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

Optimizer = Literal["adam", "adamw", "sgd"]
Amp = Literal["none", "fp16", "bf16"]


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters plus architecture knobs (``arch``) a probe's builder reads.

    ``arch`` keys are family specific; the common ones that fixes set are ``norm``,
    ``residual_scale``, ``guard_eps``, ``depth``, ``preact``, ``initial_residual``, ``pairnorm``
    and ``residual``.
    """

    steps: int = 60
    lr: float = 1e-3
    optimizer: Optimizer = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    clip: float | None = None
    warmup: int = 0
    amp: Amp = "none"
    init_scale: float = 2.0**16
    seed: int = 0
    arch: dict[str, Any] = field(default_factory=dict)

    def with_arch(self, **changes: Any) -> Recipe:
        """A copy with ``arch`` keys changed."""
        return replace(self, arch={**self.arch, **changes})


class FixNotApplicable(ValueError):
    """The probe cannot apply this fix code (unknown code, or the family has no such variant)."""


def param(params: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """The first of ``keys`` present in a fix's ``params`` (rules name things differently)."""
    for key in keys:
        value = params.get(key)
        if value is not None:
            return value
    return default


def _lower_lr(r: Recipe, p: dict[str, Any]) -> Recipe:
    """Scale the configured (peak) LR by ``factor``; a bare ``new_lr`` replaces it."""
    factor = param(p, "factor", "lr_factor", "multiplier")
    if factor is None:
        new_lr = param(p, "new_lr", "lr")
        return replace(r, lr=float(new_lr) if new_lr is not None else r.lr * 0.1)
    factor = float(factor)
    factor = factor if factor < 1.0 else 1.0 / factor  # "divide by 10" and "times 0.1" alike
    return replace(r, lr=r.lr * factor)


def _warmup(r: Recipe, p: dict[str, Any]) -> Recipe:
    steps = param(p, "warmup_steps", "steps", "warmup", default=max(1, r.steps // 5))
    return replace(r, warmup=int(steps))


def _clip(r: Recipe, p: dict[str, Any]) -> Recipe:
    return replace(r, clip=float(param(p, "max_norm", "clip", "norm", default=1.0)))


def _scale(r: Recipe, p: dict[str, Any]) -> Recipe:
    value = param(p, "value", "scale", "alpha", "residual_scale")
    if value is None:
        depth = int(r.arch.get("depth", 4))
        value = 1.0 / (2 * depth) ** 0.5
    return r.with_arch(residual_scale=float(value))


def _guard(r: Recipe, p: dict[str, Any]) -> Recipe:
    return r.with_arch(guard_eps=float(param(p, "eps", "epsilon", default=1e-6)))


def _depth(r: Recipe, p: dict[str, Any]) -> Recipe:
    """Keep the share ``depth / depth_before`` of the blocks (the tool counts residual sites,
    which may be two per block); a bare ``depth`` is taken as the new number of blocks."""
    if "depth" in r.arch:
        current = int(r.arch["depth"])
    elif "layers" in r.arch:
        current = sum(r.arch["layers"])
    else:
        raise FixNotApplicable("reduce-depth: the recipe does not state its depth")
    keep, before = param(p, "depth", "new_depth"), param(p, "depth_before")
    if keep is not None and before:
        new = round(current * float(keep) / float(before))
    else:
        new = int(keep) if keep is not None else current // 2
    return r.with_arch(depth=max(1, min(new, current - 1) if current > 1 else 1))


def _initial_residual(r: Recipe, p: dict[str, Any]) -> Recipe:
    return r.with_arch(initial_residual=float(param(p, "alpha", "value", default=0.1)))


def _mixed_precision(r: Recipe, p: dict[str, Any]) -> Recipe:
    dtype = str(param(p, "dtype", default="bf16")).replace("bfloat16", "bf16")
    return replace(r, amp="bf16" if "bf16" in dtype else "fp16")


def _xavier(r: Recipe, p: dict[str, Any]) -> Recipe:
    """Back to the default (Glorot-like) init: only a recipe that scaled its weights changes."""
    if not r.arch.get("init_gain"):
        raise FixNotApplicable("xavier-init: this recipe keeps the default initialisation")
    return r.with_arch(init_gain=None)


def _raise_lr(r: Recipe, p: dict[str, Any]) -> Recipe:
    factor = float(param(p, "factor", default=10.0))
    return replace(r, lr=r.lr * max(factor, 1.0))


TRAINING_FIXES = frozenset(
    {"clip-gradients", "lower-lr", "lr-warmup", "mixed-precision", "raise-lr"}
)
FIXES = {
    "raise-lr": _raise_lr,
    "clip-gradients": _clip,
    "lower-lr": _lower_lr,
    "lr-warmup": _warmup,
    "residual-scaling": _scale,
    "guard-op": _guard,
    "reduce-depth": _depth,
    "initial-residual": _initial_residual,
    "mixed-precision": _mixed_precision,
    "pre-activation": lambda r, p: r.with_arch(preact=True),
    "pre-layernorm": lambda r, p: r.with_arch(norm="pre"),
    "add-normalization": lambda r, p: r.with_arch(
        norm="pre" if isinstance(r.arch.get("norm"), str) else True
    ),
    "pairnorm": lambda r, p: r.with_arch(pairnorm=True),
    "add-residual": lambda r, p: r.with_arch(residual=True),
    "check-inputs": lambda r, p: r.with_arch(drop_bad_rows=True),
    "skip-batch": lambda r, p: r.with_arch(bad_batches=()),  # those steps' batches skipped
    "replace-activation": lambda r, p: r.with_arch(activation="gelu"),
    "xavier-init": _xavier,
    "leaky-relu": lambda r, p: r.with_arch(activation="gelu"),  # no ReLU left to die
    "stable-loss": lambda r, p: r.with_arch(drop_bad_rows=True),
}
DATA_FIXES = frozenset({"check-inputs", "stable-loss", "skip-batch"})
DATA_FAULT_KEYS = frozenset({"bad_input", "bad_target", "bad_batches"})  # arch keys of a data fault


def apply_fix(
    recipe: Recipe,
    code: str,
    params: dict[str, Any] | None = None,
    supported: frozenset[str] | None = None,
) -> Recipe:
    """The recipe with fix ``code`` applied, parameters taken from the fix's ``params``.

    Raises:
        FixNotApplicable: unknown code, or not in the probe's ``supported`` codes.
    """
    if code not in FIXES or (supported is not None and code not in supported):
        raise FixNotApplicable(f"probe cannot apply fix {code!r}")
    return FIXES[code](recipe, dict(params or {}))
