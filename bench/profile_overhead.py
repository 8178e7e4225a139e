"""Where resdoctor's overhead goes: the default configuration on the ResNet, profiled on CPU.

Four views of the same workload:

1. timing: configurations alternated round by round, each watched step paired with a step of
   an identical plain twin model (wall and CPU time; plain's row is the noise floor); with
   ``--ablate`` also resdoctor without non-finite checks and without residual sites.
2. direct cost: wall time inside resdoctor's hooks (by kind) and ``doctor.log`` per step, timed
   by wrapping ``Recorder._guard``; steady on a busy machine, but blind to indirect costs.
3. cProfile of watched steps: resdoctor's functions by cumulative time per step, and the
   functions they call (torch ops, numpy) by the time spent in them from resdoctor's code.
4. torch.profiler: aten ops per step, watched minus plain (count and self CPU time), which
   shows the extra device work without the Python profiler's own cost.

    python -m bench.profile_overhead                 # ResNet-20, batch 64
    python -m bench.profile_overhead --model gpt2 --config resdoctor-all
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from bench import _machine
from bench._configs import Config, make
from bench._workloads import Workload, build

PACKAGE = "/resdoctor/"
MODELS = "/resdoctor/models/"  # the benchmark's model, not resdoctor's overhead


ABLATIONS = (
    "resdoctor:nonfinite=False",
    "resdoctor:sites=False",
    "resdoctor:nonfinite=False,sites=False",
)


def _run(work: Workload, config: Config, steps: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        config.after_step(work.step())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def timing(
    work: Workload, twin: Workload, names: list[str], rounds: int, steps: int, tmp: Path
) -> dict[str, dict[str, float]]:
    """Plain and each configuration alternated round by round, every watched step paired with a
    step of the plain twin (as in ``bench.overhead``): ms per step, overhead, ratios."""
    from bench.overhead import summarize, time_config

    args = argparse.Namespace(warmup=2, steps=steps)
    names = ["plain", *names]
    got: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    device = torch.device("cpu")
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            got[name].append(time_config(work, twin, make(name), args, tmp, device))
    stats = summarize(got, paired=True)
    out = {}
    for name in names:
        pairs = [
            (a, b)
            for rd in got[name]
            for a, b in zip(rd["cpu_times"], rd["twin_cpu_times"], strict=True)
        ]
        out[name] = {
            "wall_ms": stats[name]["median_step_ms"],
            "cpu_ms": stats[name]["median_step_cpu_ms"],
            "cpu_overhead_ms": statistics.median(1e3 * (a - b) for a, b in pairs),
            "cpu_ratio": stats[name]["cpu_ratio"],
            "wall_ratio": stats[name]["ratio"],
        }
    return out


def direct_cost(work: Workload, name: str, steps: int, tmp: Path) -> dict[str, float]:
    """Wall ms per step spent inside resdoctor's hooks, by kind, and in ``doctor.log``.

    Every hook body runs through ``Recorder._guard``; the benchmark wraps it with a timer for
    the duration of the measurement (and restores it). This is the direct cost only: effects on
    the model's own kernels (caches, allocator, garbage collection) are not in it.
    """
    from resdoctor.recording.recorder import Recorder

    spent: defaultdict[str, float] = defaultdict(float)
    original = Recorder._guard

    def timed_guard(self: Recorder, where: str, fn: Any) -> Any:
        guarded = original(self, where, fn)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return guarded(*args, **kwargs)
            finally:
                spent[where] += time.perf_counter() - t0

        return timed

    Recorder._guard = timed_guard  # type: ignore[method-assign]
    rows: list[dict[str, float]] = []
    try:
        config = make(name)
        config.setup(work, tmp)
        try:
            _run(work, config, 2)
            for _ in range(steps):
                spent.clear()
                t0 = time.perf_counter()
                loss = work.step()
                t1 = time.perf_counter()
                config.after_step(loss)
                spent["log"] += time.perf_counter() - t1
                spent["step"] += time.perf_counter() - t0
                rows.append(dict(spent))
        finally:
            config.teardown()
    finally:
        Recorder._guard = original  # type: ignore[method-assign]
    kinds = sorted({k for r in rows for k in r} - {"step"})
    out = {k: 1e3 * statistics.median(r.get(k, 0.0) for r in rows) for k in kinds}
    out["total"] = 1e3 * statistics.median(sum(r.get(k, 0.0) for k in kinds) for r in rows)
    out["step"] = 1e3 * statistics.median(r["step"] for r in rows)
    return out


def _label(func: tuple[str, int, str]) -> str:
    file, line, name = func
    if file == "~":
        return name
    if PACKAGE in file:
        file = "resdoctor/" + file.split(PACKAGE, 1)[1]
    else:
        file = Path(file).name
    return f"{file}:{line}({name})"


def python_profile(work: Workload, name: str, steps: int, tmp: Path, top: int) -> dict[str, Any]:
    """cProfile of ``steps`` watched steps, reduced to resdoctor's share."""
    config = make(name)
    config.setup(work, tmp)
    prof = cProfile.Profile()
    try:
        _run(work, config, 2)
        prof.enable()
        _run(work, config, steps)
        prof.disable()
    finally:
        config.teardown()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    own: list[dict[str, Any]] = []
    called: defaultdict[str, float] = defaultdict(float)
    for func, (_, ncalls, tottime, cumtime, callers) in stats.items():
        if MODELS in func[0]:
            continue
        if PACKAGE in func[0]:
            own.append(
                {
                    "function": _label(func),
                    "calls": ncalls / steps,
                    "self_ms": 1e3 * tottime / steps,
                    "cum_ms": 1e3 * cumtime / steps,
                }
            )
        else:
            for caller, edge in callers.items():
                if PACKAGE in caller[0] and MODELS not in caller[0]:
                    called[_label(func)] += 1e3 * edge[2] / steps  # self time via this edge
    own.sort(key=lambda r: -r["cum_ms"])
    total_self = sum(r["self_ms"] for r in own) + sum(called.values())
    return {
        "resdoctor_functions": own[:top],
        "called_from_resdoctor": [
            {"function": f, "self_ms": ms}
            for f, ms in sorted(called.items(), key=lambda kv: -kv[1])[:top]
        ],
        "resdoctor_self_ms_per_step_under_cprofile": total_self,
    }


