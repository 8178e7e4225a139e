"""CUDA host-sync census: does watching make the host wait for the GPU inside a step?

Two independent witnesses, each comparing a watched step with a plain one:

* ``torch.cuda.set_sync_debug_mode("warn")`` counts the synchronising calls torch makes
  (``.item()``, ``.cpu()``, blocking copies, ``nonzero``); when plain training makes none, the
  watched steps are then run again under ``"error"``, so any sync raises with its stack.
* ``torch.profiler`` counts CUDA runtime calls that block the host
  (``cudaStreamSynchronize``, ``cudaDeviceSynchronize``, ``cudaEventSynchronize``, ``cudaMemcpy``)
  and the device-to-host copies (resdoctor's budget: at most one per step).

Flushing is ON, every step (``flush_every=1``): a flush snapshots the run on the training
thread, taking only the step copies that already finished, and a background thread writes it;
neither may make the host wait for the device.
"""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from bench._configs import Config, Resdoctor
from bench._workloads import Workload

BLOCKING = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
FLUSH = {"flush_every": 1}  # flushing on at every step: it must not sync either


def _configs() -> list[Config]:
    return [
        Config(),
        Resdoctor("resdoctor", **FLUSH),
        Resdoctor("resdoctor-all", smoothing_every=1, update_every=1, grad_share_every=1, **FLUSH),
    ]


def _steps(work: Workload, config: Config, n: int) -> None:
    for _ in range(n):
        config.after_step(work.step())


def _debug_mode_syncs(work: Workload, config: Config, n: int) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _steps(work, config, n)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [
        str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message).lower()
    ]


def _error_mode(work: Workload, config: Config, n: int) -> str:
    torch.cuda.set_sync_debug_mode("error")
    try:
        _steps(work, config, n)
    except RuntimeError as e:
        return f"raised: {str(e).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "passed"


def _profiled(work: Workload, config: Config, n: int) -> Counter:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        _steps(work, config, n)
        torch.cuda.synchronize()
    counts: Counter = Counter()
    for event in prof.events():
        if event.name in BLOCKING:
            counts[event.name] += 1
        elif event.name.startswith("Memcpy DtoH"):
            counts["device_to_host_copies"] += 1
    return counts


def sync_census(work: Workload, steps: int) -> dict[str, Any]:
    """Host syncs and device-to-host copies per step: plain, resdoctor, resdoctor-all."""
    with tempfile.TemporaryDirectory(prefix="resdoctor-sync-") as tmp:
        return _census(work, steps, Path(tmp))


def _census(work: Workload, steps: int, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {
        "syncs_per_step": {},
        "profiler_per_step": {},
        "error_mode": {},
        "examples": {},
    }
    plain_syncs = None
    for config in _configs():
        config.setup(work, tmp)
        try:
            _steps(work, config, 2)  # warm-up: discovery traces the first forward
            torch.cuda.synchronize()
            syncs = _debug_mode_syncs(work, config, steps)
            profiled = _profiled(work, config, steps)
            if config.name == "plain":
                plain_syncs = len(syncs)
            elif plain_syncs == 0:
                out["error_mode"][config.name] = _error_mode(work, config, steps)
        finally:
            config.teardown()
        out["syncs_per_step"][config.name] = len(syncs) / steps
        out["examples"][config.name] = sorted(set(syncs))[:5]
        out["profiler_per_step"][config.name] = {k: v / steps for k, v in profiled.items()}
    return out
