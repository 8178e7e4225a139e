"""Probe: one small seeded run with a declared ground truth, and the registry of all probes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from probes.faults import FAULT_KEYS
from probes.labels import labels, trap_problems
from probes.measure import Measurement, Onset
from probes.recipe import (
    DATA_FAULT_KEYS,
    DATA_FIXES,
    TRAINING_FIXES,
    FixNotApplicable,
    Recipe,
    apply_fix,
)
from probes.train import Result, Setup, run

CODES = (
    "nonfinite",
    "exploding-gradients",
    "vanishing-gradients",
    "branch-dominance",
    "dead-branch",
    "activation-growth",
    "oversmoothing",
    "loss-divergence",
    "loss-spike",
    "grad-spike",
    "stalled-training",
    "dead-units",
    "saturation",
    "precision-overflow",
)


@dataclass(frozen=True)
class Truth:
    """Ground truth: codes that must be found, codes that may be found; all others are forbidden.

    ``onset``: for NaN probes, the exact first non-finite step, module and phase.
    ``traps``: for healthy controls, the trap they set (``amp-skips``, ``zero-init``,
    ``converged``), checked on the measurement too. ``primary``: the condition the probe was
    built to show; a fix cures the probe when it is gone (the others are reported beside it).
    """

    expect: frozenset[str]
    allow: frozenset[str] = frozenset()
    onset: Onset | None = None
    traps: frozenset[str] = frozenset()  # healthy controls: see labels.trap_problems
    primary: str | None = None  # the condition the probe was built to show (fix verification)

    @property
    def forbid(self) -> frozenset[str]:
        return frozenset(CODES) - self.expect - self.allow

    @property
    def healthy(self) -> bool:
        return not self.expect


@dataclass(frozen=True)
class Probe:
    """A named run: ``build(recipe)`` makes the model and data; ``fixes`` are the architecture
    fix codes its family can realise (training fixes apply to every probe, ``guard-op`` to a
    probe with a fault op; see ``supported``)."""

    name: str
    family: str
    summary: str
    truth: Truth
    recipe: Recipe
    build: Callable[[Recipe], Setup]
    fixes: frozenset[str] = frozenset()
    fast: bool = False
    cause: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)
    defaults: dict[str, Any] = field(default_factory=dict)  # the family's arch defaults
    remedy: tuple[str, dict[str, Any]] | None = None  # the fix a practitioner would apply

    @property
    def supported(self) -> frozenset[str]:
        """Every fix code this probe can apply."""
        guard = {"guard-op"} if FAULT_KEYS & set(self.recipe.arch) else set()
        data = DATA_FIXES if DATA_FAULT_KEYS & set(self.recipe.arch) else frozenset()
        return TRAINING_FIXES | self.fixes | guard | data

    def setup(self, recipe: Recipe | None = None) -> Setup:
        r = recipe or self.recipe
        torch.manual_seed(r.seed)
        return self.build(r)

    def measure(self, recipe: Recipe | None = None) -> Result:
        """Run with plain hooks only (no resdoctor): the label's evidence."""
        r = recipe or self.recipe
        return run(self.setup(r), r, measure=True)

    def record(
        self, path: str | os.PathLike[str] | None = None, recipe: Recipe | None = None
    ) -> Result:
        """Run under ``resdoctor.watch``; the run file goes to ``path`` (a temp file if None)."""
        r = recipe or self.recipe
        if path is None:
            fd, path = tempfile.mkstemp(prefix=f"probe-{self.name}-", suffix=".pt")
            os.close(fd)
        return run(self.setup(r), r, watch_path=os.fspath(path))

    def fixed(self, code: str, params: dict | None = None) -> Recipe:
        """The recipe with fix ``code`` applied (raises ``FixNotApplicable``).

        A ``guard-op`` that names a module must name the faulty one (or a module holding it).
        """
        target = (params or {}).get("module")
        onset = self.truth.onset
        if (
            code == "guard-op"
            and target is not None
            and onset is not None
            and not (target == onset.module or onset.module.startswith(f"{target}.") or not target)
        ):
            raise FixNotApplicable(f"guard-op targets {target!r}; the fault is in {onset.module!r}")
        full = replace(self.recipe, arch={**self.defaults, **self.recipe.arch})
        new = apply_fix(full, code, params, self.supported)
        if new == full:
            raise FixNotApplicable(f"{code}: the probe is built that way already")
        return new


REGISTRY: dict[str, Probe] = {}


def register(probe: Probe) -> Probe:
    if probe.name in REGISTRY:
        raise ValueError(f"duplicate probe name {probe.name!r}")
    REGISTRY[probe.name] = probe
    return probe


def label_problems(truth: Truth, m: Measurement) -> list[str]:
    """Where a measurement disagrees with a declared truth (empty: the label holds).

    Expected codes must be measured present and every code measured present must be expected;
    a borderline code must be expected or allowed; the NaN onset must match exactly.
    """
    problems = []
    for code, label in labels(m).items():
        if code in truth.expect and label.status != "present":
            problems.append(f"{code}: expected, measured {label.status} ({label.note})")
        elif code not in truth.expect and label.status == "present":
            problems.append(f"{code}: measured present but not expected ({label.note})")
        elif label.status == "borderline" and code not in truth.allow:
            problems.append(f"{code}: measured borderline but not allowed ({label.note})")
    if truth.onset is not None and m.onset != truth.onset:
        problems.append(f"onset: declared {truth.onset}, measured {m.onset}")
    return problems + trap_problems(truth.traps, m)
