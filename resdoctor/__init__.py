"""resdoctor: a training-health doctor for residual networks.

``watch`` records, ``load`` reads a run, ``analyze`` diagnoses it, ``discover`` finds
residual sites.
Heavy dependencies (pandas for ``load``, the rules for ``analyze``) load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# first: checks the torch version (one clear line on a torch that is too old)
from resdoctor.version import __version__  # isort: skip
from resdoctor.findings import Finding, Fix
from resdoctor.recording.discovery import Site, discover
from resdoctor.recording.options import Options
from resdoctor.recording.watcher import Watcher, watch
from resdoctor.runfile.io import RunFileError

if TYPE_CHECKING:
    from resdoctor.report.analysis import Report
    from resdoctor.runfile.run import Run

__all__ = [
    "Finding",
    "Fix",
    "Options",
    "Report",
    "Run",
    "RunFileError",
    "Site",
    "Watcher",
    "__version__",
    "analyze",
    "attribute",
    "discover",
    "load",
    "watch",
]


def load(path: Any) -> Run:
    """Load a run file (``weights_only=True``) as a ``Run`` with pandas views of every series."""
    from resdoctor.runfile.run import Run

    return Run.load(path)


def analyze(run: Any, **kwargs: Any) -> Report:
    """Diagnose a run (a path or a ``Run``): a ``Report`` with ``.verdict`` and ``.findings``."""
    from resdoctor.report.analysis import analyze as _analyze

    return _analyze(run, **kwargs)


def attribute(model: Any, inputs: Any, target: Any = None, sites: Any = None, **kwargs: Any) -> Any:
    """Per-site share of the output attribution through branch vs skip (needs captum)."""
    from resdoctor.attribution.shares import attribute as _attribute

    return _attribute(model, inputs, target=target, sites=sites, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "Run":
        from resdoctor.runfile.run import Run

        return Run
    if name == "Report":
        from resdoctor.report.analysis import Report

        return Report
    if name in _LAZY_PACKAGES:  # ``@resdoctor.rules.rule`` after a plain ``import resdoctor``
        import importlib

        return importlib.import_module(f"resdoctor.{name}")
    raise AttributeError(f"module 'resdoctor' has no attribute {name!r}")


_LAZY_PACKAGES = ("rules", "fixes", "integrations", "models")
