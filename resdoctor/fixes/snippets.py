"""Helpers shared by the fix builders: number formatting and module surgery snippets."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any


def sig(x: float, digits: int = 2) -> float:
    """``x`` rounded to ``digits`` significant digits (0 stays 0, non-finite passes through)."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{digits}g}")


def names_literal(names: Sequence[str], limit: int = 64) -> str:
    """A Python list expression of module names: a comprehension over a numbered range
    (``blocks.0.mlp`` ... ``blocks.11.mlp``), else a literal, one per line when long."""
    names = list(names)[:limit]
    if len(names) <= 3:
        return repr(names)
    pattern = _numbered(names)
    if pattern is not None:
        return pattern
    inner = "".join(f"    {n!r},\n" for n in names)
    return "[\n" + inner + "]"


def short_list(names: Sequence[str], limit: int = 6) -> str:
    """``a, b, c and 4 more`` for messages."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


def branch_taps(sites: Sequence[dict[str, Any]]) -> list[tuple[dict[str, Any], str, int | None]]:
    """(site, module, output index) of each site whose branch tensor is a module's output."""
    out: list[tuple[dict[str, Any], str, int | None]] = []
    for site in sites:
        tap = site.get("branch") or {}
        path = list(tap.get("path") or [])
        if tap.get("where") != "output" or not tap.get("module") or len(path) > 1:
            continue
        out.append((site, str(tap["module"]), int(path[0]) if path else None))
    return out


def _numbered(names: list[str]) -> str | None:
    """``[f"a.{i}.b" for i in range(m, n)]`` when the names differ only in one consecutive int."""
    tokens = [re.split(r"(\d+)", n) for n in names]
    if len({len(t) for t in tokens}) != 1:
        return None
    varying = [j for j in range(len(tokens[0])) if len({t[j] for t in tokens}) > 1]
    if len(varying) != 1 or varying[0] % 2 == 0:  # odd positions hold the digit runs
        return None
    j = varying[0]
    numbers = [int(t[j]) for t in tokens]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        return None
    head, tail = "".join(tokens[0][:j]), "".join(tokens[0][j + 1 :])
    if any(c in head + tail for c in '{}"\\'):
        return None
    rng = (
        f"range({numbers[-1] + 1})"
        if numbers[0] == 0
        else f"range({numbers[0]}, {numbers[-1] + 1})"
    )
    return f'[f"{head}{{i}}{tail}" for i in {rng}]'
