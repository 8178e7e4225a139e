"""Build a ``Run`` from plain arrays, to test rules (yours too) without training anything.

Example::

    run = make_run(50, scalars={"loss": losses}, sites=["b0", "b1"],
                   site_series={"branch_ratio": {"b0": r0, "b1": r1}})
    findings = resdoctor.rules.registry.get("dead-branch")(run)

A value of ``None`` is "not measured"; ``float("nan")`` is a measured NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from resdoctor.runfile import io as runfile
from resdoctor.runfile.layout import SeriesState
from resdoctor.runfile.run import Run
from resdoctor.runfile.series import Series

Values = Sequence[float | None] | np.ndarray


def make_run(
    steps: int,
    *,
    scalars: Mapping[str, Values] | None = None,
    modules: Sequence[tuple[str, str, int]] = (),
    module_series: Mapping[str, Mapping[str, Values]] | None = None,
    sites: Sequence[str | Mapping[str, Any]] = (),
    site_series: Mapping[str, Mapping[str, Values]] | None = None,
    events: Sequence[Mapping[str, Any]] = (),
    skipped_steps: Sequence[int] = (),
    capacity: int = 4096,
) -> Run:
    """A ``Run`` of ``steps`` steps.

    Args:
        scalars: name -> one value per step (``loss``, ``lr``, ``grad_norm_total``, ...).
        modules: ``(name, type, params)`` in forward order (``order`` is the position).
        module_series: signal (``grad_norm``, ``update_ratio``, ``param_norm``) -> module -> values.
        sites: site names (identity sites of a module of that name) or full site dicts.
        site_series: signal (``branch_ratio``, ``stream_norm``, ...) -> site -> values.
        events: non-finite onsets: ``{"step", "module", "phase"}`` (+ optional ``detail``).
        skipped_steps: steps an AMP GradScaler skipped.
    """
    site_dicts = [_site(s, i) for i, s in enumerate(sites)]
    series = {"scalars": _series(scalars or {}, steps, capacity)}
    for signal, cols in {**(module_series or {}), **(site_series or {})}.items():
        series[signal] = _series(cols, steps, capacity)
    state = {
        "format": runfile.FORMAT,
        "schema_version": runfile.SCHEMA_VERSION,
        "resdoctor_version": "test",
        "torch_version": str(torch.__version__),
        "model_class": "Synthetic",
        "steps": int(steps),
        "options": {},
        "modules": [
            {"name": n, "type": t, "params": int(p), "order": i}
            for i, (n, t, p) in enumerate(modules)
        ],
        "sites": site_dicts,
        "series": series,
        "events": [
            {
                "kind": "nonfinite",
                "rank": 0,
                "phase": "forward",
                "module": "",
                "detail": {"amp_skipped": False},
                **dict(e),
            }
            for e in events
        ],
        "skipped_steps": torch.tensor(list(skipped_steps), dtype=torch.long),
        "errors": [],
    }
    return Run(state)  # type: ignore[arg-type]


def _site(spec: str | Mapping[str, Any], index: int) -> dict[str, Any]:
    if not isinstance(spec, str):
        return {"index": index, "kind": "identity", "module": "Block", "shape": [], **dict(spec)}
    return {
        "name": spec,
        "kind": "identity",
        "module": "Block",
        "index": index,
        "owner": spec,
        "shape": [8, 16],
        "skip": {"module": spec, "where": "input", "path": [0], "call": 0},
        "branch": {"module": f"{spec}.branch", "where": "output", "path": [], "call": 0},
        "result": {"module": spec, "where": "output", "path": [], "call": 0},
        "source": {"module": spec, "where": "input", "path": [0], "call": 0},
    }


def _series(columns: Mapping[str, Values], steps: int, capacity: int) -> SeriesState:
    names = list(columns)
    s = Series(names, capacity)
    table = np.full((steps, len(names)), np.nan)
    present = np.zeros((steps, len(names)), dtype=bool)
    for j, name in enumerate(names):
        values = list(columns[name])[:steps]
        for i, v in enumerate(values):
            if v is not None:
                table[i, j], present[i, j] = float(v), True
    for i in range(steps):
        if present[i].any():
            s.append(i, table[i], present[i])
    return s.to_state()


def diverging_run(steps: int = 30, nan_at: int = 20) -> Run:
    """A small synthetic sick run: the loss climbs from step ``nan_at // 2``, gradients surge,
    then a NaN appears at ``nan_at`` in ``b1.branch`` (forward). For renderer and CLI tests."""
    half = nan_at // 2
    loss = [2.0 - 0.05 * t for t in range(half)] + [3.0 * 1.5**t for t in range(nan_at - half)]
    loss += [float("nan")] * (steps - nan_at)
    grad = [1.0] * half + [20.0 * 2.0**t for t in range(nan_at - half)]
    grad += [float("inf")] * (steps - nan_at)
    modules = [("b0.branch", "Linear", 72), ("b1.branch", "Linear", 72), ("head", "Linear", 9)]
    return make_run(
        steps,
        scalars={"loss": loss, "grad_norm_total": grad, "lr": [0.1] * steps},
        modules=modules,
        sites=["b0", "b1"],
        site_series={
            "branch_ratio": {
                "b0": [None] + [0.5] * (steps - 1),
                "b1": [None] + [0.4] * (steps - 1),
            },
            "stream_norm": {"b0": [None] + [1.0] * (steps - 1), "b1": [None] + [1.2] * (steps - 1)},
        },
        events=[
            {
                "step": nan_at,
                "module": "b1.branch",
                "phase": "forward",
                "detail": {"input_absmax": 3.0, "amp_skipped": False},
            }
        ],
    )


def quiet_run(steps: int = 30) -> Run:
    """A small synthetic healthy run (the loss falls, nothing else happens)."""
    return make_run(
        steps,
        scalars={"loss": [2.0 * 0.95**t for t in range(steps)], "grad_norm_total": [1.0] * steps},
        sites=["b0", "b1"],
        site_series={
            "branch_ratio": {"b0": [None] + [0.5] * (steps - 1), "b1": [None] + [0.4] * (steps - 1)}
        },
    )
