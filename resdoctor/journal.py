"""Journal: the host-side record of a run. It turns transferred segments into steps, series rows,
exact non-finite onsets and skipped steps, and produces the run-file state."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from resdoctor import runfile
from resdoctor._version import __version__
from resdoctor.series import Series

SITE_QUANTITIES = ("skip_norm", "branch_norm", "stream_norm")  # order of a ("site", i) entry


@dataclass
class SegmentMeta:
    forwards: int
    backwards: int
    stepped: bool
    scalars: dict[str, float]
    has_optimizer: bool


@dataclass
class _Pending:
    """Values of micro-segments (gradient accumulation) waiting for their optimizer step."""

    sums: dict[tuple[str, int], list[float]] = field(default_factory=lambda: defaultdict(list))
    scalars: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


class Journal:
    """Host-side state; everything in it is bounded (series capacity, event cap)."""

    def __init__(self, modules: list[dict[str, Any]], param_modules: list[str], capacity: int,
                 max_events: int, meta: dict[str, Any]) -> None:
        self.modules = modules
        self.param_modules = param_modules
        self.capacity = capacity
        self.max_events = max_events
        self.meta = meta
        self.sites: list[dict[str, Any]] = []
        self.steps = 0
        self.series: dict[str, Series] = {
            name: Series(param_modules, capacity) for name in ("grad_norm", "param_norm",
                                                               "update_ratio")
        }
        self.series["scalars"] = Series([], capacity)
        self.events: list[dict[str, Any]] = []
        self._event_keys: set[tuple[str, str, bool]] = set()
        self.skipped: list[int] = []
        self.errors: list[dict[str, Any]] = []
        self._pending = _Pending()
        self._order = {m["name"]: m["order"] for m in modules}
        self._param_order = np.array([self._order.get(n, -1) for n in param_modules])
        self.last: dict[str, Any] = {}  # the latest committed step, for live integrations

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
        for name in ("branch_ratio", *SITE_QUANTITIES, "smoothing", "smoothing_energy",
                     "grad_branch_share"):
            self.series[name] = Series(names, self.capacity)

    def set_order(self, order: dict[str, int]) -> None:
        for m in self.modules:
            m["order"] = order.get(m["name"], m["order"])
        self._order = {m["name"]: m["order"] for m in self.modules}
        self._param_order = np.array([self._order.get(n, -1) for n in self.param_modules])

    # -- one transferred segment ---------------------------------------------------------------
    def consume(self, meta: SegmentMeta, values: list[tuple[Any, np.ndarray]],
                rank: int = 0) -> None:
        vectors = {key[1]: v for key, v in values if key[0] == "vec"}
        for key, v in values:
            if key[0] == "scalar":
                meta.scalars[key[1]] = float(v[0])
        skipped = self._classify(meta, vectors)
        self._onsets(values, vectors, skipped, rank)
        if skipped is None:  # micro-step of gradient accumulation: wait for the optimizer step
            self._hold(values, meta)
            return
        self._commit(values, vectors, meta, skipped)

    def _classify(self, meta: SegmentMeta, vectors: dict[str, np.ndarray]) -> bool | None:
        """False: a step; True: a step the GradScaler skipped; None: an accumulation micro-step."""
        if not meta.has_optimizer or meta.stepped:
            return False
        grads = vectors.get("grad_norm")
        if grads is not None and not np.all(np.isfinite(grads)):
            return True
        return None if (meta.backwards or meta.forwards) else False

    def _hold(self, values: list[tuple[Any, np.ndarray]], meta: SegmentMeta) -> None:
        for key, v in values:
            if key[0] in ("site", "smooth", "gshare"):
                for j, x in enumerate(v):
                    self._pending.sums[(f"{key[0]}{j}", key[1])].append(float(x))
        for name, x in meta.scalars.items():
            self._pending.scalars[name].append(x)

    def _commit(self, values: list[tuple[Any, np.ndarray]], vectors: dict[str, np.ndarray],
                meta: SegmentMeta, skipped: bool) -> None:
        step = self.steps
        pend, self._pending = self._pending, _Pending()
        for key, v in values:
            if key[0] in ("site", "smooth", "gshare"):
                for j, x in enumerate(v):
                    pend.sums[(f"{key[0]}{j}", key[1])].append(float(x))
        self._site_rows(step, pend.sums)
        for name in ("grad_norm", "param_norm", "update_ratio"):
            if name in vectors and len(vectors[name]) == len(self.param_modules):
                self.series[name].append(step, vectors[name],
                                         present=np.ones(len(self.param_modules), bool))
        scalars = {k: float(np.mean(v)) for k, v in pend.scalars.items()}
        scalars.update({k: float(np.mean([*pend.scalars.get(k, []), x]))
                        for k, x in meta.scalars.items()})
        if "grad_norm" in vectors:
            scalars["grad_norm_total"] = float(np.sqrt(np.sum(vectors["grad_norm"] ** 2)))
        if scalars:
            s = self.series["scalars"]
            s.add_columns(sorted(scalars))
            row = np.array([scalars.get(c, np.nan) for c in s.columns])
            s.append(step, row, present=np.array([c in scalars for c in s.columns]))
        if skipped:
            self.skipped.append(step)
        self.last = {"step": step, "skipped": skipped, "scalars": scalars,
                     **{k: v for k, v in vectors.items()}, **self._last_sites(step)}
        self.steps += 1

    def _last_sites(self, step: int) -> dict[str, np.ndarray]:
        """Site signals of ``step`` if that step is still its own row (stride 1)."""
        out = {}
        for name in ("branch_ratio", "stream_norm", "smoothing", "grad_branch_share"):
            s = self.series.get(name)
            last = s.last() if s is not None and s.stride == 1 else None
            if last is not None and last[0] == step:
                out[name] = last[1]
        return out

    def _site_rows(self, step: int, sums: dict[tuple[str, int], list[float]]) -> None:
        if not self.sites:
            return
        n = len(self.sites)
        cols: dict[str, np.ndarray] = {}
        spec = [("site0", "skip_norm"), ("site1", "branch_norm"), ("site2", "stream_norm"),
                ("smooth0", "smoothing"), ("smooth1", "smoothing_energy"),
                ("gshare0", "grad_branch_share")]
        for part, name in spec:
            arr = np.full(n, np.nan)
            present = np.zeros(n, bool)
            for i in range(n):
                xs = sums.get((part, i))
                if xs:
                    arr[i] = _rms_mean(xs) if part.startswith("site") else float(np.mean(xs))
                    present[i] = True
            cols[name] = arr
            if present.any():
                self.series[name].append(step, arr, present)
        present = ~np.isnan(cols["skip_norm"]) | ~np.isnan(cols["branch_norm"])
        if present.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = cols["branch_norm"] / cols["skip_norm"]
            self.series["branch_ratio"].append(step, ratio, present)

    # -- non-finite onsets ---------------------------------------------------------------------
    def _onsets(self, values: list[tuple[Any, np.ndarray]], vectors: dict[str, np.ndarray],
                skipped: bool | None, rank: int) -> None:
        amp = bool(skipped)
        names = [m["name"] for m in self.modules]
        forward_bad = False
        for key, v in values:
            if key[0] != "fwd":
                continue
            bad_out = not np.isfinite(v[1])
            if bad_out:
                forward_bad = True
                if np.isfinite(v[0]):
                    self._event(names[key[1]], "forward", rank, amp, {"input_rms": float(v[0])})
        grads = vectors.get("grad_norm")
        grads_bad = grads is not None and not np.all(np.isfinite(grads))
        if grads_bad and not forward_bad:
            # backward runs in reverse: the NaN was made by the latest module in forward order
            # whose parameter gradients (or, for parameter-free ops, input gradient) went bad
            bad = [(self._order.get(self.param_modules[i], -1), self.param_modules[i])
                   for i in np.flatnonzero(~np.isfinite(grads))]
            bad += [(self._order.get(names[k[1]], -1), names[k[1]])
                    for k, v in values if k[0] == "bwd" and not np.isfinite(v[0])]
            order, module = max(bad)
            self._event(module, "backward", rank, amp, {"modules_affected": len(bad)})
        params = vectors.get("param_norm")
        if params is not None and not grads_bad and not forward_bad:
            bad = np.flatnonzero(~np.isfinite(params))
            if len(bad):
                first = bad[np.argmin(self._param_order[bad])]
                self._event(self.param_modules[first], "optimizer", rank, amp,
                            {"modules_affected": int(len(bad))})

    def _event(self, module: str, phase: str, rank: int, amp: bool, detail: dict) -> None:
        key = (module, phase, amp)
        if key in self._event_keys or len(self.events) >= self.max_events:
            return
        self._event_keys.add(key)
        self.events.append({"kind": "nonfinite", "step": self.steps, "module": module,
                            "phase": phase, "rank": rank, "detail": {**detail, "amp_skipped": amp}})

    # -- run file --------------------------------------------------------------------------
    def state(self, options: dict[str, Any]) -> dict[str, Any]:
        return {
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
            "series": {k: s.to_state() for k, s in self.series.items()},
            "events": [dict(e) for e in self.events],
            "skipped_steps": torch.tensor(self.skipped[-100_000:], dtype=torch.long),
            "errors": [dict(e) for e in self.errors],
        }


def _rms_mean(xs: list[float]) -> float:
    """Combine RMS values of several forwards of one step (accumulation) into one RMS."""
    return float(np.sqrt(np.mean(np.square(xs))))
