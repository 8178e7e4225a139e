"""Opening runs for the app: cached per (path, mtime, size), every failure as one clear line."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from resdoctor.app.view import View
from resdoctor.report.analysis import Report, analyze
from resdoctor.runfile import RunFileError
from resdoctor.runfile.run import Run

FileKey = tuple[str, int, int]  # absolute path, mtime_ns, size
UPLOADS = Path(tempfile.gettempdir()) / "resdoctor-app" / "uploads"


@dataclass(frozen=True)
class Opened:
    """A loaded run with its diagnosis and display frames."""

    path: str
    key: FileKey
    run: Run
    view: View
    report: Report | None
    analysis_error: str | None = None


def file_key(path: str) -> FileKey | None:
    """Identity of the file's current version, or None when it cannot be stat'ed."""
    p = os.path.abspath(os.path.expanduser(path))
    try:
        s = os.stat(p)
    except OSError:
        return None
    return p, s.st_mtime_ns, s.st_size


def open_run(path: str) -> Opened:
    """Load and analyse ``path`` (cached until the file changes). Raises ``RunFileError``."""
    key = file_key(path)
    if key is None:
        raise RunFileError(f"{path}: no such file")
    return _open(*key)


@st.cache_resource(max_entries=8, show_spinner="Reading the run…")
def _open(path: str, mtime_ns: int, size: int) -> Opened:
    run = Run.load(path)
    try:
        report, error = analyze(run), None
    except Exception as e:  # noqa: BLE001 - a rule failure must not hide the charts
        report, error = None, f"the analysis failed: {_one_line(e)}"
    return Opened(path, (path, mtime_ns, size), run, View(run), report, error)


def compare(a: Opened, b: Opened) -> tuple[dict[str, Any] | None, str | None]:
    """``resdoctor.report.compare.compare(a, b).to_dict()`` (cached), or an error line."""
    if a.report is None or b.report is None:
        return None, "both runs must be analysed to compare them"
    try:
        return _compare(a.key, b.key), None
    except Exception as e:  # noqa: BLE001 - shown in the page as one line
        return None, f"comparison failed: {_one_line(e)}"


@st.cache_data(max_entries=8, show_spinner=False)
def _compare(a: FileKey, b: FileKey) -> dict[str, Any]:
    from resdoctor.report.compare import compare as _cmp

    before, after = _open(*a).report, _open(*b).report
    if before is None or after is None:
        raise ValueError("both runs must be analysed to compare them")
    return _cmp(before, after).to_dict()


def save_upload(name: str, data: bytes) -> str:
    """Write an uploaded run to a temp file named by its content; return the path."""
    UPLOADS.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name).name)[:80] or "run.pt"
    path = UPLOADS / f"{digest}-{safe}"
    if not path.exists():
        path.write_bytes(data)
    return str(path)


def is_upload(path: str) -> bool:
    return Path(path).resolve().parent == UPLOADS.resolve()


def record_demo(fixed: bool) -> tuple[str, str | None]:
    """Record the demo run into a temp folder (``resdoctor demo``, in its own process: the app
    only renders), and with ``fixed`` the same recipe re-run with the top fix resdoctor
    suggests for it; return their paths."""
    folder = Path(tempfile.mkdtemp(prefix="resdoctor-demo-"))
    sick = folder / "demo.pt"
    cmd = [
        sys.executable,
        "-m",
        "resdoctor.cli.main",
        "demo",
        "--out",
        str(sick),
        "--seed",
        "0",
        "--json",
        *(["--fixed"] if fixed else []),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or "").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"resdoctor demo exited {done.returncode}")
    cured = folder / "demo-fixed.pt"
    return str(sick), (str(cured) if fixed else None)


def list_runs(folder: str, limit: int = 200) -> list[str]:
    """``*.pt`` files of ``folder``, newest first."""
    p = Path(os.path.expanduser(folder))
    if not p.is_dir():
        return []
    try:
        files = [f for f in p.glob("*.pt") if f.is_file()]
    except OSError:
        return []
    files.sort(key=lambda f: f.stat().st_mtime, reverse=True)
    return [str(f) for f in files[:limit]]


def cli_runs(argv: list[str]) -> tuple[list[str], str | None]:
    """Run paths given after ``--`` on the command line (at most two), or an error line."""
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        return [], f"unknown option {flags[0]!r}: usage: streamlit run app/main.py -- RUN [RUN2]"
    if len(argv) > 2:
        return argv[:2], f"{len(argv)} runs given, showing the first two"
    return list(argv), None


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__
