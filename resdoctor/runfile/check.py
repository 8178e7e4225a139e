"""The run file's structure, checked before anything reads it: a file from someone else must
not hang, exhaust memory or reach a rule with values no recorder writes.

Bounded by construction: the file is a regular file under ``MAX_FILE_BYTES`` whose zip entries
inflate to under ``MAX_UNPACKED_BYTES``; after the weights-only load, one walk over the object
(at most ``MAX_NODES`` visits, shared references counted each time they are reached, so a
"billion laughs" of shared tuples stops early) checks types, depth and string lengths; then the
typed fields of ``layout.RunState`` are checked (tensor dtypes, shapes, strides and backing
storage, step ranges, unique column names). Every rejection is one line that never echoes the
offending value.
"""

from __future__ import annotations

import os
import stat
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

MAX_FILE_BYTES = 1 << 30  # a million-step, 300-module run is ~36 MB
MAX_UNPACKED_BYTES = 1 << 30
MAX_NODES = 2_000_000  # container and leaf visits in the walk
MAX_DEPTH = 12
MAX_STR = 10_000  # characters in any string (messages are cut to 500 when recorded)
MAX_NAME = 1_000  # module, site, column and key names
MAX_CELLS = 200_000_000  # elements over all tensors
MAX_STEPS = 10**12
MAX_EVENTS = 1_000_000
MAX_ROWS = 10_000_000
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


class Invalid(ValueError):
    """One line saying what is wrong (``io`` turns it into a ``RunFileError``)."""


