"""Distributed runs (DDP, FSDP2 ``fully_shard``, HSDP): one file per rank, one merged run.

Under ``torch.distributed`` every rank records its own signals into ``run.rank{r}.pt``, written
periodically like any run file, so a crashed job keeps what each rank saw. At ``close()`` rank 0
gathers the ranks' run states with one ``gather_object`` (the only collective resdoctor issues;
nothing is added per step) and writes the merged ``run.pt``. For the files a crashed job left:
``merge(rank_files("run.pt"))``, or ``python -m resdoctor.integrations.distributed run.pt``.

How ranks combine (exact while a series keeps one row per step, ``stride == 1``; above that, on
the bucket means):

- ``grad_norm`` / ``param_norm`` of a sharded module (DTensor ``Shard`` parameters): the square
  root of the sum of the shards' squared norms over one replica group; of a replicated module
  (DDP): the lowest rank's value, the gradients being identical after the all-reduce.
- ``update_ratio`` of a sharded module: ``sqrt(sum_r (ratio_r |w_r|)^2) / sqrt(sum_r |w_r|^2)``
  with the post-step shard norms ``|w_r|`` (relative error of the order of the ratio itself).
- ``skip_norm`` / ``branch_norm`` / ``stream_norm``: root mean square over ranks; every other
  signal and scalar (the loss): mean over ranks; ``max`` / ``min``: over ranks.
- Non-finite onsets: one event per (module, phase) at its earliest step; ``rank`` is the rank
  that saw it first (lowest rank on a tie), ``detail["seen_by"]`` every rank's onset step.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from resdoctor.recording.integration import Context
from resdoctor.runfile import io as runfile
from resdoctor.runfile.layout import RunState, cell_counts, phase_rank
from resdoctor.runfile.signals import merge_rule

__all__ = ["RankMerger", "merge", "rank_files", "rank_path", "shard_layout"]

Combine = Literal["first", "sumsq", "rms", "mean"]
_WATCHERS: dict[str, int] = {}  # merged path -> watchers created for it by this process


def rank_path(path: str | os.PathLike[str], rank: int) -> str:
    """Where rank ``rank`` records the run merged into ``path``: ``run.pt`` -> ``run.rank1.pt``."""
    p = Path(path)
    return str(p.with_name(f"{p.stem}.rank{rank}{p.suffix}"))


def rank_files(path: str | os.PathLike[str]) -> list[str]:
    """The per-rank files recorded for the merged run ``path``, in rank order."""
    p = Path(path)
    pattern = re.compile(rf"{re.escape(p.stem)}\.rank(\d+){re.escape(p.suffix)}$")
    found = []
    for candidate in p.parent.glob(f"{glob.escape(p.stem)}.rank*{p.suffix}"):
        match = pattern.match(candidate.name)
        if match:
            found.append((int(match.group(1)), str(candidate)))
    return [f for _, f in sorted(found)]


def shard_layout(model: torch.nn.Module, param_modules: list[str]) -> dict[str, list[str]]:
    """Modules whose parameters are sharded DTensors (``sharded``), and those of them whose shard
    this rank holds for the first replica group (``primary``): their squared norms are summed."""
    modules = dict(model.named_modules())
    sharded, primary = [], []
    for name in param_modules:
        module = modules.get("" if name == "<root>" else name)
        params = list(module.parameters(recurse=False)) if module is not None else []
        placed = [p for p in params if hasattr(p, "placements")]
        if not any(pl.is_shard() for p in placed for pl in p.placements):
            continue
        sharded.append(name)
        if all(_first_replica(p) for p in placed):
            primary.append(name)
    return {"sharded": sharded, "primary": primary}


def _first_replica(p: Any) -> bool:
    coordinate = p.device_mesh.get_coordinate()
    if coordinate is None:  # this rank is not in the parameter's mesh
        return False
    return all(c == 0 for c, pl in zip(coordinate, p.placements, strict=False) if not pl.is_shard())


class RankMerger:
    """Watcher integration under torch.distributed: rank 0 writes the merged run at close."""

    def __init__(self, ctx: Context) -> None:
        self.path, self.rank, self.world = ctx.path, ctx.rank, ctx.world_size
        self._key: str | None = None
        try:
            ctx.set_meta("distributed", shard_layout(ctx.model, ctx.param_modules))
            self._key = _register(self.path)
        except Exception as e:  # noqa: BLE001 - never raise into the training loop
            ctx.record_error("distributed", e)

    def on_step(self, ctx: Context) -> None:
        return None

    def on_close(self, ctx: Context) -> None:
        """Gather every rank's state to rank 0 (one collective) and write the merged run."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            warnings.warn(
                f"resdoctor: the process group was destroyed before close(); the "
                f"per-rank files stay: resdoctor merge {self.path}",
                stacklevel=3,
            )
            return
        state = None
        try:
            state = ctx.state()
        except Exception as e:  # noqa: BLE001 - still join the gather: rank 0 must not wait
            ctx.record_error("distributed", e)
        watching = _watching(self._key, self.world)
        if watching < self.world:  # some ranks do not watch: a gather would wait for them
            if self.rank == 0 and state is not None:
                warnings.warn(
                    f"resdoctor: {watching} of {self.world} ranks watch; {self.path} "
                    "holds the ranks that do (watch on every rank)",
                    stacklevel=3,
                )
                runfile.write(merge([state], path=self.path), self.path)
            return
        states: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(state, states, dst=0)
        if states is not None:
            runfile.write(merge([s for s in states if s is not None], path=self.path), self.path)


