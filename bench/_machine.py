"""What a benchmark ran on, recorded next to its numbers so anyone can compare like with like."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    """1/5/15-minute load averages: a high value means the timings are noisy."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def git_commit() -> str | None:
    """The short commit, with ``+dirty`` when resdoctor/ has uncommitted changes."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    if not commit:
        return None
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", "resdoctor"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return commit + ("+dirty" if status.stdout.strip() else "")


def describe(device: torch.device) -> dict[str, Any]:
    """CPU, cores, threads, versions, GPU (if used), git commit and the load at the start."""
    import resdoctor

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "resdoctor": resdoctor.__version__,
        "commit": git_commit(),
        "device": str(device),
        "loadavg_start": loadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
