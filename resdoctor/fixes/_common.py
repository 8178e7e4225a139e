"""Helpers shared by the fix builders: number formatting and module surgery snippets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def sig(x: float, digits: int = 2) -> float:
    """``x`` rounded to ``digits`` significant digits (0 stays 0, non-finite passes through)."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    return float(f"{x:.{digits}g}")


def names_literal(names: Sequence[str], limit: int = 64) -> str:
    """A Python list literal of module names, one per line when long."""
    names = list(names)[:limit]
    if len(names) <= 3:
        return repr(names)
    inner = "".join(f"    {n!r},\n" for n in names)
    return "[\n" + inner + "]"


def short_list(names: Sequence[str], limit: int = 6) -> str:
    """``a, b, c and 4 more`` for messages."""
    names = list(names)
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"


REPLACE_MODULE = '''
def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule at dotted path ``name`` for ``new``."""
    parent, _, child = name.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    setattr(holder, child, new)
'''.strip()


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
