"""The project's own checks, run by the test command (and so by CI): lint, format, types and
the layer contracts of ``pyproject.toml`` (import-linter)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ["resdoctor", "tests", "probes", "bench", "app"]


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_check():
    out = _run(sys.executable, "-m", "ruff", "check", *CODE)
    assert out.returncode == 0, out.stdout[-3000:]


def test_ruff_format():
    out = _run(sys.executable, "-m", "ruff", "format", "--check", *CODE)
    assert out.returncode == 0, out.stdout[-3000:]


def test_mypy_with_check_untyped_defs():
    out = _run(sys.executable, "-m", "mypy", "resdoctor")
    assert out.returncode == 0, out.stdout[-3000:]


def test_layer_contracts():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports not found: pip install -e '.[dev]'")
    out = _run(lint)
    assert out.returncode == 0 and "0 broken" in out.stdout, out.stdout[-3000:]
