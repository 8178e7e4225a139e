"""Cost of attribution: ms per ``resdoctor.attribute`` call against ms per training step.

For each bench model (``bench._workloads``) the training step and the two attribution methods
are timed round by round (alternated, so drift of a shared machine hits them alike); medians are
reported. Attribution runs as the periodic mode does: on ``--samples`` samples with the sites
already known. ``every N`` is the amortised cost of ``watch(..., attribute_every=N)``: call / (N
steps). Usage: ``python -m bench.attribution_cost [--quick] [--models resnet,gpt2]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import resdoctor
from bench._machine import describe
from bench._workloads import WORKLOADS, Workload, build

METHODS = ("gradient", "ablation")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.attribution_cost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--models", default=",".join(WORKLOADS), help="comma list: resnet,gpt2")
    p.add_argument("--samples", type=int, default=4, help="samples per attribution call")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds (median reported)")
    p.add_argument("--every", type=int, default=100, help="attribute_every for the amortised %")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--quick", action="store_true", help="tiny models, 2 rounds")
    p.add_argument(
        "--out", default="bench/results/attribution_cost.json", help="JSON results ('' = none)"
    )
    return p.parse_args(argv)


def probe(work: Workload, samples: int, quick: bool, device: torch.device) -> Any:
    """A sample batch shaped like the workload's own."""
    if work.name == "resnet":
        size = 16 if quick else 32
        return torch.randn(samples, 3, size, size, device=device)  # [S, 3, H, W]
    model: Any = work.model  # a transformers model: its config sizes the batch
    cfg = model.config
    ids = torch.randint(0, cfg.vocab_size, (samples, cfg.n_positions), device=device)  # [S, T]
    return {"input_ids": ids}


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Milliseconds of one call, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def measure(work: Workload, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    batch = probe(work, args.samples, args.quick, device)
    args_, kwargs = ((), batch) if isinstance(batch, dict) else ((batch,), {})
    sites = resdoctor.discover(work.model, *args_, **kwargs)
    calls: dict[str, Callable[[], Any]] = {"step": work.step}

    def attribution(method: str) -> Callable[[], Any]:
        return lambda: resdoctor.attribute(work.model, batch, sites=sites, method=method)

    for method in METHODS:
        calls[method] = attribution(method)
    for fn in calls.values():  # warm-up: allocator, captum imports, first-call paths
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, fn in calls.items():
            times[name].append(timed(fn, device))
    ms = {name: statistics.median(v) for name, v in times.items()}
    return {
        "title": work.title,
        "sites": len(sites),
        "samples": args.samples,
        "ms": ms,
        "rounds": times,
    }


def table(results: dict[str, Any], every: int) -> str:
    head = (
        f"{'model':<46} {'sites':>5} {'step ms':>9} {'method':>9} {'call ms':>9} "
        f"{'x step':>7} {f'every {every}':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in results.values():
        step = r["ms"]["step"]
        for k, method in enumerate(METHODS):
            call = r["ms"][method]
            first = (r["title"][:46], str(r["sites"]), f"{step:.1f}") if k == 0 else ("", "", "")
            lines.append(
                f"{first[0]:<46} {first[1]:>5} {first[2]:>9} {method:>9} {call:>9.1f} "
                f"{call / step:>7.2f} {100 * call / (every * step):>8.2f}%"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 2)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    results = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results[name] = measure(build(name, device, quick=args.quick), args, device)
    print(table(results, args.every))
    print(
        f"\n{args.samples} samples per call, median of {args.rounds} rounds; 'every N' = "
        f"call / (N x step), the amortised cost of watch(attribute_every=N)."
    )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"machine": describe(device), "args": vars(args), "results": results}
        out.write_text(json.dumps(doc, indent=2))
        print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
