"""Launch ``worker.py`` with torchrun: two CPU processes on gloo, a free port, a hard timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

WORKER = Path(__file__).with_name("worker.py")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(mode: str, out: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``torchrun --nproc_per_node=2 worker.py MODE OUT``; returns the finished process."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKER),
        mode,
        str(out),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def expected(out: Path, rank: int) -> dict:
    """The reference values the worker of ``rank`` saved."""
    return torch.load(out / f"expected.rank{rank}.pt", weights_only=True)


def tail(proc: subprocess.CompletedProcess[str]) -> str:
    return (proc.stdout + proc.stderr)[-3000:]
