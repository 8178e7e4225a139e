"""Scale: a synthetic run of 1,000,000 steps x 100 residual blocks, recorded on the host side.

No model runs: the recorder's host side (``Journal`` and its ``Series``) is driven directly with
synthetic per-step vectors for 302 parameterised modules and 100 residual sites, including AMP
skipped steps and a NaN onset near the end. Measured: the memory of recording, the run file's
size, the time to write it, ``resdoctor.load`` and ``resdoctor analyze``.

Two modes. ``consume`` sends every step through the recorder's host path exactly as the
recorder does: ``Segment.pack``, the transfer, and the ``Intake`` that unpacks and folds the
segments into the journal in batches (faithful, but slow for a million steps). ``fast``
(default) appends the committed rows straight into the journal's series, as the journal would,
and sends only event steps (skipped steps, the NaN onset) through the intake; the smoke test
checks both give the same run file.

    python -m bench.scale                          # 1,000,000 steps x 100 blocks
    python -m bench.scale --steps 20000 --mode consume
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resdoctor.recording.intake import Intake
from resdoctor.recording.journal import Journal, SegmentMeta
from resdoctor.recording.options import Options
from resdoctor.recording.segment import Buffers, Segment, Unpacker
from resdoctor.runfile import io as runfile

TARGETS = {"file_mb": 50.0, "analyze_s": 5.0}


@dataclass(frozen=True)
class Shape:
    """The synthetic model: ``blocks`` pre-LN MLP blocks, each one residual site."""

    blocks: int = 100

    def modules(self) -> list[dict[str, Any]]:
        names = [("", "Model"), ("embed", "Embedding"), ("blocks", "Sequential")]
        for i in range(self.blocks):
            names += [
                (f"blocks.{i}", "Block"),
                (f"blocks.{i}.norm", "LayerNorm"),
                (f"blocks.{i}.fc1", "Linear"),
                (f"blocks.{i}.fc2", "Linear"),
            ]
        names.append(("head", "Linear"))
        return [
            {
                "name": n,
                "type": t,
                "params": 0 if t in ("Model", "Sequential", "Block") else 1000,
                "order": k,
            }
            for k, (n, t) in enumerate(names)
        ]

    def param_modules(self) -> list[str]:
        return [m["name"] for m in self.modules() if m["params"]]

    def checked(self) -> list[int]:
        """Modules whose outputs the recorder checks (not finite-preserving): fwd entries."""
        skip = ("Embedding", "LayerNorm")
        return [k for k, m in enumerate(self.modules()) if m["type"] not in skip]

    def sites(self) -> list[dict[str, Any]]:
        return [
            {
                "name": f"blocks.{i}",
                "kind": "identity",
                "module": "Block",
                "index": i,
                "owner": f"blocks.{i}",
            }
            for i in range(self.blocks)
        ]


class Synthetic:
    """Per-step measurements: a pool of noisy templates scaled by slow trends, plus events."""

    def __init__(
        self, shape: Shape, steps: int, seed: int = 0, every: int = 10, skip_every: int = 997
    ) -> None:
        rng = np.random.default_rng(seed)
        self.shape, self.steps, self.every = shape, steps, every
        p, s, pool = len(shape.param_modules()), shape.blocks, 64
        self.grad = rng.lognormal(-3, 0.5, (pool, p))
        self.param = rng.lognormal(1, 0.1, (pool, p))
        self.update = rng.lognormal(-7, 0.3, (pool, p))
        self.site = rng.lognormal(0, 0.2, (pool, s, 3)) * np.sqrt(1 + np.arange(s))[:, None] / 5
        self.smooth = rng.uniform(0.1, 0.4, (pool, s, 2))
        self.share = rng.uniform(0.3, 0.6, (pool, s))
        self.noise = rng.normal(0, 0.02, pool)
        self.nan_at = steps - max(steps // 1000, 5)  # the run diverges near its end
        self.checked = shape.checked()
        self.nan_module = self.checked[len(self.checked) * 2 // 3]
        at = torch.tensor(self.checked)
        self._after, self._from = at > self.nan_module, at >= self.nan_module
        self.skip_every = skip_every

    def skipped(self, step: int) -> bool:
        return step % self.skip_every == self.skip_every - 1 and step < self.nan_at

    def event(self, step: int) -> bool:
        """Steps that go through ``Journal.consume`` in fast mode."""
        return self.skipped(step) or step == self.nan_at

    def values(self, step: int) -> dict[str, Any]:
        """Everything one step measured, as the host sees it after the transfer."""
        k = step % len(self.noise)
        decay = 1 / math.sqrt(1 + step / 10_000)
        due = step % self.every == 0
        out: dict[str, Any] = {
            "grad_norm": self.grad[k] * decay,
            "param_norm": self.param[k],
            "update_ratio": self.update[k] * decay if due else None,
            "site": self.site[k],
            "smooth": self.smooth[k] if due else None,
            "gshare": self.share[k] if due else None,
            "loss": 0.5 + 2.5 * math.exp(-step / 200_000) + self.noise[k],
            "lr": 1e-3 * 0.5 * (1 + math.cos(math.pi * step / self.steps)),
        }
        if self.skipped(step):
            out["grad_norm"] = np.where(
                np.arange(len(out["grad_norm"])) % 7 == 0, np.inf, out["grad_norm"]
            )
        if step >= self.nan_at:  # diverged: everything downstream of the onset is NaN
            for key in ("grad_norm", "param_norm", "update_ratio", "site", "smooth", "gshare"):
                if out[key] is not None:
                    out[key] = np.full_like(out[key], np.nan)
            out["loss"] = math.nan
        for key in ("grad_norm", "param_norm", "update_ratio", "site", "smooth", "gshare"):
            if out[key] is not None:  # the device sends float32
                out[key] = np.asarray(out[key], dtype=np.float32)
        return out

    def segment(
        self, step: int, v: dict[str, Any], buffers: Buffers | None = None
    ) -> tuple[SegmentMeta, Segment]:
        """The step as the recorder's hooks leave it: results written into the segment's device
        buffers, rows of slots. As in the recorder, a module's input is the previous module's
        output (the same slots, reduced once) and every module's incoming gradient is checked."""
        nan, onset = step >= self.nan_at, step == self.nan_at
        seg = Segment(buffers or Buffers(), forwards=1, backwards=1, stepped=not self.skipped(step))
        # [modules, (output min, output max)]; the first module's input is the batch
        out = torch.tensor([-1.0, 1.0]).repeat(len(self.checked), 1)
        if nan:  # at the onset only the NaN module's output and what follows it are NaN
            out[self._from | (not onset)] = math.nan
        batch = [math.nan, math.nan] if nan and not onset else [-1.0, 1.0]  # diverged: all NaN
        inputs = _write(seg, torch.tensor(batch))
        for k, m in enumerate(self.checked):
            slots = _write(seg, out[k])
            seg.add_row("fwd", m, (*inputs, *slots))
            inputs = slots
        grad = torch.tensor([math.nan, math.nan] if nan else [-1e-3, 1e-3])
        for m in range(len(self.shape.modules())):  # every module's incoming gradient
            seg.add_row("gin", m, tuple(_write(seg, grad)))
        for kind in ("site", "smooth", "gshare"):
            if v[kind] is not None:
                block = torch.from_numpy(v[kind])
                for i in range(self.shape.blocks):
                    seg.add_row(kind, i, tuple(_write(seg, block[i].reshape(-1))))
        for name in ("grad_norm", "param_norm", "update_ratio"):
            if v[name] is not None:
                seg.vectors[name] = torch.from_numpy(v[name])
        for kind in ("grad", "param"):  # parameters holding NaN/Inf, per module
            bad = ~np.isfinite(v[f"{kind}_norm"])
            seg.vectors[f"{kind}_bad"] = torch.from_numpy(bad.astype(np.float32))
        seg.scalars.update(loss=v["loss"], lr=v["lr"])
        meta = SegmentMeta(seg.forwards, seg.backwards, seg.stepped, dict(seg.scalars), True)
        return meta, seg


