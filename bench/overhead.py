"""Overhead of watching a training step: resdoctor against the tools users would pick instead.

In one process, round by round, every configuration is set up, warmed up, timed for ``--steps``
training steps and torn down (so slow drift of a shared machine hits them all alike, and a hook
census proves that nothing leaks from one configuration into the next). A configuration's ratio
is the median over rounds of (its median step time / plain's median step time in that round).

    python -m bench.overhead                       # both models, CPU, 2 threads
    python -m bench.overhead --models resnet --rounds 12 --steps 10
    python -m bench.overhead --device cuda         # GPU timings + host-sync census (skips without)
    python -m bench.overhead --quick               # tiny models, a few steps: a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import _machine
from bench._configs import CONFIGS, TITLES, Config, Wandb, hook_census, make
from bench._workloads import WORKLOADS, Workload, build

TARGETS = {"cpu": {"resdoctor": 1.05, "resdoctor-all": 1.10}, "cuda": {"resdoctor": 1.03}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(WORKLOADS), help="comma list: resnet,gpt2,vit")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma list; plain is always run")
    p.add_argument("--rounds", type=int, default=None, help="alternation rounds (default 6)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps after setup (2)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny models, 2 rounds of 2 steps")
    p.add_argument(
        "--sync-steps",
        type=int,
        default=None,
        help="CUDA only: steps per configuration in the host-sync census (5)",
    )
    p.add_argument("--out", default="bench/results/overhead.json", help="JSON results ('' = none)")
    p.add_argument(
        "--unpaired",
        action="store_true",
        help="no twin model: ratios of round medians to plain's round",
    )
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 6)
    args.steps = args.steps or (2 if quick else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    args.sync_steps = args.sync_steps or (2 if quick else 5)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    args.configs = ["plain"] + [c for c in names if c != "plain"]
    for c in args.configs:
        if c.split(":")[0] not in CONFIGS:
            p.error(f"unknown configuration {c!r}; choose from {', '.join(CONFIGS)}")
    for m in args.models:
        if m not in WORKLOADS:
            p.error(f"unknown model {m!r}; choose from {', '.join(WORKLOADS)}")
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(work: Workload, config: Config | None, device: torch.device) -> tuple[float, float]:
    """One training step (``config=None``: plain); (wall seconds, process CPU seconds)."""
    _sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    if config is None:
        work.step()
    else:
        with config.step_context():
            config.after_step(work.step())
    _sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def time_config(
    work: Workload,
    twin: Workload | None,
    config: Config,
    args: argparse.Namespace,
    tmp: Path,
    device: torch.device,
) -> dict[str, Any]:
    """Set up, warm up, time ``args.steps`` steps, tear down: one configuration, one round.

    With a ``twin`` (an identical, never instrumented copy of the model), every watched step is
    paired with a plain twin step taken right before or after it (the order alternates), so
    both see the same moment of a shared machine.
    """
    t0 = time.perf_counter()
    config.setup(work, tmp)
    setup_s = time.perf_counter() - t0
    out: dict[str, Any] = {"times": [], "cpu_times": [], "twin_times": [], "twin_cpu_times": []}
    try:
        for i in range(args.warmup + args.steps):
            tw = (0.0, 0.0)
            plain_first = i % 2 == 0
            if twin is not None and plain_first:
                tw = _timed(twin, None, device)
            wall, cpu = _timed(work, config, device)
            if twin is not None and not plain_first:
                tw = _timed(twin, None, device)
            if i == 0:
                out["first_step_s"] = wall
            if i >= args.warmup:
                out["times"].append(wall)
                out["cpu_times"].append(cpu)
                if twin is not None:
                    out["twin_times"].append(tw[0])
                    out["twin_cpu_times"].append(tw[1])
    finally:
        t0 = time.perf_counter()
        config.teardown()
        out["teardown_s"] = time.perf_counter() - t0
    out["setup_s"] = setup_s
    return out


def measure(
    work: Workload, twin: Workload | None, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Alternate every configuration round by round; returns per-configuration statistics."""
    configs = [make(name) for name in args.configs]
    models = [w for w in (work, twin) if w is not None]
    baseline = [hook_census(w.model, w.optimizer) for w in models]
    rounds: dict[str, list[dict[str, Any]]] = {c.name: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="resdoctor-bench-") as tmp:
        for r in range(args.rounds):
            k = r % len(configs)
            for config in configs[k:] + configs[:k]:  # rotate: every position, every config
                rounds[config.name].append(time_config(work, twin, config, args, Path(tmp), device))
                for w, before in zip(models, baseline, strict=True):
                    left = hook_census(w.model, w.optimizer)
                    if left != before:
                        diff = dict((left - before) + (before - left))
                        raise RuntimeError(f"{config.name} left instrumentation behind: {diff}")
            print(f"  {work.name}: round {r + 1}/{args.rounds} done", file=sys.stderr)
    return summarize(rounds, paired=twin is not None)


def _round_ratios(
    rs: list[dict[str, Any]], ref: list[dict[str, Any]], key: str, paired: bool
) -> list[float]:
    """Per round: median of step-pair ratios (paired) or ratio of medians to plain's round."""
    if paired:
        return [
            statistics.median(a / b for a, b in zip(r[key], r["twin_" + key], strict=True))
            for r in rs
        ]
    return [
        statistics.median(r[key]) / statistics.median(p[key]) for r, p in zip(rs, ref, strict=True)
    ]


