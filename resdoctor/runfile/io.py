"""The run file (DESIGN.md section 5): atomic writes, safe reads, schema checks.

A run file is a ``torch.save`` of plain containers, numbers, strings and tensors, so it is read
with ``torch.load(weights_only=True)``: loading never executes code from the file.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from resdoctor.errors import ResdoctorError, first_line
from resdoctor.runfile import check
from resdoctor.runfile.layout import FORMAT, SCHEMA_VERSION, RunState

__all__ = ["FORMAT", "REQUIRED", "SCHEMA_VERSION", "RunFileError", "read", "validate", "write"]
REQUIRED = ("format", "schema_version", "steps", "modules", "sites", "series", "events")


class RunFileError(ResdoctorError, ValueError):
    """A run file is missing, unreadable, truncated, unsafe or not a resdoctor run."""


def write(state: RunState, path: str | os.PathLike[str]) -> None:
    """Write ``state`` atomically: a temp file in the same folder, then ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read(path: str | os.PathLike[str]) -> RunState:
    """Load and validate a run file; any problem raises ``RunFileError`` with one clear line."""
    p = Path(path)
    if not p.exists():
        raise RunFileError(f"{_short(p)}: no such file")
    if p.is_dir():
        raise RunFileError(f"{_short(p)}: is a directory, not a run file")
    try:
        check.check_file(p)
    except check.Invalid as e:
        raise RunFileError(f"{_short(p)}: {e}") from None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=False)
    except pickle.UnpicklingError as e:
        raise RunFileError(_unpickling_message(p, str(e))) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise RunFileError(f"{p}: not a readable run file ({first_line(e, limit=160)})") from None
    except Exception as e:  # noqa: BLE001 - any other loader failure is still bad input
        raise RunFileError(f"{p}: not a readable run file ({first_line(e, limit=160)})") from None
    validate(state, p)
    try:
        check.walk(state)
        check.fields(state, SCHEMA_VERSION)
    except check.Invalid as e:
        raise RunFileError(f"{_short(p)}: malformed run file: {e}") from None
    return state  # type: ignore[no-any-return]


def _short(p: Path) -> str:
    """The path as shown in one error line (a hostile name must not fill the terminal)."""
    text = str(p)
    return text if len(text) <= 100 else text[:48] + "..." + text[-48:]


def validate(state: Any, where: Any = "run") -> None:
    """Check the top-level structure; raises ``RunFileError``."""
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunFileError(f"{where}: not a resdoctor run file")
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise RunFileError(f"{where}: run file is missing {', '.join(missing)}")
    version = state["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise RunFileError(f"{where}: schema_version is a {type(version).__name__}, not an integer")
    if version > SCHEMA_VERSION:
        raise RunFileError(
            f"{where}: schema_version {version} is newer than this resdoctor reads "
            f"({SCHEMA_VERSION}); upgrade resdoctor"
        )
    if not isinstance(state["series"], dict) or not isinstance(state["events"], list):
        raise RunFileError(f"{where}: run file has a malformed series or events table")


def _unpickling_message(p: Path, text: str) -> str:
    """torch's weights-only errors are long; keep the one fact that says what was refused."""
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (
            f"{p}: refused to load: it references {refused.group(1)}, not plain data "
            "(run files hold only numbers, strings and tensors)"
        )
    detail = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    reason = detail.group(1) if detail else "not a torch file"
    return f"{p}: not a readable run file ({reason[:160]})"