def _store() -> Any:
    try:
        return torch.distributed.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store: assume every rank watches
        return None


def _register(path: str) -> str | None:
    """Count this rank as watching ``path`` in the process group's store (no collective)."""
    store = _store()
    if store is None:
        return None
    _WATCHERS[path] = _WATCHERS.get(path, 0) + 1
    key = f"resdoctor/watching/{path}/{_WATCHERS[path]}"
    store.add(key, 1)
    return key


def _watching(key: str | None, world: int) -> int:
    store = _store()
    try:
        return world if key is None or store is None else int(store.add(key, 0))
    except Exception:  # noqa: BLE001 - a broken store: the gather will tell
        return world


# -- merging -------------------------------------------------------------------------------
def merge(
    sources: Iterable[str | os.PathLike[str] | Mapping[str, Any]],
    path: str | os.PathLike[str] | None = None,
) -> RunState:
    """Merge per-rank run files (or states) into one run state; see the module docstring.

    Raises ``RunFileError`` for an unreadable file and ``ValueError`` when given nothing.
    """
    states: list[Any] = [s if isinstance(s, Mapping) else runfile.read(s) for s in sources]
    if not states:
        raise ValueError("merge: no run to merge")
    for s in states:
        runfile.validate(s)
    states.sort(key=lambda s: int(s.get("rank") or 0))
    base, ranks = states[0], [int(s.get("rank") or 0) for s in states]
    world = max(int(s.get("world_size") or 1) for s in states)
    layout = _Layout.of(states)
    skipped = sorted({int(x) for s in states for x in _as_list(s.get("skipped_steps"))})
    return {
        **base,
        "rank": None,
        "world_size": world,
        "ranks": ranks,
        "missing_ranks": sorted(set(range(world)) - set(ranks)),
        "merged": True,
        "path": str(path if path is not None else base.get("path", "")),
        "created": min(float(s.get("created", 0.0)) for s in states),
        "steps": max(int(s["steps"]) for s in states),
        "sites": next((s["sites"] for s in states if s["sites"]), base["sites"]),
        "series": _merge_series(states, layout),
        "events": _merge_events(states, int(base.get("options", {}).get("max_events", 1000))),
        "skipped_steps": torch.tensor(skipped, dtype=torch.long),
        "errors": [
            {**e, "rank": r}
            for r, s in zip(ranks, states, strict=True)
            for e in s.get("errors", [])
        ],
        "distributed": {"sharded": sorted(layout.sharded)},
    }


