"""Segment: what one stretch of training (up to a ``log()`` call) measured, on the device.

Hooks pool 0-d device tensors and record rows of pool slots; ``pack()`` stacks and concatenates
them into one flat tensor, so a whole step costs one device-to-host transfer; ``unpack()`` splits
it again on the host and gathers the rows. Nothing here synchronises with the device.
"""

from __future__ import annotations

import copy
from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Layout = list[tuple[Any, Any, int]]  # (kind, (name, index, slots) or name, width)


Key = tuple[torch.device, torch.dtype]
RECENT_LAYOUTS = 8


class Buffers:
    """Flat device buffers, one per (device, dtype), that sensors write their 0-d results into
    (``out=``): a segment's results are then already a few flat tensors, and packing them is a
    slice per buffer instead of a stack of hundreds of small tensors. Kept across segments (a
    segment is packed before the next one writes); each grows by doubling, keeping its
    contents, and its 0-d views are made once per growth."""

    def __init__(self) -> None:
        self._tensors: dict[Key, torch.Tensor] = {}
        self._views: dict[Key, list[torch.Tensor]] = {}
        self._prefix: dict[Key, tuple[int, torch.Tensor]] = {}
        # the layouts of recent packed segments, latest first, with what each is made of
        self.layouts: list[tuple[list[Any], Layout]] = []

    def views(self, key: Key, need: int) -> list[torch.Tensor]:
        """At least ``need`` 0-d views of the buffer for ``key``."""
        views = self._views.get(key)
        if views is None or len(views) < need:
            old = self._tensors.get(key)
            size = max(256, 2 * need)
            new = torch.empty(size, device=key[0], dtype=key[1])
            if old is not None:  # the segment being filled wrote into the old one
                new[: len(old)].copy_(old)
            self._tensors[key] = new
            views = self._views[key] = list(new.unbind())
            self._prefix.pop(key, None)
        return views

    def block(self, key: Key, start: int, n: int) -> torch.Tensor:
        """Values ``start .. start + n`` of the buffer for ``key`` as one 1-d view (after
        ``views`` made room for them)."""
        return self._tensors[key][start : start + n]

    def prefix(self, key: Key, n: int) -> torch.Tensor:
        """The first ``n`` values of the buffer for ``key`` (the view is kept: steps repeat)."""
        known = self._prefix.get(key)
        if known is None or known[0] != n:
            known = self._prefix[key] = (n, self._tensors[key][:n])
        return known[1]

    def layout(self, shape: list[Any], make: Callable[[], Layout]) -> Layout:
        """The layout of a recent segment made of the same ``shape`` (steps alternate between a
        few: the every-N-steps signals add rows), else a new one from ``make``."""
        for k, (known, layout) in enumerate(self.layouts):
            if known == shape:
                if k:
                    self.layouts.insert(0, self.layouts.pop(k))
                return layout
        layout = make()  # kept with a copy of its shape: nothing written later can change it
        self.layouts.insert(0, (copy.deepcopy(shape), layout))
        del self.layouts[RECENT_LAYOUTS:]
        return layout


