"""Journal: the host-side record of a run. It turns transferred segments into steps, series rows,
exact non-finite onsets and skipped steps, and produces the run-file state."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from resdoctor.recording import onsets
from resdoctor.runfile import io as runfile
from resdoctor.runfile.layout import RunState
from resdoctor.runfile.series import Series
from resdoctor.runfile.signals import MODULE_SIGNALS, SITE_MAGNITUDES, SITE_SIGNALS, SMOOTHING
from resdoctor.version import __version__


def _add_at(out: np.ndarray, idx: np.ndarray, values: np.ndarray | int) -> None:
    """``out[:, idx] += values``, repeated indices adding up in order."""
    if np.unique(idx).size == idx.size:  # the usual case, and much faster than ``add.at``
        out[:, idx] += values
    else:
        np.add.at(out.swapaxes(0, 1), idx, np.swapaxes(values, 0, 1) if np.ndim(values) else values)


_FLAT = ("vec", "scalar")
# segments that share a layout: (their positions among the consumed ones, their blocks)
Parts = list[tuple[np.ndarray, dict[str, Any]]]  # the blocks that are not rows of a kind


def _part(blocks: dict[str, Any], part: slice | np.ndarray) -> dict[str, Any]:
    """Some of the segments of ``Unpacker.many`` blocks (still with the leading dimension)."""
    out: dict[str, Any] = {flat: {n: v[part] for n, v in blocks[flat].items()} for flat in _FLAT}
    out.update({k: (v[0], v[1][part]) for k, v in blocks.items() if k not in _FLAT})
    return out


def _first(blocks: dict[str, Any]) -> dict[str, Any]:
    """The first segment of ``Unpacker.many`` blocks, as ``Unpacker`` gives one segment."""
    return {
        "vec": {n: v[0] for n, v in blocks["vec"].items()},
        "scalar": {n: float(v[0]) for n, v in blocks["scalar"].items()},
        **{k: (v[0], v[1][0]) for k, v in blocks.items() if k not in _FLAT},
    }


@dataclass
class SegmentMeta:
    forwards: int
    backwards: int
    stepped: bool
    scalars: dict[str, float]
    has_optimizer: bool


class _Accumulator:
    """What ``k`` steps measured until they are committed: one step over its segments (several
    under gradient accumulation), or ``k`` whole steps folded in at once. Every value has a
    leading ``k`` dimension; one segment's blocks are ``k = 1``."""

    # kind -> (series names, how to combine): "rms" averages squares, "mean" averages values
    SPEC: dict[str, tuple[tuple[str, ...], str]] = {
        "site": (SITE_MAGNITUDES, "rms"),
        "smooth": (SMOOTHING, "mean"),
        "gshare": (("grad_branch_share",), "mean"),
        "lsmooth": (SMOOTHING, "mean"),  # layers of site-less models
    }

    def __init__(self, k: int, sites: int, layers: int, param_col: np.ndarray, units: dict) -> None:
        self.k, self.sites = k, sites
        self.size = {kind: (layers if kind == "lsmooth" else sites) for kind in self.SPEC}
        self.sums: dict[str, np.ndarray] = {}  # kinds measured: [k, size, names]
        self.counts: dict[str, np.ndarray] = {}  # [k, size]
        self.scalars: dict[str, list[float]] = defaultdict(list)
        self.param_col = param_col  # module index -> column among the parameterised, or -1
        self.params = int((param_col >= 0).sum())
        self.absmax: np.ndarray | None = None  # [k, params] max |output|; -inf: none checked
        self.unit_sizes = units  # "dead"/"sat" -> columns
        self.units: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # kind -> (total, count)

    def add(self, blocks: dict[str, Any], at: np.ndarray | None = None) -> None:
        """Blocks with a leading dimension on every value: what the steps ``at`` (default: all
        ``k``) measured, one segment each."""
        where: slice | np.ndarray = slice(None) if at is None else at
        for kind, (names, combine) in self.SPEC.items():
            size = self.size[kind]
            if kind not in blocks or not size:
                continue
            idx, values = blocks[kind]
            sums, counts = np.zeros((len(values), size, len(names))), np.zeros((len(values), size))
            _add_at(sums, idx, values**2 if combine == "rms" else values)
            _add_at(counts, idx, 1)
            if kind not in self.sums:
                self.sums[kind] = np.zeros((self.k, size, len(names)))
                self.counts[kind] = np.zeros((self.k, size))
            self.sums[kind][where] += sums
            self.counts[kind][where] += counts
        self._absmax(blocks, where)
        for kind, cols in self.unit_sizes.items():
            if cols and kind in blocks:
                idx, v = blocks[kind]
                total, count = np.zeros((len(v), cols)), np.zeros((len(v), cols))
                _add_at(total, idx, v[..., 0])
                _add_at(count, idx, 1)
                if kind not in self.units:
                    self.units[kind] = (np.zeros((self.k, cols)), np.zeros((self.k, cols)))
                self.units[kind][0][where] += total
                self.units[kind][1][where] += count

    def _absmax(self, blocks: dict[str, Any], where: slice | np.ndarray) -> None:
        """The forward check's output min/max as the per-module largest |value| (a NaN output
        reads inf)."""
        if "fwd" not in blocks or not self.params:
            return
        idx, v = blocks["fwd"]
        cols = self.param_col[idx]
        keep = cols >= 0
        amax = np.maximum(np.abs(v[:, keep, 2]), np.abs(v[:, keep, 3]))
        amax[np.isnan(amax)] = np.inf
        top = np.full((len(v), self.params), -np.inf)
        cols = cols[keep]
        if np.unique(cols).size == cols.size:
            top[:, cols] = amax
        else:  # a module called several times: its largest output
            np.maximum.at(top.swapaxes(0, 1), cols, amax.swapaxes(0, 1))
        if self.absmax is None:
            self.absmax = np.full((self.k, self.params), -np.inf)
        self.absmax[where] = np.maximum(self.absmax[where], top)

    def rows(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{series name: (values [k, sites], present mask [k, sites])}``."""
        out = {}
        for kind, (names, combine) in self.SPEC.items():
            size = self.size[kind]
            if not size:
                continue
            if kind not in self.sums:  # not measured
                nothing, absent = np.full((self.k, size), np.nan), np.zeros((self.k, size), bool)
                out.update({name: (nothing, absent) for name in names})
                continue
            n = self.counts[kind]
            present = n > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = self.sums[kind] / np.maximum(n, 1)[..., None]
                if combine == "rms":
                    np.sqrt(mean, out=mean)
            if not present.all():
                mean[~present] = np.nan
            out.update({name: (mean[..., j], present) for j, name in enumerate(names)})
        return out

    def unit_rows(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{"dead"/"sat": (mean [k, columns], present [k, columns])}``."""
        out = {}
        for kind, (total, count) in self.units.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                out[kind] = (total / np.maximum(count, 1), count > 0)
        return out

    def means(self) -> dict[str, float]:
        """One step's logged scalars, averaged over its segments."""
        return {k: v[0] if len(v) == 1 else float(np.mean(v)) for k, v in self.scalars.items()}


class Journal:
    """Host-side state; everything in it is bounded (series capacity, event cap)."""

    def __init__(
        self,
        modules: list[dict[str, Any]],
        param_modules: list[str],
        capacity: int,
        max_events: int,
        meta: dict[str, Any],
    ) -> None:
        self.modules = modules
        self.param_modules = param_modules
        self.capacity = capacity
        self.max_events = max_events
        self.meta = meta
        self.sites: list[dict[str, Any]] = []
        self.layers: list[str] = []
        self.steps = 0
        self.series: dict[str, Series] = {
            name: Series(param_modules, capacity) for name in MODULE_SIGNALS
        }
        self.series["scalars"] = Series([], capacity)
        self.events: list[dict[str, Any]] = []
        self._event_keys: set[tuple[str, str, bool]] = set()
        self.skipped: list[int] = []
        self.errors: list[dict[str, Any]] = []
        self._acc: _Accumulator | None = None
        self._order = {m["name"]: m["order"] for m in modules}
        self._names = [m["name"] for m in modules]
        # module index (all modules) -> its column among the parameterised ones, -1 if none
        column = {n: j for j, n in enumerate(param_modules)}
        self._param_col = np.array([column.get(n, -1) for n in self._names], dtype=np.int64)
        self._unit_cols: dict[str, list[str]] = {"dead": [], "sat": []}
        self.last: dict[str, Any] = {}  # the latest committed step, for live integrations

    # -- what integrations read and add (through ``integration.Context``) -------------------
    def latest(self) -> dict[str, Any]:
        """The latest committed step's host values (a shallow copy; empty before step 0)."""
        return dict(self.last)

    def events_since(self, since: int = 0) -> list[dict[str, Any]]:
        return [dict(e) for e in self.events[max(0, since) :]]

    def set_meta(self, key: str, value: Any, *, replace: bool = True) -> None:
        if replace or key not in self.meta:
            self.meta[key] = value

    # -- extra series (integrations such as attribution) -------------------------------------
    def extra(self, name: str, columns: list[str], step: int, values: np.ndarray) -> None:
        """Append one row of an extra signal (created on first use) at ``step``."""
        series = self.series.get(name)
        if series is None:
            series = self.series[name] = Series(list(columns), self.capacity)
        series.add_columns(list(columns))
        row = np.full(len(series.columns), np.nan)
        for c, v in zip(columns, np.asarray(values, dtype=np.float64)):
            row[series.columns.index(c)] = v
        series.append(step, row)

    # -- sites arrive after the first forward -------------------------------------------------
    def set_sites(self, sites: list[dict[str, Any]]) -> None:
        self.sites = sites
        names = [s["name"] for s in sites]
        for name in SITE_SIGNALS:
            self.series[name] = Series(names, self.capacity)

    def set_layers(self, layers: list[str]) -> None:
        """A model without residual sites: smoothing is sampled at these layers' outputs."""
        self.layers = list(layers)
        for name in SMOOTHING:
            self.series[name] = Series(self.layers, self.capacity)

    def set_units(self, dead: list[str], saturated: list[str]) -> None:
        """Activation modules: ReLUs (dead units) and sigmoid / tanh (saturated inputs)."""
        self._unit_cols = {"dead": list(dead), "sat": list(saturated)}
        for kind, name in (("dead", "dead_units"), ("sat", "saturation")):
            if self._unit_cols[kind]:
                self.series[name] = Series(self._unit_cols[kind], self.capacity)

    def set_nan_ops(self, ops: dict[str, list[str]]) -> None:
        """NaN-prone ops (log, sqrt, div, custom autograd functions) each module's own code ran:
        where a ``guard-op`` fix can clamp an operand."""
        for m in self.modules:
            if ops.get(m["name"]):
                m["nan_ops"] = list(ops[m["name"]])

    def set_order(self, order: dict[str, int]) -> None:
        for m in self.modules:
            m["order"] = order.get(m["name"], m["order"])
        self._order = {m["name"]: m["order"] for m in self.modules}

    # -- transferred segments ------------------------------------------------------------------
    def consume(self, meta: SegmentMeta, blocks: dict[str, Any], rank: int = 0) -> None:
        """Fold one transferred segment (see ``segment.Unpacker``) into the run."""
        vectors = blocks["vec"]
        meta.scalars.update(blocks["scalar"])
        skipped = self._classify(meta, vectors)
        if not onsets.clean(blocks, vectors, meta.scalars):
            self._onsets(blocks, vectors, meta.scalars, skipped, rank)
        if self._acc is None or self._acc.sites != len(self.sites):
            self._acc = self._accumulator(1)
        self._acc.add({k: (v[0], v[1][None]) for k, v in blocks.items() if k not in _FLAT})
        for name, x in meta.scalars.items():
            self._acc.scalars[name].append(x)
        if skipped is not None:  # None: a micro-step of gradient accumulation, wait for the step
            acc, self._acc = self._acc, None
            one = {k: np.asarray(v)[None] for k, v in vectors.items()}
            has = {k: np.ones(1, dtype=bool) for k in one}
            self._commit(acc, one, has, [acc.means()], np.array([skipped]))

    def consume_many(
        self,
        metas: list[SegmentMeta],
        parts: Parts,
        rank: int = 0,
    ) -> None:
        """Consecutive segments, ``metas`` in order, their values in ``parts``: ``(positions,
        blocks)`` for the segments that share one layout, as ``Unpacker.many`` gives them (a
        leading dimension on every value). Runs of whole, clean steps (stepped, all finite: no
        onset to look for, no skip) are committed together with a few vectorised operations;
        every other segment goes through ``consume``, in order. The run is the same, bit for
        bit, as consuming each segment on its own."""
        k = len(metas)
        plain = np.array([m.stepped or not m.has_optimizer for m in metas])
        owner, local = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
        for p, (positions, blocks) in enumerate(parts):
            owner[positions], local[positions] = p, np.arange(len(positions))
            loss = blocks["scalar"].get("loss")
            if loss is None:
                loss = np.array([metas[i].scalars.get("loss", 0.0) for i in positions])
            plain[positions] &= onsets.clean_many(blocks, blocks["vec"], loss)
        i = 0
        while i < k:
            j = i + 1
            if plain[i] and self._acc is None:
                while j < k and plain[j]:
                    j += 1
                self._commit_whole(metas, parts, i, j)
            else:
                blocks = parts[owner[i]][1]
                self.consume(metas[i], _first(_part(blocks, slice(local[i], local[i] + 1))), rank)
            i = j

    def _commit_whole(
        self,
        metas: list[SegmentMeta],
        parts: Parts,
        first: int,
        end: int,
    ) -> None:
        """Whole, clean steps ``first..end-1``, one segment each."""
        k = end - first
        acc = self._accumulator(k)
        vectors: dict[str, np.ndarray] = {}
        has: dict[str, np.ndarray] = {}  # vector name -> the steps that measured it
        for positions, blocks in parts:
            mine = (positions >= first) & (positions < end)
            if not mine.any():
                continue
            sub = _part(blocks, mine)
            at = positions[mine] - first
            acc.add({name: v for name, v in sub.items() if name not in _FLAT}, at)
            for name, v in sub["vec"].items():
                if name not in vectors:
                    vectors[name] = np.full((k, *v.shape[1:]), np.nan)
                    has[name] = np.zeros(k, dtype=bool)
                vectors[name][at], has[name][at] = v, True
            for i, step in enumerate(at):
                meta = metas[first + step]
                meta.scalars.update({n: float(v[i]) for n, v in sub["scalar"].items()})
        scalars = [dict(m.scalars) for m in metas[first:end]]
        self._commit(acc, vectors, has, scalars, np.zeros(k, dtype=bool))

    def _accumulator(self, k: int) -> _Accumulator:
        units = {kind: len(cols) for kind, cols in self._unit_cols.items()}
        return _Accumulator(k, len(self.sites), len(self.layers), self._param_col, units)

    def _classify(self, meta: SegmentMeta, vectors: dict[str, np.ndarray]) -> bool | None:
        """False: a step; True: a step the GradScaler skipped; None: an accumulation micro-step."""
        if not meta.has_optimizer or meta.stepped:
            return False
        if onsets.bad_mask(vectors, "grad").any():
            return True
        return None if (meta.backwards or meta.forwards) else False

    def _commit(
        self,
        acc: _Accumulator,
        vectors: dict[str, np.ndarray],
        has: dict[str, np.ndarray],
        scalars: list[dict[str, float]],
        skipped: np.ndarray,
    ) -> None:
        """Commit ``k`` steps: ``vectors`` and every row carry a leading ``k`` dimension; ``has``
        says which steps measured each vector."""
        k = len(scalars)
        steps = np.arange(self.steps, self.steps + k)
        rows = acc.rows() if (self.sites or self.layers) else {}
        for name, (values, present) in rows.items():
            self._extend(name, steps, values, present)
        if "skip_norm" in rows:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = rows["branch_norm"][0] / rows["skip_norm"][0]
            self._extend("branch_ratio", steps, ratio, rows["skip_norm"][1])
            if rows["skip_norm"][1][-1].any():
                rows["branch_ratio"] = (ratio, rows["skip_norm"][1])
        if acc.absmax is not None:
            absmax = np.where(acc.absmax == -np.inf, np.nan, acc.absmax)
            vectors = {**vectors, "act_absmax": absmax}
            has = {**has, "act_absmax": np.ones(k, dtype=bool)}
        self._commit_vectors(steps, vectors, has, scalars)
        self._commit_scalars(steps, scalars)
        for kind, (mean, present) in acc.unit_rows().items():
            self._extend("dead_units" if kind == "dead" else "saturation", steps, mean, present)
        self.skipped.extend(steps[skipped].tolist())
        self.last = {
            "step": int(steps[-1]),
            "skipped": bool(skipped[-1]),
            "scalars": scalars[-1],
            **{name: v[-1] for name, v in vectors.items() if has[name][-1]},
            **{name: v[0][-1] for name, v in rows.items()},
            # which site values were measured this step (a NaN there is a measured NaN)
            "present": {name: v[1][-1] for name, v in rows.items()},
        }
        self.steps += k

    def _commit_vectors(
        self,
        steps: np.ndarray,
        vectors: dict[str, np.ndarray],
        has: dict[str, np.ndarray],
        scalars: list[dict[str, float]],
    ) -> None:
        """Per-module vectors, where measured; the total gradient norm joins each step's
        scalars."""
        for name in MODULE_SIGNALS:
            if name in vectors and vectors[name].shape[-1] == len(self.param_modules):
                v, measured = vectors[name], has[name]
                # a NaN norm is a measured NaN; a NaN abs-max: no output checked
                present = ~np.isnan(v) if name == "act_absmax" else np.ones(v.shape, bool)
                if not measured.all():
                    v, present = v[measured], present[measured]
                self.series[name].extend(steps[measured], v, present)
        if "grad_norm" in vectors:
            total = np.sqrt(np.sum(vectors["grad_norm"] ** 2, axis=-1))
            for i in np.flatnonzero(has["grad_norm"]):
                scalars[i]["grad_norm_total"] = float(total[i])

    def _extend(
        self, name: str, steps: np.ndarray, values: np.ndarray, present: np.ndarray
    ) -> None:
        """The steps' rows of a per-site / per-unit series, where anything was measured."""
        measured = present.any(axis=1)
        if measured.all():
            self.series[name].extend(steps, values, present)
        elif measured.any():
            self.series[name].extend(steps[measured], values[measured], present[measured])

    def _commit_scalars(self, steps: np.ndarray, scalars: list[dict[str, float]]) -> None:
        s = self.series["scalars"]
        for row in scalars:  # columns in the order they first appear
            s.add_columns(sorted(row))
        logged = [i for i, row in enumerate(scalars) if row]
        if not logged:
            return
        values = np.array([[scalars[i].get(c, np.nan) for c in s.columns] for i in logged])
        present = np.array([[c in scalars[i] for c in s.columns] for i in logged])
        s.extend(steps[logged], values, present)

    # -- non-finite onsets ---------------------------------------------------------------------
    def _onsets(
        self,
        blocks: dict[str, Any],
        vectors: dict[str, np.ndarray],
        scalars: dict[str, float],
        skipped: bool | None,
        rank: int,
    ) -> None:
        table = onsets.ModuleTable(
            self._names, self.param_modules, self._order, int(self.meta.get("world_size") or 1)
        )
        # a step left without optimizer.step() after non-finite gradients is an AMP skip only
        # when a GradScaler can be at work; else the loop gave up on it (clip_grad_norm_ with
        # error_if_nonfinite=True raised) and the NaN/Inf is a real one
        amp = bool(skipped) and (
            bool(self.meta.get("grad_scaler")) or self.meta.get("autocast") == "float16"
        )
        for onset in onsets.find(blocks, vectors, scalars, table):
            self._event(onset.module, onset.phase, rank, amp, onset.detail)

    def _event(self, module: str, phase: str, rank: int, amp: bool, detail: dict) -> None:
        key = (module, phase, amp)
        if key in self._event_keys or len(self.events) >= self.max_events:
            return
        self._event_keys.add(key)
        self.events.append(
            {
                "kind": "nonfinite",
                "step": self.steps,
                "module": module,
                "phase": phase,
                "rank": rank,
                "detail": {**detail, "amp_skipped": amp},
            }
        )

    # -- run file --------------------------------------------------------------------------
    def state(self, options: dict[str, Any]) -> RunState:
        state: dict[str, Any] = {
            "format": runfile.FORMAT,
            "schema_version": runfile.SCHEMA_VERSION,
            "resdoctor_version": __version__,
            "torch_version": str(torch.__version__),
            "written": time.time(),
            **self.meta,
            "options": options,
            "steps": self.steps,
            "modules": [dict(m) for m in self.modules],
            "sites": [dict(s) for s in self.sites],
            "layers": list(self.layers),
            "series": {k: s.to_state() for k, s in self.series.items()},
            "events": [dict(e) for e in self.events],
            "skipped_steps": torch.tensor(self.skipped[-100_000:], dtype=torch.long),
            "errors": [dict(e) for e in self.errors],
        }
        return cast(RunState, state)  # meta adds model_class, rank, device, ...
