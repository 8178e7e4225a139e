"""The signal registry: every series a run file can hold, once.

The journal creates its series from here, ``Run`` reads them, the distributed merge combines
ranks by ``merge``, the app and W&B take labels from ``label``, and the README's signal table is
checked against it (``tests/test_signals_registry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Per = Literal["module", "site", "step", "activation"]
# how ranks combine: "norm" (a module's shards: root of the summed squares; replicas: first),
# "rms" (root mean square over ranks), "ratio" (sharded update ratio), "mean" (over ranks)
Merge = Literal["norm", "rms", "ratio", "mean"]


@dataclass(frozen=True)
class Signal:
    """One recorded signal: its series name, what a column is, its unit and meaning."""

    name: str
    per: Per
    unit: str
    meaning: str
    label: str
    merge: Merge = "mean"
    schedule: str | None = None  # the watch() option that samples it, if not every step


SIGNALS: tuple[Signal, ...] = (
    Signal(
        "grad_norm",
        "module",
        "L2",
        "L2 norm of the module's own parameter gradients, before "
        "clipping (AMP-unscaled with scaler=)",
        "gradient norm ‖∇W‖",
        "norm",
    ),
    Signal(
        "param_norm",
        "module",
        "L2",
        "‖w‖ of the module's parameters after the optimizer step",
        "parameter norm ‖W‖",
        "norm",
        "update_every",
    ),
    Signal(
        "update_ratio",
        "module",
        "ratio",
        "‖Δw‖ / ‖w‖ of the optimizer step",
        "update ratio ‖ΔW‖/‖W‖",
        "ratio",
        "update_every",
    ),
    Signal(
        "act_absmax",
        "module",
        "abs",
        "largest |value| in the module's output (the forward NaN/Inf check's min/max, kept): "
        "the headroom left to float16's 65504",
        "max |output|",
    ),
    Signal(
        "branch_ratio",
        "site",
        "ratio",
        "‖branch‖ / ‖skip‖ of out = skip + branch",
        "branch ratio ‖F(x)‖/‖x‖",
    ),
    Signal("skip_norm", "site", "RMS", "RMS of the skip operand", "skip RMS", "rms"),
    Signal("branch_norm", "site", "RMS", "RMS of the branch operand", "branch RMS", "rms"),
    Signal(
        "stream_norm",
        "site",
        "RMS",
        "RMS of the residual stream after the addition",
        "stream RMS",
        "rms",
    ),
    Signal(
        "grad_branch_share",
        "site",
        "share",
        "‖g_branch‖ / (‖g_branch‖ + ‖g_skip‖) of the gradient reaching the site's input",
        "gradient branch share",
        "mean",
        "grad_share_every",
    ),
    Signal(
        "smoothing",
        "site",
        "cosine",
        "mean pairwise cosine similarity of sampled tokens / nodes / positions",
        "mean cosine similarity",
        "mean",
        "smoothing_every",
    ),
    Signal(
        "smoothing_energy",
        "site",
        "ratio",
        "normalised Dirichlet energy of the sampled positions",
        "Dirichlet energy",
        "mean",
        "smoothing_every",
    ),
    Signal(
        "attribution_share",
        "site",
        "share",
        "share of the output attribution through the branch (captum, optional)",
        "attribution share",
        "mean",
        "attribute_every",
    ),
    Signal(
        "dead_units",
        "activation",
        "share",
        "share of a ReLU module's units (features / channels) that output 0 for the whole batch",
        "dead units",
        "mean",
        "units_every",
    ),
    Signal(
        "saturation",
        "activation",
        "share",
        "share of a sigmoid / tanh module's inputs beyond +-5 (the flat region)",
        "saturated inputs",
        "mean",
        "units_every",
    ),
    Signal(
        "scalars",
        "step",
        "as logged",
        "loss, lr, grad_norm_total and your log() scalars",
        "scalars",
    ),
)
BY_NAME = {s.name: s for s in SIGNALS}
MODULE_SIGNALS = tuple(s.name for s in SIGNALS if s.per == "module")
SITE_SIGNALS = tuple(s.name for s in SIGNALS if s.per == "site" and s.name != "attribution_share")
# the magnitudes of one site row, in the order the site sensor decodes them
SITE_MAGNITUDES = ("skip_norm", "branch_norm", "stream_norm")
SMOOTHING = ("smoothing", "smoothing_energy")


def label(name: str) -> str:
    """A chart label for ``name`` (the name itself for a signal not in the registry)."""
    found = BY_NAME.get(name)
    return found.label if found is not None else name


def merge_rule(name: str) -> Merge:
    """How the distributed merge combines ranks for ``name`` (``mean`` when unknown)."""
    found = BY_NAME.get(name)
    return found.merge if found is not None else "mean"