@dataclass
class Segment:
    """Device-side measurements of one segment plus the host-side facts about it.

    Every 0-d result has a *slot*. ``reserve(like, n)`` hands out ``n`` slots whose 0-d views
    of a ``Buffers`` buffer a sensor writes into (``torch.aminmax(x, out=...)``); ``put(t)``
    pools a tensor computed elsewhere. ``add_row(kind, i, slots)`` records a row of kind ("fwd",
    "bwd", "site", "smooth", "gshare", ...) as slots, each kind with a fixed width, so the
    host gets one ``[n, width]`` block per kind with its index vector. ``pack()`` slices each
    buffer once and stacks the put tensors once, and the gather happens on the host. Slot -1
    reads as 0, ``const(n)`` as n; ``unpack`` can decode a kind's rows on the host.
    """

    buffers: Buffers = field(default_factory=Buffers)
    pool: list[torch.Tensor] = field(default_factory=list)  # every slot's 0-d tensor
    # kind -> (row indices, the rows' slots one after another), as int64 arrays
    rows: dict[str, tuple[array, array]] = field(default_factory=dict)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # grad_l2, param_max, ...
    scalars: dict[str, float] = field(default_factory=dict)
    tensor_scalars: dict[str, torch.Tensor] = field(default_factory=dict)
    forwards: int = 0
    backwards: int = 0
    stepped: bool = False
    _slots: dict[Key, array] = field(default_factory=dict)  # buffer -> its slots, in order
    _put: array = field(default_factory=lambda: array("q"))  # slots of tensors pooled by put()

    def put(self, value: torch.Tensor) -> int:
        """Pool a 0-d tensor computed elsewhere; its slot."""
        self.pool.append(value)
        self._put.append(len(self.pool) - 1)
        return len(self.pool) - 1

    def reserve(self, like: torch.Tensor, n: int) -> tuple[int, list[torch.Tensor]]:
        """``n`` new slots in the buffer of ``like``'s device and dtype: the first slot and the
        0-d views to write the results into (each exactly once)."""
        key = (like.device, like.dtype)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = array("q")
        used = len(slots)
        views = self.buffers.views(key, used + n)[used : used + n]
        first = len(self.pool)
        self.pool.extend(views)
        slots.extend(range(first, first + n))
        return first, views

    def reserve_block(self, like: torch.Tensor, n: int) -> tuple[int, torch.Tensor]:
        """As ``reserve``, the ``n`` slots as one 1-d view: one call writes them all
        (``torch.index_select(..., out=block)``)."""
        first, _ = self.reserve(like, n)
        used = len(self._slots[(like.device, like.dtype)]) - n
        return first, self.buffers.block((like.device, like.dtype), used, n)

    def add_row(self, kind: str, index: int, slots: tuple[int, ...]) -> None:
        rows = self.rows.get(kind)
        if rows is None:
            rows = self.rows[kind] = (array("q"), array("q"))
        rows[0].append(index)
        rows[1].extend(slots)  # a kind's rows all have one width

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
        """One flat float32 tensor and the layout ``[(kind, key, width), ...]`` to split it.
        Segments repeat step after step: when this one's slots, rows and names equal the
        previous packed segment's, its layout object is handed out again (``Intake`` batches
        segments that share one)."""
        parts: list[torch.Tensor] = []
        shape: list[Any] = []  # what the layout is made of, compared with the previous one
        for key, slots in self._slots.items():  # a slice of each buffer
            if slots:
                parts.append(_f32(self.buffers.prefix(key, len(slots))))
                shape.append((key, slots))
        if self._put:
            device = self.pool[self._put[0]].device
            put = [self.pool[k] for k in self._put]
            put = [p if p.device == device else p.to(device) for p in put]
            parts.append(torch.stack(put).float())  # stack promotes mixed dtypes
            shape.append(("put", self._put))
        shape.append(len(self.pool))
        shape.extend(self.rows.items())
        for name, t in self.vectors.items():
            parts.append(_f32(t if t.dim() == 1 else t.reshape(-1)))
            shape.append((name, t.numel()))
        for name, t in self.tensor_scalars.items():
            parts.append(_f32(t.reshape(1) if t.numel() == 1 else t.detach().reshape(-1)[:1]))
            shape.append(name)
        layout = self.buffers.layout(shape, self._layout)
        if not parts:
            return None, layout
        device = parts[0].device
        if device.type != "cpu" or any(p.device.type != "cpu" for p in parts):
            parts = [p if p.device == device else p.to(device) for p in parts]
        return torch.cat(parts), layout  # a copy: the buffers are written again next segment

    def _layout(self) -> Layout:
        layout: Layout = [("size", None, len(self.pool))] if self.pool else []
        for slots in self._slots.values():
            if slots:
                layout.append(("pool", _ints(slots), len(slots)))
        if self._put:
            layout.append(("pool", _ints(self._put), len(self._put)))
        for kind, (idx, flat) in self.rows.items():  # gathered from the pool on the host
            table = _ints(flat).reshape(len(idx), -1)
            layout.append(("rows", (kind, _ints(idx), table), 0))
        for name, t in self.vectors.items():
            layout.append(("vec", name, t.numel()))
        for name in self.tensor_scalars:
            layout.append(("scalar", name, 1))
        return layout