def _pooled(rs: list[dict[str, Any]], draws: int = 2000) -> dict[str, Any]:
    """Every paired step of every round pooled: the median step ratio and a 95% bootstrap
    interval for it, i.e. how precisely this machine's noise let the ratio be measured."""
    import numpy as np

    steps = np.array([a / b for r in rs for a, b in zip(r["times"], r["twin_times"], strict=True)])
    rng = np.random.default_rng(0)
    boot = np.median(rng.choice(steps, (draws, len(steps))), axis=1)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {
        "step_ratio": float(np.median(steps)),
        "step_ratio_ci95": [float(lo), float(hi)],
        "step_ratios": [float(x) for x in steps],
    }


def summarize(rounds: dict[str, list[dict[str, Any]]], paired: bool = True) -> dict[str, Any]:
    """Per configuration: median step time and the median over rounds of the ratio to plain,
    by wall clock (the result) and by process CPU time (steadier on a loaded machine). Paired,
    plain's own ratio compares two identical plain models: the noise floor."""
    out: dict[str, Any] = {}
    for name, rs in rounds.items():
        ratios = _round_ratios(rs, rounds["plain"], "times", paired)
        cpu = _round_ratios(rs, rounds["plain"], "cpu_times", paired)
        out[name] = {
            "title": TITLES.get(name, name),
            "median_step_ms": 1e3 * statistics.median(t for r in rs for t in r["times"]),
            **(_pooled(rs) if paired else {}),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "round_ratios": ratios,
            "cpu_ratio": statistics.median(cpu),
            "cpu_ratio_min": min(cpu),
            "cpu_ratio_max": max(cpu),
            "median_step_cpu_ms": 1e3 * statistics.median(t for r in rs for t in r["cpu_times"]),
            "timed_steps": sum(len(r["times"]) for r in rs),
            "first_step_ms": 1e3 * statistics.median(r["first_step_s"] for r in rs),
            "setup_ms": 1e3 * statistics.median(r["setup_s"] for r in rs),
            "teardown_ms": 1e3 * statistics.median(r["teardown_s"] for r in rs),
        }
    return out


def table(results: dict[str, Any], configs: list[str]) -> str:
    """Plain text: per model a wall-clock row and a CPU-time row; plain's ms/step, then each
    configuration's ratio to plain with the range over rounds."""
    head = ["model", "clock", "plain ms/step", "plain"] + [c for c in configs if c != "plain"]
    rows = [head]
    for model, res in results.items():
        for clock, key, ms in (
            ("wall", "ratio", "median_step_ms"),
            ("cpu", "cpu_ratio", "median_step_cpu_ms"),
        ):
            row = [model, clock, f"{res['plain'][ms]:.1f}"]
            for c in head[3:]:  # plain: twin vs twin, the noise floor
                r = res.get(c)
                row.append(
                    "-"
                    if r is None
                    else f"{r[key]:.3f}x ({r[key + '_min']:.2f}-{r[key + '_max']:.2f})"
                )
            rows.append(row)
        row = [model, "steps", "95% CI"]
        for c in head[3:]:
            r = res.get(c, {})
            ci = r.get("step_ratio_ci95")
            row.append("-" if ci is None else f"{r['step_ratio']:.3f}x ({ci[0]:.2f}-{ci[1]:.2f})")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def check_targets(results: dict[str, Any], device: str) -> list[str]:
    """Human-readable misses of the TARGETS for ``device`` (empty when all are met)."""
    misses = []
    for model, res in results.items():
        for name, limit in TARGETS[device].items():
            if name in res and res[name]["ratio"] > limit:
                misses.append(f"{model}: {name} {res[name]['ratio']:.3f}x > {limit:.2f}x")
    return misses


def unresolved(results: dict[str, Any], device: str) -> list[str]:
    """Targets whose 95% interval straddles the limit: this run's noise cannot decide them."""
    notes = []
    for model, res in results.items():
        for name, limit in TARGETS[device].items():
            lo, hi = res.get(name, {}).get("step_ratio_ci95", (0.0, 0.0))
            if lo <= limit < hi:
                notes.append(
                    f"{model}: {name} 95% interval {lo:.3f}-{hi:.3f}x contains "
                    f"{limit:.2f}x; rerun on a quieter machine or with more rounds"
                )
    return notes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench.overhead: skipped, no CUDA device", file=sys.stderr)
        return 0
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "command": "python -m bench.overhead "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": _machine.describe(device),
        "settings": {
            k: getattr(args, k)
            for k in ("rounds", "steps", "warmup", "threads", "quick", "configs", "unpaired")
        },
        "targets": TARGETS[args.device],
        "models": {},
        "titles": {},
    }
    try:
        for name in args.models:
            work = build(name, device, quick=args.quick)
            twin = None if args.unpaired else build(name, device, quick=args.quick)
            report["titles"][name] = work.title
            report["models"][name] = measure(work, twin, args, device)
            del twin
            if device.type == "cuda":
                from bench._cuda import sync_census

                report.setdefault("sync_census", {})[name] = sync_census(work, args.sync_steps)
    finally:
        Wandb.finish()
    report["machine"]["loadavg_end"] = _machine.loadavg()
    print(table(report["models"], args.configs))
    report["misses"] = check_targets(report["models"], args.device)
    for miss in report["misses"]:
        print("target missed:", miss)
    report["unresolved"] = unresolved(report["models"], args.device)
    for note in report["unresolved"]:
        print("not resolved:", note)
    for model, census in report.get("sync_census", {}).items():
        print(f"{model}: host syncs per step", json.dumps(census["syncs_per_step"]))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 1 if args.check and report["misses"] else 0


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main())
