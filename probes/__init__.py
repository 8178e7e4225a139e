"""probes: small seeded sick (and healthy) training runs with measured ground truth, and an
evaluation of resdoctor on them. ``python -m probes list | run NAME | label NAME | eval``."""

from __future__ import annotations

from probes import catalog as _catalog  # noqa: F401 - registers the probes
from probes.measure import Measurement, Onset
from probes.probe import CODES, REGISTRY, Probe, Truth, label_problems
from probes.recipe import FixNotApplicable, Recipe, apply_fix

__all__ = [
    "CODES",
    "REGISTRY",
    "FixNotApplicable",
    "Measurement",
    "Onset",
    "Probe",
    "Recipe",
    "Truth",
    "apply_fix",
    "get",
    "label_problems",
    "names",
]


def names(fast: bool = False) -> list[str]:
    """Probe names in catalogue order (only the fast subset with ``fast``)."""
    return [n for n, p in REGISTRY.items() if p.fast or not fast]


def get(name: str) -> Probe:
    """The probe called ``name`` (KeyError with the known names otherwise)."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown probe {name!r}; known: {', '.join(REGISTRY)}") from None