def check_file(path: Path) -> None:
    """A regular file of bounded size whose zip entries inflate to a bounded size."""
    try:
        st = os.stat(path)  # never open a FIFO or a device: open() could block forever
    except OSError as e:
        raise Invalid(f"cannot be read ({e.strerror or type(e).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise Invalid("is not a regular file (a pipe, device or socket)")
    if st.st_size > MAX_FILE_BYTES:
        raise Invalid(f"is {st.st_size / 2**20:,.0f} MB, over the {MAX_FILE_BYTES >> 20} MB limit")
    try:
        with zipfile.ZipFile(path) as z:
            unpacked = sum(max(i.file_size, 0) for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise Invalid("not a readable run file (not a torch.save zip archive)") from None
    if unpacked > MAX_UNPACKED_BYTES:
        raise Invalid(
            f"inflates to {unpacked / 2**20:,.0f} MB, over the {MAX_UNPACKED_BYTES >> 20} MB limit"
        )


def _kind(x: object) -> str:
    return type(x).__name__


def walk(state: object) -> None:
    """Types, depth, string lengths and total size, in at most ``MAX_NODES`` visits."""
    budget = [MAX_NODES, MAX_CELLS]
    stack: list[tuple[object, int]] = [(state, 0)]
    while stack:
        x, depth = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            raise Invalid(f"holds more than {MAX_NODES:,} values (shared references included)")
        if depth > MAX_DEPTH:
            raise Invalid(f"nests deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in _children(x, budget))


def _children(x: object, budget: list[int]) -> list[object]:
    """The values inside a container (none for a leaf); raises on anything not plain data."""
    if x is None or isinstance(x, (bool, int, float)):
        return []
    if isinstance(x, str):
        if len(x) > MAX_STR:
            raise Invalid(f"holds a string of {len(x):,} characters")
        return []
    if isinstance(x, torch.Tensor):
        _tensor(x, budget)
        return []
    if isinstance(x, Mapping):
        for k in x:
            if not isinstance(k, str) or len(k) > MAX_NAME:
                raise Invalid(f"has a {_kind(k)} key where a short name belongs")
        return list(x.values())
    if isinstance(x, (list, tuple)):
        return list(x)
    raise Invalid(f"holds a {_kind(x)}, not plain data")


def _tensor(t: torch.Tensor, budget: list[int]) -> None:
    if t.layout != torch.strided or t.is_sparse or t.is_quantized or t.is_complex():
        raise Invalid("holds a sparse, quantized or complex tensor")
    if t.dtype not in FLOATS + INTS:
        raise Invalid(f"holds a tensor of dtype {t.dtype}")
    n = t.numel()
    budget[1] -= n
    if budget[1] < 0:
        raise Invalid(f"holds more than {MAX_CELLS:,} tensor elements")
    if n and (not t.is_contiguous() or any(s == 0 for s in t.stride())):
        raise Invalid("holds a tensor that is not contiguous (an expanded or strided view)")
    needed = (t.storage_offset() + n) * t.element_size()
    if n and t.untyped_storage().nbytes() < needed:
        raise Invalid("holds a tensor larger than its stored data")


def _int(x: object, what: str, lo: int = 0, hi: int = MAX_STEPS) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise Invalid(f"{what} is a {_kind(x)}, not an integer")
    if not lo <= x <= hi:
        raise Invalid(f"{what} is out of range ({lo}..{hi})")
    return x


def _str(x: object, what: str, limit: int = MAX_NAME) -> str:
    if not isinstance(x, str):
        raise Invalid(f"{what} is a {_kind(x)}, not a string")
    if len(x) > limit:
        raise Invalid(f"{what} is {len(x):,} characters long")
    return x


def _list(x: object, what: str, limit: int) -> list[Any]:
    if not isinstance(x, list):
        raise Invalid(f"{what} is a {_kind(x)}, not a list")
    if len(x) > limit:
        raise Invalid(f"{what} has {len(x):,} entries (at most {limit:,})")
    return x


def _dict(x: object, what: str) -> Mapping[str, Any]:
    if not isinstance(x, Mapping):
        raise Invalid(f"{what} is a {_kind(x)}, not a table")
    return x


def fields(state: Mapping[str, Any], schema_version: int) -> None:
    """The typed fields of ``layout.RunState`` (after ``walk``)."""
    _version(state["schema_version"], schema_version)
    steps = _int(state["steps"], "steps")
    _names(state)
    series = _dict(state["series"], "series")
    for name, s in series.items():
        _series(_dict(s, f"series {name[:40]}"), name[:40], steps)
    _events(state["events"], steps)
    _skipped(state.get("skipped_steps"), steps)
    for i, e in enumerate(_list(state.get("errors", []), "errors", 10_000)):
        _int(_dict(e, f"errors[{i}]").get("count", 1), f"errors[{i}].count", 0, 10**15)


def _version(version: object, newest: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise Invalid(f"schema_version is a {_kind(version)}, not an integer")
    if version < 1:
        raise Invalid("schema_version is below 1")
    if version > newest:
        raise Invalid(
            f"schema_version {version} is newer than this resdoctor reads ({newest}); "
            "upgrade resdoctor"
        )


def _names(state: Mapping[str, Any]) -> None:
    for i, m in enumerate(_list(state["modules"], "modules", MAX_ROWS)):
        m = _dict(m, f"modules[{i}]")
        _str(m.get("name"), f"modules[{i}].name")
        if "params" in m:
            _int(m["params"], f"modules[{i}].params", 0, 10**13)
    for i, s in enumerate(_list(state["sites"], "sites", MAX_ROWS)):
        _str(_dict(s, f"sites[{i}]").get("name"), f"sites[{i}].name")
    for i, name in enumerate(_list(state.get("layers", []), "layers", MAX_ROWS)):
        _str(name, f"layers[{i}]")


def _events(events: object, steps: int) -> None:
    for i, e in enumerate(_list(events, "events", MAX_EVENTS)):
        e = _dict(e, f"events[{i}]")
        _int(e.get("step"), f"events[{i}].step", 0, max(steps, 0))
        if e.get("module") is not None:
            _str(e.get("module"), f"events[{i}].module")
        _str(e.get("phase"), f"events[{i}].phase", 40)
        if not isinstance(e.get("detail", {}), Mapping):
            raise Invalid(f"events[{i}].detail is a {_kind(e.get('detail'))}, not a table")


def _skipped(skipped: object, steps: int) -> None:
    if skipped is None:
        return
    if not isinstance(skipped, torch.Tensor) or skipped.dim() != 1 or skipped.dtype not in INTS:
        raise Invalid("skipped_steps is not a 1-d integer tensor")
    if skipped.numel() and (int(skipped.min()) < 0 or int(skipped.max()) > steps):
        raise Invalid("skipped_steps holds steps outside the run")


def _series(s: Mapping[str, Any], name: str, steps: int) -> None:
    what = f"series {name}"
    columns = _list(s.get("columns"), f"{what}: columns", MAX_ROWS)
    for c in columns:
        _str(c, f"{what}: a column name")
    if len(set(columns)) != len(columns):
        raise Invalid(f"{what} has duplicate column names")
    _int(s.get("stride"), f"{what}: stride", 1, MAX_STEPS)
    _int(s.get("capacity", 1), f"{what}: capacity", 0, MAX_ROWS)
    rows = _series_rows(s, what, steps)
    for key in ("mean", "max", "min", "n"):
        t = s.get(key)
        if t is None and key == "n":
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (rows, len(columns)):
            raise Invalid(f"{what}: {key} is not a [rows, columns] tensor")
        if key != "n" and t.dtype not in FLOATS:
            raise Invalid(f"{what}: {key} is not a float tensor")
        if key == "n" and (t.dtype not in INTS or (t.numel() and int(t.min()) < 0)):
            raise Invalid(f"{what}: n is not a non-negative integer tensor")


def _series_rows(s: Mapping[str, Any], what: str, steps: int) -> int:
    """The row count of a series: ``steps`` and ``count`` 1-d integer tensors, in range."""
    first, count = s.get("steps"), s.get("count")
    for key, t in (("steps", first), ("count", count)):
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype not in INTS:
            raise Invalid(f"{what}: {key} is not a 1-d integer tensor")
    assert isinstance(first, torch.Tensor) and isinstance(count, torch.Tensor)
    if len(first) != len(count):
        raise Invalid(f"{what}: steps and count differ in length")
    if len(first) and (int(first.min()) < 0 or int(first.max()) > steps):
        raise Invalid(f"{what}: steps outside the run")
    if len(count) and int(count.min()) < 0:
        raise Invalid(f"{what}: negative counts")
    return len(first)
