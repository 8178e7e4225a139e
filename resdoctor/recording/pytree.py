"""Find tensors inside nested module inputs/outputs, addressed by a path of keys."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

Path = tuple[Any, ...]


def iter_tensors(
    obj: Any, prefix: Path = (), depth: int = 3
) -> Iterator[tuple[Path, torch.Tensor]]:
    """Yield ``(path, tensor)`` for tensors in tuples, lists and mappings, ``depth`` levels deep."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif depth <= 0:
        return
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            if isinstance(key, str):
                yield from iter_tensors(value, (*prefix, key), depth - 1)
    elif isinstance(obj, (tuple, list)):
        for i, value in enumerate(obj):
            yield from iter_tensors(value, (*prefix, i), depth - 1)


def get_path(obj: Any, path: Path) -> torch.Tensor | None:
    """The tensor at ``path`` inside ``obj``, or None when the structure differs this call."""
    for key in path:
        try:
            obj = obj[key]
        except (KeyError, IndexError, TypeError):
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def call_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[Any, Any]:
    """Merge positional and keyword arguments into one mapping addressed by index or name."""
    merged: dict[Any, Any] = dict(enumerate(args))
    merged.update(kwargs)
    return merged