def _as_list(x: Any) -> list[Any]:
    if x is None:
        return []
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)


@dataclass
class _Layout:
    sharded: set[str]
    primary: list[set[str]]  # per state, in state order

    @classmethod
    def of(cls, states: list[Any]) -> _Layout:
        infos = [s.get("distributed") or {} for s in states]
        sharded = {m for info in infos for m in info.get("sharded", [])}
        return cls(sharded, [set(info.get("primary", [])) for info in infos])


def _merge_events(states: list[Any], max_events: int) -> list[Any]:
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for s in states:
        for i, e in enumerate(s["events"]):
            e = {**e, "rank": int(e.get("rank", s.get("rank") or 0)), "_order": i}
            detail = e.get("detail") or {}
            key = (e.get("kind"), e.get("module"), e.get("phase"), bool(detail.get("amp_skipped")))
            groups.setdefault(key, []).append(e)
    events = []
    for group in groups.values():
        group.sort(key=lambda e: (int(e["step"]), e["rank"]))
        first = dict(group[0])
        order = first.pop("_order")
        first["detail"] = {
            **(first.get("detail") or {}),
            "seen_by": [{"rank": e["rank"], "step": int(e["step"])} for e in group],
        }
        events.append((order, first))
    # the earliest step first; within one, forward before backward, then a rank's own order
    # (its innermost module first)
    events.sort(
        key=lambda x: (
            int(x[1]["step"]),
            phase_rank(x[1].get("phase"), bool((x[1].get("detail") or {}).get("received"))),
            x[1]["rank"],
            x[0],
        )
    )
    return [e for _, e in events[:max_events]]


# -- series --------------------------------------------------------------------------------
@dataclass
class _Stack:
    """Per-rank series aligned on common step buckets and columns: arrays are [R, U, C]."""

    keys: np.ndarray
    columns: list[str]
    mean: np.ndarray
    max: np.ndarray
    min: np.ndarray
    n: np.ndarray
    count: np.ndarray  # [R, U]
    stride: int
    capacity: int

    @property
    def present(self) -> np.ndarray:
        return self.n > 0


def _merge_series(states: list[Any], layout: _Layout) -> dict[str, Any]:
    names = list(dict.fromkeys(k for s in states for k in s["series"]))
    out = {}
    for name in names:
        parts = [s["series"].get(name) for s in states]
        stack = _stack(parts, max(int(p["stride"]) for p in parts if p is not None))
        out[name] = _to_state(stack, *_combine_series(name, stack, states, layout))
    if layout.sharded and "grad_norm" in out and "scalars" in out:
        _retotal(out["scalars"], out["grad_norm"])
    return out


def _combine_series(
    name: str, st: _Stack, states: list[Any], layout: _Layout
) -> tuple[np.ndarray, ...]:
    rule = merge_rule(name)
    if rule in ("rms", "mean"):
        return _combine(st, rule)
    sharded = np.array([c in layout.sharded for c in st.columns])
    primary = np.array([[c in p for c in st.columns] for p in layout.primary])[:, None, :]
    first = _combine(st, "first")
    if not sharded.any():
        return first
    if rule == "norm":
        shard = _combine(st, "sumsq", primary)
    else:
        norms = [s["series"].get("param_norm") for s in states]
        if all(p is None for p in norms):
            return first
        shard = _ratio(st, _stack(norms, st.stride, st.keys, st.columns), primary)
    return tuple(np.where(sharded, s, f) for s, f in zip(shard, first, strict=True))