def _write(seg: Segment, values: torch.Tensor) -> list[int]:
    """Slots holding ``values``, written into the segment's buffer as a reduction's ``out=``
    would (this part is not timed)."""
    first, views = seg.reserve(values, values.numel())
    for view, x in zip(views, values.tolist(), strict=True):
        view.fill_(x)
    return list(range(first, first + len(views)))


def host_path(journal: Journal) -> Intake:
    """What the recorder builds to take finished segments into the journal."""
    from resdoctor.recording.recorder import INTAKE_BATCH

    return Intake(journal, Unpacker(), batch=INTAKE_BATCH)


def consume(intake: Intake, meta: SegmentMeta, seg: Segment) -> None:
    """What ``Recorder.end_segment`` does with a finished segment: pack, transfer, drain (the
    intake folds them into the journal once a batch is ready)."""
    with torch.no_grad():
        flat, layout = seg.pack()
    intake.submit(meta, flat, layout)
    intake.drain()


def absmax_row(journal: Journal, checked: list[int]) -> np.ndarray:
    """``act_absmax`` of a finite step: the synthetic outputs span [-1, 1], so 1.0 for each
    checked parameterised module (NaN: not checked), as ``Journal.consume`` folds it."""
    names = [m["name"] for m in journal.modules]
    column = {n: j for j, n in enumerate(journal.param_modules)}
    row = np.full(len(journal.param_modules), np.nan)
    for m in checked:
        if names[m] in column:
            row[column[names[m]]] = 1.0
    return row


