"""Find tensors inside nested module inputs/outputs, addressed by a path of keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

Path = tuple[Any, ...]


def iter_tensors(
    obj: Any, prefix: Path = (), depth: int = 3, skipped: list[Path] | None = None
) -> Iterator[tuple[Path, torch.Tensor]]:
    """Yield ``(path, tensor)`` for dense tensors in tuples, lists, mappings and dataclasses,
    ``depth`` levels deep. Sparse (or other non-strided) tensors cannot be reduced by the
    sensors' kernels: they are left out, their paths appended to ``skipped`` when given."""
    if isinstance(obj, torch.Tensor):
        if obj.layout == torch.strided:
            yield prefix, obj
        elif skipped is not None:
            skipped.append(prefix)
    elif depth > 0:
        for key, value in _children(obj):
            yield from iter_tensors(value, (*prefix, key), depth - 1, skipped)


def _children(obj: Any) -> Iterable[tuple[Any, Any]]:
    """``(key, value)`` of a container: string keys of a mapping, indices of a tuple or list,
    field names of a dataclass instance."""
    if isinstance(obj, Mapping):
        return ((k, v) for k, v in obj.items() if isinstance(k, str))
    if isinstance(obj, (tuple, list)):
        return enumerate(obj)
    if _is_dataclass(obj):
        return ((f.name, getattr(obj, f.name, None)) for f in dataclasses.fields(obj))
    return ()


def get_path(obj: Any, path: Path) -> torch.Tensor | None:
    """The tensor at ``path`` inside ``obj``, or None when the structure differs this call."""
    for key in path:
        try:
            obj = getattr(obj, key) if _is_dataclass(obj) else obj[key]
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
    return obj if isinstance(obj, torch.Tensor) else None


def _is_dataclass(obj: Any) -> bool:
    return dataclasses.is_dataclass(obj) and not isinstance(obj, type)


def call_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[Any, Any]:
    """Merge positional and keyword arguments into one mapping addressed by index or name."""
    merged: dict[Any, Any] = dict(enumerate(args))
    merged.update(kwargs)
    return merged
