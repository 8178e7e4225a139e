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


@dataclass
class SegmentMeta:
    forwards: int
    backwards: int
    stepped: bool
    scalars: dict[str, float]
    has_optimizer: bool


class _Accumulator:
    """Per-site sums of one step (several segments when gradient accumulation folds them)."""

    # kind -> (series names, how to combine): "rms" averages squares, "mean" averages values
    SPEC: dict[str, tuple[tuple[str, ...], str]] = {
        "site": (SITE_MAGNITUDES, "rms"),
        "smooth": (SMOOTHING, "mean"),
        "gshare": (("grad_branch_share",), "mean"),
        "lsmooth": (SMOOTHING, "mean"),  # layers of site-less models
    }

    def __init__(self, sites: int, layers: int = 0) -> None:
        self.sites = sites
        self.size = {k: (layers if k == "lsmooth" else sites) for k in self.SPEC}
        self.sums = {k: np.zeros((self.size[k], len(v[0]))) for k, v in self.SPEC.items()}
        self.counts = {k: np.zeros(self.size[k]) for k in self.SPEC}
        self.scalars: dict[str, list[float]] = defaultdict(list)

    def add(self, blocks: dict[str, Any], scalars: dict[str, float]) -> None:
        for kind, (_, combine) in self.SPEC.items():
            n = self.size[kind]
            if kind not in blocks or not n:
                continue
            idx, values = blocks[kind]
            values = values**2 if combine == "rms" else values
            for j in range(values.shape[1]):
                self.sums[kind][:, j] += np.bincount(idx, values[:, j], minlength=n)
            self.counts[kind] += np.bincount(idx, minlength=n)
        for name, x in scalars.items():
            self.scalars[name].append(x)

    def rows(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{series name: (values [sites], present mask)}``."""
        out = {}
        for kind, (names, combine) in self.SPEC.items():
            if not self.size[kind]:
                continue
            n = self.counts[kind]
            present = n > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = self.sums[kind] / np.maximum(n, 1)[:, None]
            mean = np.sqrt(mean) if combine == "rms" else mean
            for j, name in enumerate(names):
                out[name] = (np.where(present, mean[:, j], np.nan), present)
        return out


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
        self._absmax: np.ndarray | None = None  # this step's max |output| per param module
        self._unit_cols: dict[str, list[str]] = {"dead": [], "sat": []}
        self._units: dict[str, tuple[np.ndarray, np.ndarray]] = {}
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
        self._units = {k: (np.zeros(len(c)), np.zeros(len(c))) for k, c in self._unit_cols.items()}

    def _fold_units(self, blocks: dict[str, Any]) -> None:
        for kind in ("dead", "sat"):
            cols = self._unit_cols[kind]
            if not cols or kind not in blocks:
                continue
            idx, v = blocks[kind]
            total, count = self._units[kind]
            total += np.bincount(idx, v[:, 0], minlength=len(cols))
            count += np.bincount(idx, minlength=len(cols))

    def _commit_units(self, step: int) -> None:
        for kind, name in (("dead", "dead_units"), ("sat", "saturation")):
            cols = self._unit_cols[kind]
            if not cols:
                continue
            total, count = self._units[kind]
            if count.any():
                with np.errstate(invalid="ignore", divide="ignore"):
                    self.series[name].append(step, total / np.maximum(count, 1), count > 0)
            total[:] = 0
            count[:] = 0

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

    # -- one transferred segment ---------------------------------------------------------------
    def consume(self, meta: SegmentMeta, blocks: dict[str, Any], rank: int = 0) -> None:
        """Fold one transferred segment (see ``_segment.unpack``) into the run."""
        vectors = blocks["vec"]
        meta.scalars.update(blocks["scalar"])
        skipped = self._classify(meta, vectors)
        self._onsets(blocks, vectors, meta.scalars, skipped, rank)
        if self._acc is None or self._acc.sites != len(self.sites):
            self._acc = _Accumulator(len(self.sites), len(self.layers))
        self._acc.add(blocks, meta.scalars)
        self._fold_absmax(blocks)
        self._fold_units(blocks)
        if skipped is not None:  # None: a micro-step of gradient accumulation, wait for the step
            self._commit(vectors, skipped)

    def _fold_absmax(self, blocks: dict[str, Any]) -> None:
        """Keep the forward check's output min/max as the per-module largest |value|."""
        if "fwd" not in blocks or not len(self.param_modules):
            return
        idx, v = blocks["fwd"]
        cols = self._param_col[idx]
        keep = cols >= 0
        if not keep.any():
            return
        with np.errstate(invalid="ignore"):
            amax = np.nan_to_num(np.abs(v[keep, 2:4]).max(axis=1), nan=np.inf)
        if self._absmax is None:
            self._absmax = np.full(len(self.param_modules), np.nan)
        current = np.where(np.isnan(self._absmax), -np.inf, self._absmax)
        np.maximum.at(current, cols[keep], amax)
        self._absmax = np.where(np.isinf(current) & (current < 0), np.nan, current)

    def _classify(self, meta: SegmentMeta, vectors: dict[str, np.ndarray]) -> bool | None:
        """False: a step; True: a step the GradScaler skipped; None: an accumulation micro-step."""
        if not meta.has_optimizer or meta.stepped:
            return False
        if onsets.bad_mask(vectors, "grad").any():
            return True
        return None if (meta.backwards or meta.forwards) else False

    def _commit(self, vectors: dict[str, np.ndarray], skipped: bool) -> None:
        step = self.steps
        acc, self._acc = self._acc, None
        assert acc is not None
        rows = acc.rows() if (self.sites or self.layers) else {}
        for name, (values, present) in rows.items():
            if present.any():
                self.series[name].append(step, values, present)
        if "skip_norm" in rows and rows["skip_norm"][1].any():
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = rows["branch_norm"][0] / rows["skip_norm"][0]
            rows["branch_ratio"] = (ratio, rows["skip_norm"][1])
            self.series["branch_ratio"].append(step, ratio, rows["skip_norm"][1])
        everywhere = np.ones(len(self.param_modules), bool)
        if self._absmax is not None:
            vectors = {**vectors, "act_absmax": self._absmax}
            self._absmax = None
        for name in MODULE_SIGNALS:
            if name in vectors and len(vectors[name]) == len(self.param_modules):
                present = ~np.isnan(vectors[name]) if name == "act_absmax" else everywhere
                self.series[name].append(step, vectors[name], present)
        scalars = {k: float(np.mean(v)) for k, v in acc.scalars.items()}
        if "grad_norm" in vectors:
            scalars["grad_norm_total"] = float(np.sqrt(np.sum(vectors["grad_norm"] ** 2)))
        if scalars:
            s = self.series["scalars"]
            s.add_columns(sorted(scalars))
            row = np.array([scalars.get(c, np.nan) for c in s.columns])
            s.append(step, row, present=np.array([c in scalars for c in s.columns]))
        self._commit_units(step)
        if skipped:
            self.skipped.append(step)
        self.last = {
            "step": step,
            "skipped": skipped,
            "scalars": scalars,
            **vectors,
            **{k: v[0] for k, v in rows.items()},
            # which site values were measured this step (a NaN there is a measured NaN)
            "present": {k: v[1] for k, v in rows.items()},
        }
        self.steps += 1

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