def _f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32 (a float64 norm beyond float32's range reads inf)."""
    return t if t.dtype == torch.float32 else t.float()


def _ints(values: array) -> np.ndarray:
    """An int64 copy (a view would pin the array: it could no longer grow)."""
    return np.frombuffer(values, dtype=np.int64).copy()


# constants a pooled row may carry in place of a slot (element counts): slot = -2 - value
CONST_BASE = -2


def const(value: int) -> int:
    """A slot that reads as the constant ``value`` (a non-negative int such as an element count)."""
    return CONST_BASE - value


Decoder = Callable[[np.ndarray], np.ndarray]


Plan = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


class Unpacker:
    """Splits transferred flat arrays: ``{kind: (index [n], values [n, width])}``,
    ``{"vec": {name: values}}`` and ``{"scalar": {name: value}}``. Pooled rows of a kind in
    ``decode`` are passed through it (raw sums in, recorded values out; it maps ``[..., width]``
    rows and keeps leading dimensions).

    Segments repeat step after step, so each kind's gather plan (where its slots read the pool,
    which read a constant) is kept and reused while the kind's slots stay the same."""

    def __init__(self, decode: Mapping[str, Decoder] | None = None) -> None:
        self.decode = dict(decode or {})
        self._plans: dict[str, Plan] = {}

    def __call__(self, flat: np.ndarray | None, layout: Layout) -> dict[str, Any]:
        """One segment."""
        flats = None if flat is None else np.asarray(flat, dtype=np.float64)[None]
        many = self.many(flats, layout, 1)
        return {
            "vec": {k: v[0] for k, v in many["vec"].items()},
            "scalar": {k: float(v[0]) for k, v in many["scalar"].items()},
            **{k: (v[0], v[1][0]) for k, v in many.items() if k not in ("vec", "scalar")},
        }

    def many(self, flats: np.ndarray | None, layout: Layout, k: int) -> dict[str, Any]:
        """``k`` segments that share ``layout``, their flat arrays stacked ``[k, length]``
        (float64): as one segment's, with a leading ``k`` dimension on every value."""
        out: dict[str, Any] = {"vec": {}, "scalar": {}}
        offset = 0
        pool = np.zeros((k, 0))
        for kind, key, width in layout:
            if kind == "size":
                pool = np.zeros((k, width))
                continue
            if kind == "rows":
                name, idx, slots = key
                values = self._gather(name, slots, pool)
                out[name] = (idx, self.decode[name](values) if name in self.decode else values)
                continue
            assert flats is not None
            chunk = flats[:, offset : offset + width]
            offset += width
            if kind == "pool":  # this buffer's slots, in the order they were handed out
                pool[:, key] = chunk
            else:  # "vec" or "scalar"
                out[kind][key] = chunk if kind == "vec" else chunk[:, 0]
        return out

    def _gather(self, name: str, slots: np.ndarray, pool: np.ndarray) -> np.ndarray:
        plan = self._plans.get(name)
        if plan is None or plan[0].shape != slots.shape or not np.array_equal(plan[0], slots):
            negative = slots < 0  # -1 reads as 0, const(n) as n
            plan = (slots, np.clip(slots, 0, None), None, None)
            if negative.any():
                plan = (*plan[:2], negative, np.where(slots == -1, 0.0, CONST_BASE - slots))
            self._plans[name] = plan
        _, at, special, consts = plan
        values = pool[:, at] if pool.shape[1] else np.zeros((len(pool), *slots.shape))
        return values if special is None or consts is None else np.where(special, consts, values)


def unpack(
    flat: np.ndarray | None, layout: Layout, decode: Mapping[str, Decoder] | None = None
) -> dict[str, Any]:
    """One segment through a fresh ``Unpacker`` (see there)."""
    return Unpacker(decode)(flat, layout)


class Transfer:
    """Moves packed segments to the host: at once on CPU, asynchronously on CUDA.

    On CUDA the copy goes into pinned memory with ``non_blocking=True`` and an event; ``ready()``
    hands back the segments whose copy finished, ``drain()`` waits for all (used at flush/close).
    """

    def __init__(self) -> None:
        self._queue: list[tuple[Any, torch.Tensor | None, Any, Layout]] = []

    def submit(self, meta: Any, flat: torch.Tensor | None, layout: Layout) -> None:
        if flat is None or flat.device.type == "cpu":  # packed under no_grad: no graph to cut
            self._queue.append((meta, flat, None, layout))
            return
        host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
        host.copy_(flat, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._queue.append((meta, host, event, layout))

    @property
    def pending(self) -> int:
        return len(self._queue)

    def ready(self, wait: bool = False) -> list[tuple[Any, np.ndarray | None, Layout]]:
        done = []
        while self._queue:
            meta, host, event, layout = self._queue[0]
            if event is not None and not wait and not event.query():
                break
            if event is not None:
                event.synchronize()
            self._queue.pop(0)
            done.append((meta, None if host is None else host.numpy(), layout))  # float32
        return done