def fast_commit(journal: Journal, v: dict[str, Any], absmax: np.ndarray | None = None) -> None:
    """Append one step's rows straight into the series, as ``Journal._commit`` would."""
    step, series = journal.steps, journal.series
    every = np.ones(len(journal.param_modules), bool)
    for name in ("grad_norm", "param_norm", "update_ratio"):
        if v[name] is not None:
            series[name].append(step, v[name], present=every)
    if absmax is not None:
        series["act_absmax"].append(step, absmax, present=~np.isnan(absmax))
    sites = np.ones(len(journal.sites), bool)
    site = np.abs(v["site"])  # the RMS of one forward is itself
    for j, name in enumerate(("skip_norm", "branch_norm", "stream_norm")):
        series[name].append(step, site[:, j], sites)
    if v["smooth"] is not None:
        series["smoothing"].append(step, v["smooth"][:, 0], sites)
        series["smoothing_energy"].append(step, v["smooth"][:, 1], sites)
    if v["gshare"] is not None:
        series["grad_branch_share"].append(step, v["gshare"], sites)
    with np.errstate(divide="ignore", invalid="ignore"):
        series["branch_ratio"].append(step, site[:, 1] / site[:, 0], sites)
    scalars = series["scalars"]
    total = float(np.sqrt(np.sum(v["grad_norm"] ** 2)))
    row = {"grad_norm_total": total, "loss": float(v["loss"]), "lr": float(v["lr"])}
    scalars.add_columns(sorted(row))
    scalars.append(
        step,
        np.array([row[c] for c in scalars.columns]),
        present=np.array([c in row for c in scalars.columns]),
    )
    journal.steps += 1


def new_journal(shape: Shape, options: Options) -> Journal:
    journal = Journal(
        shape.modules(),
        shape.param_modules(),
        options.capacity,
        options.max_events,
        {"model_class": "Synthetic", "rank": 0, "world_size": 1, "device": "cpu"},
    )
    journal.set_sites(shape.sites())
    return journal


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def record(
    steps: int,
    blocks: int = 100,
    mode: str = "fast",
    seed: int = 0,
    progress: bool = False,
    skip_every: int = 997,
) -> tuple[Journal, dict[str, Any]]:
    """Record a synthetic run; returns the journal and what recording cost (time, memory)."""
    options = Options()
    shape = Shape(blocks)
    synth = Synthetic(shape, steps, seed, every=options.grad_share_every, skip_every=skip_every)
    rss0 = peak = _rss()
    journal = new_journal(shape, options)
    absmax = absmax_row(journal, synth.checked)
    intake, buffers = host_path(journal), Buffers()
    t0 = time.perf_counter()
    host = 0.0  # time in the recorder's host side only, not in making up the numbers
    for step in range(steps):
        v = synth.values(step)
        if mode == "consume" or synth.event(step):
            meta, seg = synth.segment(step, v, buffers)
            h0 = time.perf_counter()
            consume(intake, meta, seg)
            if mode == "fast":  # the next steps are committed directly: nothing may wait
                intake.settle()
        else:
            h0 = time.perf_counter()
            # past the onset every checked output is NaN: its abs-max reads inf
            fast_commit(journal, v, absmax if step < synth.nan_at else absmax * np.inf)
        host += time.perf_counter() - h0
        if step % 20_000 == 0:
            peak = max(peak, _rss())
            if progress and step:
                rate = step / (time.perf_counter() - t0)
                print(f"  step {step:,} ({rate:,.0f} steps/s)", file=sys.stderr)
    h0 = time.perf_counter()
    intake.settle(wait=True)  # what close() does
    host += time.perf_counter() - h0
    seconds = time.perf_counter() - t0
    peak = max(peak, _rss())
    nbytes = sum(
        a.nbytes
        for s in journal.series.values()
        for a in (s._steps, s._count, s._sum, s._n, s._max, s._min)
    )
    return journal, {
        "record_s": seconds,
        "host_us_per_step": 1e6 * host / max(steps, 1),
        "rss_delta_mb": (peak - rss0) / 2**20,
        "series_arrays_mb": nbytes / 2**20,
        "nan_onset_step": synth.nan_at,
        "skipped_steps": len(journal.skipped),
    }


