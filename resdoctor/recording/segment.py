"""Segment: what one stretch of training (up to a ``log()`` call) measured, on the device.

Hooks pool 0-d device tensors and record rows of pool slots; ``pack()`` stacks and concatenates
them into one flat tensor, so a whole step costs one device-to-host transfer; ``unpack()`` splits
it again on the host and gathers the rows. Nothing here synchronises with the device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Layout = list[tuple[Any, Any, int]]  # (kind, (name, index, slots) or name, width)


@dataclass
class Segment:
    """Device-side measurements of one segment plus the host-side facts about it.

    ``put(t)`` stores a 0-d tensor in the *pool* and returns its slot; ``add_row(kind, i, slots)``
    records a row of kind ("fwd", "bwd", "site", "smooth", "gshare", ...) as slots, each kind
    with a fixed width, so the host gets one ``[n, width]`` block per kind with its index
    vector. No per-row stack or cat runs on the device: ``pack()`` stacks the whole pool once
    and the gather happens on the host. Slot -1 reads as 0, ``const(n)`` as n; ``unpack`` can
    decode a kind's rows on the host.
    """

    pool: list[torch.Tensor] = field(default_factory=list)
    rows: dict[str, tuple[list[int], list[tuple[int, ...]]]] = field(default_factory=dict)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # grad_l2, param_max, ...
    scalars: dict[str, float] = field(default_factory=dict)
    tensor_scalars: dict[str, torch.Tensor] = field(default_factory=dict)
    forwards: int = 0
    backwards: int = 0
    stepped: bool = False

    def put(self, value: torch.Tensor) -> int:
        """Pool a 0-d tensor; its slot."""
        self.pool.append(value)
        return len(self.pool) - 1

    def add_row(self, kind: str, index: int, slots: tuple[int, ...]) -> None:
        idx, rows = self.rows.setdefault(kind, ([], []))
        idx.append(index)
        rows.append(slots)

    @property
    def empty(self) -> bool:
        return not (
            self.pool
            or self.rows
            or self.vectors
            or self.scalars
            or self.tensor_scalars
            or self.forwards
            or self.backwards
            or self.stepped
        )

    def pack(self) -> tuple[torch.Tensor | None, Layout]:
        """One flat float32 tensor and the layout ``[(kind, index, width), ...]`` to split it."""
        parts: list[torch.Tensor] = []
        layout: Layout = []
        if self.pool:
            device = self.pool[0].device
            pool = [p if p.device == device else p.to(device) for p in self.pool]
            parts.append(torch.stack(pool).float())  # stack promotes mixed dtypes
            layout.append(("pool", None, len(pool)))
        for kind, (idx, rows) in self.rows.items():  # gathered from the pool on the host
            layout.append(
                (
                    "rows",
                    (kind, np.asarray(idx, dtype=np.int64), np.asarray(rows, dtype=np.int64)),
                    0,
                )
            )
        for name, t in self.vectors.items():
            parts.append(t.reshape(-1).float())  # a float64 norm beyond float32 range is inf
            layout.append(("vec", name, parts[-1].numel()))
        for name, t in self.tensor_scalars.items():
            parts.append(t.detach().reshape(-1)[:1].float())
            layout.append(("scalar", name, 1))
        if not parts:
            return None, layout
        device = parts[0].device
        parts = [p if p.device == device else p.to(device) for p in parts]
        return torch.cat(parts), layout


# constants a pooled row may carry in place of a slot (element counts): slot = -2 - value
CONST_BASE = -2


def const(value: int) -> int:
    """A slot that reads as the constant ``value`` (a non-negative int such as an element count)."""
    return CONST_BASE - value


Decoder = Callable[[np.ndarray], np.ndarray]


def unpack(
    flat: np.ndarray | None, layout: Layout, decode: Mapping[str, Decoder] | None = None
) -> dict[str, Any]:
    """Split a transferred flat array: ``{kind: (index [n], values [n, width])}``,
    ``{"vec": {name: values}}`` and ``{"scalar": {name: value}}``. Pooled rows of a kind in
    ``decode`` are passed through it (raw sums in, recorded values out)."""
    decode = decode or {}
    out: dict[str, Any] = {"vec": {}, "scalar": {}}
    offset = 0
    pool = np.zeros(0)
    for kind, key, width in layout:
        if kind == "rows":
            name, idx, slots = key
            gathered = pool[np.clip(slots, 0, None)] if len(pool) else np.zeros(slots.shape)
            values = np.where(slots >= 0, gathered, np.where(slots == -1, 0.0, CONST_BASE - slots))
            out[name] = (idx, decode[name](values) if name in decode else values)
            continue
        assert flat is not None
        if kind == "pool":
            pool = flat[offset : offset + width]
            offset += width
        else:  # "vec" or "scalar"
            chunk = flat[offset : offset + width]
            out[kind][key] = chunk if kind == "vec" else float(chunk[0])
            offset += width
    return out


class Transfer:
    """Moves packed segments to the host: at once on CPU, asynchronously on CUDA.

    On CUDA the copy goes into pinned memory with ``non_blocking=True`` and an event; ``ready()``
    hands back the segments whose copy finished, ``drain()`` waits for all (used at flush/close).
    """

    def __init__(self) -> None:
        self._queue: list[tuple[Any, torch.Tensor | None, Any, Layout]] = []

    def submit(self, meta: Any, flat: torch.Tensor | None, layout: Layout) -> None:
        if flat is None or flat.device.type == "cpu":
            host = None if flat is None else flat.detach()
            self._queue.append((meta, host, None, layout))
            return
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._queue.append((meta, host, event, layout))

    def ready(self, wait: bool = False) -> list[tuple[Any, np.ndarray | None, Layout]]:
        done = []
        while self._queue:
            meta, host, event, layout = self._queue[0]
            if event is not None and not wait and not event.query():
                break
            if event is not None:
                event.synchronize()
            self._queue.pop(0)
            done.append((meta, None if host is None else host.numpy().astype(np.float64), layout))
        return done