def _combine(
    st: _Stack, how: Combine, eligible: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """``(mean, max, min, n)`` over ranks, each [U, C]."""
    w = st.present if eligible is None else st.present & eligible
    none = ~w.any(axis=0)
    n = np.where(w, st.n, 0).max(axis=0)
    if how == "first":
        r = np.argmax(w, axis=0)[None]
        pick = [np.take_along_axis(a, r, 0)[0] for a in (st.mean, st.max, st.min)]
        return (*[np.where(none, np.nan, a) for a in pick], n)
    with np.errstate(invalid="ignore", divide="ignore"):
        if how == "sumsq":
            stats = [
                np.sqrt(np.where(w, a * a, 0.0).sum(axis=0)) for a in (st.mean, st.max, st.min)
            ]
        else:
            k = w.sum(axis=0)
            sq = np.where(w, st.mean * st.mean, 0.0).sum(axis=0) / k
            mean = np.sqrt(sq) if how == "rms" else np.where(w, st.mean, 0.0).sum(axis=0) / k
            stats = [
                mean,
                np.where(w, st.max, -np.inf).max(axis=0),
                np.where(w, st.min, np.inf).min(axis=0),
            ]
    return (*[np.where(none, np.nan, a) for a in stats], n)


def _ratio(st: _Stack, norms: _Stack, eligible: np.ndarray) -> tuple[np.ndarray, ...]:
    w = st.present & norms.present & eligible
    none = ~w.any(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = np.sqrt(np.where(w, norms.mean**2, 0.0).sum(axis=0))
        stats = [
            np.sqrt(np.where(w, (a * norms.mean) ** 2, 0.0).sum(axis=0)) / den
            for a in (st.mean, st.max, st.min)
        ]
    n = np.where(w, st.n, 0).max(axis=0)
    return (*[np.where(none, np.nan, a) for a in stats], n)


def _stack(
    parts: list[dict[str, Any] | None],
    stride: int,
    keys: np.ndarray | None = None,
    columns: list[str] | None = None,
) -> _Stack:
    """Align ``parts`` (one series state per rank, None = absent) re-bucketed to ``stride``."""
    present = [p for p in parts if p is not None]
    buckets = [_rebucket(p, stride) if p is not None else None for p in parts]
    if columns is None:
        columns = list(dict.fromkeys(c for p in present for c in p["columns"]))
    if keys is None:
        found = [b[0] for b in buckets if b is not None]
        keys = np.unique(np.concatenate(found)) if found else np.zeros(0, np.int64)
    keys = keys.astype(np.int64)
    shape = (len(parts), len(keys), len(columns))
    total, n = np.zeros(shape), np.zeros(shape, np.int64)
    mx, mn = np.full(shape, -np.inf), np.full(shape, np.inf)
    count = np.zeros(shape[:2], np.int64)
    position = {c: i for i, c in enumerate(columns)}
    for r, (p, b) in enumerate(zip(parts, buckets, strict=True)):
        if p is None or b is None:
            continue
        rows = np.searchsorted(keys, b[0])
        ok = (rows < len(keys)) & (keys[np.minimum(rows, len(keys) - 1)] == b[0])
        src = [i for i, c in enumerate(p["columns"]) if c in position]
        dst = [position[p["columns"][i]] for i in src]
        at: tuple[np.ndarray, ...] = (rows[ok],)
        pick: tuple[np.ndarray, ...] = (np.flatnonzero(ok),)
        if not (dst == list(range(len(columns))) and src == dst):  # else: rows only
            at = np.ix_(rows[ok], np.array(dst, np.int64))
            pick = np.ix_(np.flatnonzero(ok), np.array(src, np.int64))
        for out, values in zip((total, n, mx, mn), (b[1], b[2], b[4], b[5]), strict=True):
            out[r][at] = values[pick]
        count[r, rows[ok]] = b[3][ok]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    capacity = max(int(p["capacity"]) for p in present)
    return _Stack(keys, columns, mean, mx, mn, n, count, stride, capacity)


def _rebucket(p: dict[str, Any], stride: int) -> tuple[np.ndarray, ...]:
    """``(keys, sum, n, count, max, min)`` of one series state in buckets of ``stride`` steps."""
    steps = p["steps"].numpy().astype(np.int64) // stride * stride
    n = cell_counts(p).astype(np.int64)
    mean = p["mean"].numpy().astype(np.float64)
    with np.errstate(invalid="ignore"):
        total = np.where(n > 0, mean * n, 0.0)  # a measured NaN stays NaN
    mx = np.where(n > 0, p["max"].numpy().astype(np.float64), -np.inf)
    mn = np.where(n > 0, p["min"].numpy().astype(np.float64), np.inf)
    count = p["count"].numpy().astype(np.int64)
    if np.all(np.diff(steps) > 0):  # already one row per bucket (the usual case)
        return steps, total, n, count, mx, mn
    keys, inv = np.unique(steps, return_inverse=True)
    shape = (len(keys), n.shape[1] if n.ndim == 2 else 0)
    out = (
        np.zeros(shape),
        np.zeros(shape, np.int64),
        np.zeros(len(keys), np.int64),
        np.full(shape, -np.inf),
        np.full(shape, np.inf),
    )
    with np.errstate(invalid="ignore"):
        np.add.at(out[0], inv, total)
    np.add.at(out[1], inv, n)
    np.add.at(out[2], inv, count)
    np.maximum.at(out[3], inv, mx)
    np.minimum.at(out[4], inv, mn)
    return (keys, *out)


def _to_state(
    st: _Stack, mean: np.ndarray, mx: np.ndarray, mn: np.ndarray, n: np.ndarray
) -> dict[str, Any]:
    keep = (n > 0).any(axis=1) if n.shape[1] else st.count.max(axis=0) > 0
    return {
        "columns": list(st.columns),
        "stride": int(st.stride),
        "capacity": int(max(st.capacity, 2 * ((int(keep.sum()) + 1) // 2))),
        "steps": torch.from_numpy(st.keys[keep].copy()),
        "count": torch.from_numpy(st.count.max(axis=0)[keep].copy()),
        "n": torch.from_numpy(n[keep].astype(np.int32)),
        "mean": torch.from_numpy(mean[keep].astype(np.float32)),
        "max": torch.from_numpy(np.where(n > 0, mx, np.nan)[keep].astype(np.float32)),
        "min": torch.from_numpy(np.where(n > 0, mn, np.nan)[keep].astype(np.float32)),
    }


def _retotal(scalars: dict[str, Any], grads: dict[str, Any]) -> None:
    """``grad_norm_total`` of the whole (sharded) model, from the merged per-module norms."""
    if "grad_norm_total" not in scalars["columns"]:
        return
    col = scalars["columns"].index("grad_norm_total")
    rows = {int(k): i for i, k in enumerate(grads["steps"].tolist())}
    counts = cell_counts(scalars)
    for stat in ("mean", "max", "min"):
        g = grads[stat].double()
        total = torch.sqrt(torch.nansum(g * g, dim=1)).float()
        for i, step in enumerate(scalars["steps"].tolist()):
            if int(step) in rows and counts[i, col] > 0:
                scalars[stat][i, col] = total[rows[int(step)]]


def main(argv: list[str] | None = None) -> int:
    """``python -m resdoctor.integrations.distributed RUN``: merge RUN's per-rank files into RUN."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m resdoctor.integrations.distributed RUN.pt", file=sys.stderr)
        return 2
    files = rank_files(args[0])
    if not files:
        print(f"{args[0]}: no per-rank files ({rank_path(args[0], 0)}, ...)", file=sys.stderr)
        return 2
    try:
        runfile.write(merge(files, path=args[0]), args[0])
    except runfile.RunFileError as e:
        print(str(e), file=sys.stderr)
        return 2
    print(f"merged {len(files)} rank files into {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
