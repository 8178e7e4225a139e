"""The rule engine: every rule is a pure function of a Run returning Findings.

Built-in rules (one per file) emit the finding codes of DESIGN.md section 7. Add your own with
the ``@rule`` decorator or a ``resdoctor.rules`` entry point; tune thresholds with keyword
arguments (``analyze(run, **{"exploding-gradients.surge_factor": 20})``), ``--set`` on the
command line or a TOML / JSON ``--config`` file (``[exploding-gradients] surge_factor = 20``;
``enabled = false`` turns a rule off).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from resdoctor.findings import Finding
from resdoctor.rules import _config
from resdoctor.rules._config import ConfigError, parse_settings, read_config
from resdoctor.rules._registry import Registry, Rule, registry, rule
from resdoctor.rules._timeline import annotate, timeline
from resdoctor.runfile.run import Run

__all__ = [
    "ConfigError",
    "Registry",
    "Rule",
    "parse_settings",
    "read_config",
    "registry",
    "rule",
    "rules",
    "run_rules",
    "settings",
    "timeline",
]


def _load_builtins() -> None:
    from resdoctor.rules import (  # noqa: F401 - imported to register the rules
        activation_growth,
        branch_dominance,
        dead_branch,
        exploding_gradients,
        loss_divergence,
        nonfinite,
        oversmoothing,
        precision_overflow,
        spikes,
        stalled_training,
        units,
        vanishing_gradients,
    )


_load_builtins()


def rules() -> list[Rule]:
    """Every registered rule (built-in, decorated and entry-point rules)."""
    return list(registry)


def settings(
    config: str | os.PathLike[str] | Mapping[str, Any] | None = None, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    """Validated ``{rule code: {threshold: value}}`` from a config (file or mapping) and
    keyword arguments (later wins). Raises ``ConfigError``."""
    layers: list[Mapping[str, Mapping[str, Any]]] = []
    if isinstance(config, Mapping):
        layers.append(_config.from_kwargs(config))
    elif config is not None:
        layers.append(read_config(config))
    layers.append(_config.from_kwargs(kwargs))
    merged = _config.merge(*layers)
    _config.validate(merged, registry)
    return merged


def run_rules(
    run: Run, *, config: str | os.PathLike[str] | Mapping[str, Any] | None = None, **kwargs: Any
) -> tuple[list[Finding], list[str]]:
    """Run every enabled rule on ``run``: ``(findings, notes)``.

    A rule whose signals were not recorded is skipped with a note; a rule that fails is reported
    in the notes (never raised). Unknown rules or thresholds raise ``ConfigError``.
    """
    chosen = settings(config, **kwargs)
    findings: list[Finding] = []
    notes: list[str] = list(registry.load_errors)
    for r in registry:
        params = dict(chosen.get(r.code, {}))
        if params.pop("enabled", True) is False:
            notes.append(f"{r.code}: disabled")
            continue
        missing = r.missing(run)
        if missing:
            notes.append(f"{r.code}: skipped, needs {' and '.join(missing)} (not recorded)")
            continue
        params = {k: _coerce(v, r.defaults[k]) for k, v in params.items()}
        try:
            produced = r(run, **params)
        except Exception as e:  # noqa: BLE001 - a broken rule must not stop the diagnosis
            notes.append(f"{r.code}: rule failed ({type(e).__name__}: {e}); please report it")
            continue
        findings.extend(f if f.rule else replace(f, rule=r.code) for f in produced)
    findings, story = annotate(findings, timeline(run))
    return findings, [*story, *notes]


def _coerce(value: Any, default: Any) -> Any:
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
