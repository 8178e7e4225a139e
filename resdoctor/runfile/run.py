"""Run: a recorded run file as pandas views."""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd

from resdoctor.runfile import io as runfile
from resdoctor.runfile.layout import RunState, cell_counts, phase_rank

Stat = Literal["mean", "max", "min"]


class Run:
    """Read-only views of one recorded run.

    ``series(signal)`` gives a step x (module or site) table for any signal; ``scalars()`` the
    logged scalars (loss, lr, ...); ``events`` the exact non-finite onsets; ``skipped_steps`` the
    steps an AMP GradScaler skipped.
    """

    def __init__(self, state: RunState, path: str | None = None) -> None:
        runfile.validate(state, path or "run")
        self.state = state
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Run:
        return cls(runfile.read(path), os.fspath(path))

    # -- metadata ----------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        return int(self.state["steps"])

    @property
    def meta(self) -> dict[str, Any]:
        keys = (
            "resdoctor_version",
            "torch_version",
            "model_class",
            "created",
            "rank",
            "world_size",
            "schema_version",
            "device",
            "architecture",
        )
        return {k: self.state.get(k) for k in keys}

    @property
    def optimizers(self) -> list[str]:
        """Class names of the watched optimizers (empty when none, or in older files)."""
        return [str(o) for o in self.state.get("optimizers") or []]

    @property
    def architecture(self) -> str:
        """``graph``, ``transformer``, ``convolutional`` or ``mlp`` (what fixes fit it); files
        written before it was recorded are judged by their module types."""
        recorded = self.state.get("architecture")
        if isinstance(recorded, str):
            return recorded
        types = " ".join(str(m.get("type", "")) for m in self.state["modules"]).lower()
        if "gcn" in types or "gat" in types or "messagepassing" in types:
            return "graph"
        if "attention" in types:
            return "transformer"
        return "convolutional" if "conv" in types else "mlp"

    @property
    def world_size(self) -> int:
        return int(self.state.get("world_size") or 1)

    @property
    def written(self) -> float | None:
        """When the file was last written (seconds since the epoch)."""
        written = self.state.get("written")
        return float(written) if written is not None else None

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.state.get("options", {}))

    @cached_property
    def modules(self) -> pd.DataFrame:
        """One row per recorded module: name, type, params, order (forward completion order)."""
        cols = ["name", "type", "params", "order"]
        return pd.DataFrame(self.state["modules"], columns=cols)

    @cached_property
    def nan_ops(self) -> dict[str, list[str]]:
        """Per module, the NaN-prone ops (log, sqrt, div, custom autograd functions) its own
        code ran in the traced forward; modules without any are left out."""
        modules: list[dict[str, Any]] = [dict(m) for m in self.state["modules"]]
        return {m["name"]: list(m["nan_ops"]) for m in modules if m.get("nan_ops")}

    @cached_property
    def sites(self) -> pd.DataFrame:
        """One row per residual site: name, kind, module (class), index (forward order)."""
        rows = [
            {k: s.get(k) for k in ("name", "kind", "module", "index", "owner")}
            for s in self.state["sites"]
        ]
        return pd.DataFrame(rows, columns=["name", "kind", "module", "index", "owner"])

    @property
    def site_records(self) -> list[dict[str, Any]]:
        """The sites as recorded (``layout.SiteState``), with their taps (where each operand
        was read)."""
        return [dict(s) for s in self.state["sites"]]

    @cached_property
    def events(self) -> pd.DataFrame:
        """Exact events: non-finite onsets (kind, step, module, phase, rank) and others."""
        cols = ["kind", "step", "module", "phase", "rank", "detail"]
        rows = [{k: e.get(k) for k in cols} for e in self.state["events"]]
        return pd.DataFrame(rows, columns=cols)

    @property
    def nonfinite(self) -> pd.DataFrame:
        ev = self.events
        ev = ev[ev["kind"] == "nonfinite"]
        order = [
            (int(s), *phase_rank(p, bool((d or {}).get("received"))))
            for s, p, d in zip(ev["step"], ev["phase"], ev["detail"], strict=True)
        ]
        return ev.iloc[sorted(range(len(ev)), key=order.__getitem__)]

    @cached_property
    def skipped_steps(self) -> np.ndarray:
        skipped = self.state.get("skipped_steps")
        return np.asarray(skipped if skipped is not None else [], dtype=np.int64)

    @cached_property
    def errors(self) -> pd.DataFrame:
        """Internal resdoctor errors caught during recording (training went on)."""
        cols = ["where", "type", "message", "count", "first_step"]
        return pd.DataFrame(self.state.get("errors", []), columns=cols)

    # -- series ------------------------------------------------------------------------------
    @property
    def signals(self) -> list[str]:
        return [k for k, v in self.state["series"].items() if len(v["columns"]) and len(v["steps"])]

    def columns(self, signal: str) -> list[str]:
        """The columns (modules, sites or scalar names) of ``signal``, even before any row."""
        s = self.state["series"].get(signal)
        return [str(c) for c in s["columns"]] if s is not None else []

    def measured(self, signal: str) -> pd.DataFrame:
        """Steps x names: True where the cell holds a measurement (a measured NaN included;
        ``series`` shows a measured NaN and a missing value alike)."""
        s = self.state["series"].get(signal)
        if s is None:
            return pd.DataFrame()
        return pd.DataFrame(
            cell_counts(s) > 0,
            index=pd.Index(s["steps"].numpy(), name="step"),
            columns=self.columns(signal),
        )

    def has(self, signal: str) -> bool:
        return signal in self.signals

    def series(self, signal: str, stat: Stat = "mean") -> pd.DataFrame:
        """Steps (first step of each bucket) x names for ``signal``; empty if not recorded."""
        s = self.state["series"].get(signal)
        if s is None:
            return pd.DataFrame()
        values = s[stat].numpy().astype(np.float64)
        index = pd.Index(s["steps"].numpy(), name="step")
        return pd.DataFrame(values, index=index, columns=list(s["columns"]))

    def stride(self, signal: str) -> int:
        """Steps per row of ``signal`` (1 = every recorded step is its own row)."""
        s = self.state["series"].get(signal)
        return int(s["stride"]) if s is not None else 1

    def scalars(self, stat: Stat = "mean") -> pd.DataFrame:
        """Logged scalars (loss, lr, user scalars) by step."""
        return self.series("scalars", stat)

    def scalar(self, name: str, stat: Stat = "mean") -> pd.Series:
        df = self.scalars(stat)
        return df[name].dropna() if name in df.columns else pd.Series(dtype=float, name=name)

    def long(self, signal: str, stat: Stat = "mean") -> pd.DataFrame:
        """Long format: columns step, name, value."""
        df = self.series(signal, stat)
        if df.empty:
            return pd.DataFrame(columns=["step", "name", "value"])
        out = df.reset_index().melt(id_vars="step", var_name="name", value_name="value")
        return out.dropna(subset=["value"]).reset_index(drop=True)

    def __repr__(self) -> str:
        return (
            f"Run({self.path or '<memory>'}: {self.steps} steps, {len(self.modules)} modules, "
            f"{len(self.sites)} sites, {len(self.nonfinite)} non-finite onsets)"
        )


def load(path: str | os.PathLike[str]) -> Run:
    """Load a run file (``weights_only=True``) as a ``Run``."""
    return Run.load(path)