def write_and_read(journal: Journal, path: Path) -> dict[str, Any]:
    """Write the run file as a flush does, then time ``load`` and ``analyze`` on it."""
    import resdoctor

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    state = journal.state(Options().to_dict())
    out["state_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    runfile.write(state, path)
    out["write_s"] = time.perf_counter() - t0
    out["flush_ms_per_step_at_default"] = (
        1e3 * (out["state_s"] + out["write_s"]) / (Options().flush_every)
    )
    out["file_mb"] = path.stat().st_size / 2**20
    t0 = time.perf_counter()
    run = resdoctor.load(path)
    out["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for signal in run.signals:
        run.series(signal)
    out["load_all_series_s"] = out["load_s"] + time.perf_counter() - t0
    t0 = time.perf_counter()
    report = resdoctor.analyze(path)
    out["analyze_s"] = time.perf_counter() - t0
    out["verdict"], out["findings"] = report.verdict, [f.code for f in report.findings]
    out["cli_analyze_s"], out["cli_rc"] = _cli(path)
    return out


def _cli(path: Path) -> tuple[float, int]:
    """``resdoctor analyze RUN --json`` end to end in a fresh process (imports included)."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "resdoctor.cli.main", "analyze", str(path), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return time.perf_counter() - t0, proc.returncode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=1_000_000)
    p.add_argument("--blocks", type=int, default=100)
    p.add_argument("--mode", choices=("fast", "consume"), default="fast")
    p.add_argument("--keep", default="", help="also keep the run file at this path")
    p.add_argument("--out", default="bench/results/scale.json", help="JSON results ('' = none)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench import _machine

    result: dict[str, Any] = {
        "command": "python -m bench.scale " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": _machine.describe(torch.device("cpu")),
        "steps": args.steps,
        "blocks": args.blocks,
        "mode": args.mode,
        "targets": TARGETS,
    }
    journal, cost = record(args.steps, args.blocks, args.mode, progress=True)
    result["recording"] = cost
    with tempfile.TemporaryDirectory(prefix="resdoctor-scale-") as tmp:
        path = Path(args.keep or os.path.join(tmp, "run.pt"))
        result["run_file"] = write_and_read(journal, path)
    result["machine"]["loadavg_end"] = _machine.loadavg()
    result["misses"] = [
        f"{k} {result['run_file'][k]:.2f} > {v}"
        for k, v in TARGETS.items()
        if result["run_file"][k] > v
    ]
    print(summary(result))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if args.check and result["misses"] else 0


def summary(result: dict[str, Any]) -> str:
    rec, f = result["recording"], result["run_file"]
    lines = [
        f"{result['steps']:,} steps x {result['blocks']} blocks ({result['mode']} mode)",
        f"  recording: {rec['record_s']:.1f} s ({rec['host_us_per_step']:.0f} us/step host), "
        f"RSS +{rec['rss_delta_mb']:.0f} MB, series arrays {rec['series_arrays_mb']:.0f} MB",
        f"  run file: {f['file_mb']:.1f} MB (target < {TARGETS['file_mb']:.0f}), "
        f"state {f['state_s']:.2f} s + write {f['write_s']:.2f} s "
        f"(= {f['flush_ms_per_step_at_default']:.2f} ms/step at flush_every=500)",
        f"  load: {f['load_s']:.2f} s ({f['load_all_series_s']:.2f} s with every series)",
        f"  analyze: {f['analyze_s']:.2f} s in-process (target < {TARGETS['analyze_s']:.0f}), "
        f"CLI {f['cli_analyze_s']:.2f} s (rc {f['cli_rc']}), verdict {f['verdict']}",
    ]
    lines += [f"  target missed: {m}" for m in result["misses"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
