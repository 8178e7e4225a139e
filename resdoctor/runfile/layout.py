"""The run file's layout, typed once (DESIGN.md section 5). ``io`` writes and validates these;
``Run`` is the only reader of them: everything after it (rules, report, views) reads a ``Run``.

Every value is a plain container, number, string or tensor, so ``torch.load(weights_only=True)``
reads the file without running code from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypedDict

import numpy as np
import torch

FORMAT = "resdoctor-run"
SCHEMA_VERSION = 1
# where a NaN/Inf was made, in the order they happen within one step (DESIGN.md section 4)
PHASES = ("input", "forward", "loss", "backward", "optimizer")


def phase_rank(phase: object, received: bool = False) -> tuple[int, bool]:
    """Sort key of an onset within one step: by phase, a rank's own onset before one it only
    received through a collective; unknown phases last."""
    return (PHASES.index(phase) if phase in PHASES else len(PHASES), received)


class SeriesState(TypedDict):
    """One bounded series: rows are step buckets (``stride`` steps each) x ``columns``."""

    columns: list[str]
    stride: int
    capacity: int
    steps: torch.Tensor  # [rows] int64, first step of each bucket
    count: torch.Tensor  # [rows] int64, steps merged into each bucket
    n: torch.Tensor | None  # [rows, columns] int32 samples per cell; None: every cell = count
    mean: torch.Tensor  # [rows, columns] float32
    max: torch.Tensor
    min: torch.Tensor


class ModuleState(TypedDict):
    name: str  # dotted path, "<root>" for the model itself
    type: str
    params: int
    order: int  # forward completion order, -1 when not seen
    # optional "nan_ops": list[str], the NaN-prone ops its own code ran (traced forward)


class TapState(TypedDict):
    module: str
    where: str  # "input" | "output"
    path: list[Any]
    call: int


class SiteState(TypedDict):
    name: str
    kind: str  # "identity" | "projection"
    module: str
    index: int
    owner: str
    shape: list[int]
    skip: TapState | None
    branch: TapState | None
    result: TapState | None
    source: TapState | None


class EventState(TypedDict):
    kind: str  # "nonfinite"
    step: int
    module: str
    phase: str  # one of PHASES
    rank: int | None
    detail: dict[str, Any]


class ErrorState(TypedDict, total=False):
    where: str
    type: str
    message: str
    count: int
    first_step: int
    rank: int


class RunState(TypedDict, total=False):
    """A whole run file. Required keys: ``io.REQUIRED``."""

    format: str
    schema_version: int
    resdoctor_version: str
    torch_version: str
    written: float
    created: float
    model_class: str
    rank: int | None
    world_size: int
    path: str
    device: str
    architecture: str  # "graph" | "transformer" | "convolutional" | "mlp" (optional)
    optimizers: list[str]  # class names of the watched optimizers (optional)
    param_dtype: str  # the narrowest floating dtype of the parameters ("float32", "float16")
    autocast: str  # the autocast dtype seen in a forward ("float16", "bfloat16"), if any
    compiled: bool  # watched a torch.compile'd module: only its boundary was hooked
    grad_scaler: bool  # a GradScaler was passed to watch(): skipped steps are AMP skips
    steps_without_forward: int  # steps that stepped with no forward resdoctor saw
    unmeasured_inputs: list[str]  # model inputs the checks cannot read (sparse tensors)
    options: dict[str, Any]
    steps: int
    modules: list[ModuleState]
    sites: list[SiteState]
    layers: list[str]  # models without sites: where smoothing was sampled
    series: dict[str, SeriesState]
    events: list[EventState]
    skipped_steps: torch.Tensor
    errors: list[ErrorState]
    distributed: dict[str, Any]
    attribution: dict[str, Any]
    ranks: list[int]
    missing_ranks: list[int]
    merged: bool


def cell_counts(series: SeriesState | Mapping[str, Any]) -> np.ndarray:
    """``[rows, columns]`` samples per cell: ``n``, or ``count`` in every cell when ``n`` was
    left out (the file omits a full table to stay small)."""
    n = series.get("n")
    if n is not None:
        return n.numpy()
    return np.repeat(series["count"].numpy()[:, None], len(series["columns"]), axis=1)
