"""Threshold settings: keyword arguments, ``--set rule.param=value`` and TOML / JSON files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from resdoctor.errors import ResdoctorError
from resdoctor.rules._registry import Registry


class ConfigError(ResdoctorError, ValueError):
    """Bad rule settings (unknown rule or threshold, wrong type, unreadable file)."""


def parse_value(text: str) -> Any:
    """``20`` -> 20, ``1e-3`` -> 0.001, ``true`` -> True, ``[1, 2]`` -> list, else the string."""
    lowered = text.strip()
    if lowered.lower() in ("true", "false"):
        return lowered.lower() == "true"
    try:
        return json.loads(lowered)
    except ValueError:
        return lowered


def parse_settings(items: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``["exploding-gradients.surge_factor=20"]`` -> ``{"exploding-gradients": {...: 20}}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        code, dot, param = key.strip().rpartition(".")
        if not eq or not dot or not code or not param:
            raise ConfigError(f"bad setting {item!r}: expected rule.param=value")
        out.setdefault(code, {})[param] = parse_value(value)
    return out


def read_config(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read ``{rule: {param: value}}`` from a ``.toml`` or ``.json`` file (a ``[rules]`` table
    or top-level tables)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config ({e.strerror or e})") from None
    try:
        data = _toml(text) if p.suffix.lower() == ".toml" else json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{p}: not valid {p.suffix.lstrip('.') or 'JSON'} ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a table of rules")
    data = data.get("rules", data)
    if not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{p}: each rule's settings must be a table, e.g. [oversmoothing]")
    return {str(k): dict(v) for k, v in data.items()}


def _toml(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                "reading TOML on Python 3.10 needs tomli: pip install tomli (or use a .json config)"
            ) from None
    return tomllib.loads(text)


def merge(*layers: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for code, params in layer.items():
            out.setdefault(code, {}).update(params)
    return out


def from_kwargs(kwargs: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``exploding_gradients={...}``, ``**{"exploding-gradients": {...}}`` or
    ``**{"exploding-gradients.surge_factor": 20}``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in kwargs.items():
        if "." in key:
            code, _, param = key.rpartition(".")
            out.setdefault(code.replace("_", "-"), {})[param] = value
        elif isinstance(value, Mapping):
            out.setdefault(key.replace("_", "-"), {}).update(value)
        else:
            raise ConfigError(
                f"unknown analyze() argument {key!r}: pass "
                f"{key}={{'param': value}} or 'rule.param'=value"
            )
    return out


def validate(settings: Mapping[str, Mapping[str, Any]], registry: Registry) -> None:
    """Raise ``ConfigError`` for unknown rules or thresholds and mismatched types."""
    for code, params in settings.items():
        rule = registry.get(code)
        if rule is None:
            known = ", ".join(r.code for r in registry)
            raise ConfigError(f"unknown rule {code!r} (rules: {known})")
        defaults = rule.defaults
        for name, value in params.items():
            if name == "enabled":
                if not isinstance(value, bool):
                    raise ConfigError(f"{code}.enabled must be true or false")
                continue
            if name not in defaults:
                raise ConfigError(
                    f"unknown threshold {code}.{name} (thresholds: {', '.join(defaults) or 'none'})"
                )
            _check_type(code, name, value, defaults[name])


def _check_type(code: str, name: str, value: Any, default: Any) -> None:
    if default is None or isinstance(value, type(default)):
        return
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return
    raise ConfigError(
        f"{code}.{name} must be {type(default).__name__} (default {default!r}), got {value!r}"
    )