def _ops(work: Workload, config: Config, steps: int) -> dict[str, tuple[float, float]]:
    from torch.profiler import ProfilerActivity, profile

    _run(work, config, 2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _run(work, config, steps)
    return {
        e.key: (e.count / steps, e.self_cpu_time_total / 1e3 / steps) for e in prof.key_averages()
    }


def op_profile(work: Workload, name: str, steps: int, tmp: Path, top: int) -> list[dict]:
    """Ops that watching adds, per step. For an op plain training never calls, its whole self CPU
    time; for one it also calls (``in_plain``), the difference of totals, which is noisier."""
    result = {}
    for config_name in ("plain", name):
        config = make(config_name)
        config.setup(work, tmp)
        try:
            result[config_name] = _ops(work, config, steps)
        finally:
            config.teardown()
    rows: list[dict[str, Any]] = []
    for op, (c1, t1) in result[name].items():
        c0, t0 = result["plain"].get(op, (0.0, 0.0))
        if c1 - c0 < 0.5:  # an op resdoctor does not add: its time difference is noise
            continue
        rows.append(
            {
                "op": op,
                "extra_calls": c1 - c0,
                "extra_self_ms": t1 - t0 if c0 else t1,
                "in_plain": c0 > 0,
                "watched_calls": c1,
                "watched_self_ms": t1,
            }
        )
    rows.sort(key=lambda r: -r["extra_self_ms"])
    return rows[:top]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.profile_overhead", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", default="resnet", choices=("resnet", "gpt2", "vit"))
    p.add_argument("--config", default="resdoctor", choices=("resdoctor", "resdoctor-all"))
    p.add_argument("--rounds", type=int, default=6, help="timing rounds (alternated)")
    p.add_argument("--steps", type=int, default=10, help="steps per round / per profile")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=20)
    p.add_argument(
        "--ablate",
        action="store_true",
        help="also time resdoctor without non-finite checks / without sites",
    )
    p.add_argument("--quick", action="store_true", help="tiny model, 2 rounds of 2 steps")
    p.add_argument("--out", default="bench/results/profile.json", help="JSON ('' = none)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.ablate = 2, 2, True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    work = build(args.model, device, quick=args.quick)
    twin = build(args.model, device, quick=args.quick)
    out: dict[str, Any] = {
        "machine": _machine.describe(device),
        "workload": work.title,
        "config": args.config,
    }
    with tempfile.TemporaryDirectory(prefix="resdoctor-profile-") as tmp:
        names = [args.config, *(ABLATIONS if args.ablate else ())]
        out["timing"] = timing(work, twin, names, args.rounds, args.steps, Path(tmp))
        out["direct"] = direct_cost(work, args.config, 2 * args.steps, Path(tmp))
        out["cprofile"] = python_profile(work, args.config, args.steps, Path(tmp), args.top)
        out["ops"] = op_profile(work, args.config, args.steps, Path(tmp), args.top)
    print(render(out))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def render(out: dict[str, Any]) -> str:
    lines = [
        f"{out['workload']}: {out['config']}",
        f"  {'wall ms':>8} {'cpu ms':>8} {'+cpu ms':>8} {'cpu x':>6} {'wall x':>6}  config",
    ]
    for name, t in out["timing"].items():
        lines.append(
            f"  {t['wall_ms']:8.1f} {t['cpu_ms']:8.1f} {t['cpu_overhead_ms']:8.1f} "
            f"{t['cpu_ratio']:6.3f} {t['wall_ratio']:6.3f}  {name}"
        )
    d = out["direct"]
    lines += [
        "",
        f"inside resdoctor (wall ms per step, median of {out['config']} steps): "
        f"{d['total']:.2f} of a {d['step']:.1f} ms step "
        f"({100 * d['total'] / d['step']:.1f}%)",
    ]
    lines += [f"  {v:8.2f}  {k}" for k, v in d.items() if k not in ("total", "step")]
    lines += [
        "",
        "resdoctor functions (per step, under cProfile):",
        f"  {'cum ms':>8} {'self ms':>8} {'calls':>7}  function",
    ]
    for r in out["cprofile"]["resdoctor_functions"]:
        lines.append(f"  {r['cum_ms']:8.2f} {r['self_ms']:8.2f} {r['calls']:7.0f}  {r['function']}")
    lines += ["", "called from resdoctor (self ms per step):"]
    lines += [
        f"  {r['self_ms']:8.2f}  {r['function']}" for r in out["cprofile"]["called_from_resdoctor"]
    ]
    lines += [
        "",
        "ops resdoctor adds (per step; * = plain calls it too, so +ms is a noisy diff):",
        f"  {'+ms':>8} {'+calls':>7}  op",
    ]
    lines += [
        f"  {r['extra_self_ms']:8.2f} {r['extra_calls']:7.0f}  {r['op']}"
        + (" *" if r["in_plain"] else "")
        for r in out["ops"]
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
