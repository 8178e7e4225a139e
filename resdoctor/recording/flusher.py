"""Flusher: writes run-file snapshots on a background thread, so the training thread never
waits for serialisation, the disk or ``fsync``.

The training thread takes a snapshot (``Journal.state()`` copies every array) and hands it over;
one daemon thread writes the newest snapshot atomically (``runfile.write``: temp file, fsync,
rename). A snapshot that arrives while another is being written replaces the one waiting, so a
slow disk costs stale files, never a queue. A failing path is reported once (on stderr and in
the run's errors) and retried with back-off (``retry_after``), not on every step.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resdoctor.runfile import io as runfile

MAX_BACKOFF_S = 300.0
STALE_TMP_S = 60.0  # a temp file this old is a write that a kill interrupted


class Flusher:
    """Background writer of one run file.

    Args:
        path: the run file.
        on_error: called (on the writer thread) with each write failure.
    """

    def __init__(self, path: str, on_error: Callable[[BaseException], None]) -> None:
        self.path = path
        self.on_error = on_error
        self.write: Callable[[Any, str], None] = runfile.write  # the disk side
        self.writes = 0
        self.failures = 0  # consecutive
        self.retry_after = 0.0  # time.monotonic() before which no snapshot is worth taking
        self._cond = threading.Condition()
        self._pending: Any = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._reported = False

    # -- training thread -------------------------------------------------------------------
    def due(self) -> bool:
        """False while backing off after a failed write."""
        return time.monotonic() >= self.retry_after

    def submit(self, state: Any) -> None:
        """Queue ``state`` for writing and return at once."""
        with self._cond:
            if self._closed:
                return
            self._pending = state
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="resdoctor-flush", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every submitted snapshot is written (True) or ``timeout`` passed."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)

    def write_now(self, state: Any) -> None:
        """Write ``state`` on the calling thread, after whatever is queued (used at close)."""
        self.wait()
        self._write(state, raise_errors=True)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._pending = None
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=60)

    # -- writer thread ---------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None or self._closed)
                if self._closed and self._pending is None:
                    return
                state, self._pending = self._pending, None
                self._busy = True
            try:
                self._write(state, raise_errors=False)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, state: Any, raise_errors: bool) -> None:
        try:
            if self.writes == 0 and self.failures == 0:
                remove_stale_temp_files(self.path)
            self.write(state, self.path)
        except Exception as e:  # noqa: BLE001 - recorded; training goes on
            self.failures += 1
            self.retry_after = time.monotonic() + min(MAX_BACKOFF_S, 2.0**self.failures)
            self.on_error(e)
            if not self._reported:
                self._reported = True
                print(
                    f"resdoctor: cannot write {self.path} ({type(e).__name__}: "
                    f"{str(e)[:120]}); training goes on, retrying with back-off",
                    file=sys.stderr,
                )
            if raise_errors:
                raise
            return
        self.writes += 1
        self.failures = 0
        self.retry_after = 0.0


def remove_stale_temp_files(path: str) -> None:
    """Delete ``.NAME.*.tmp`` files next to ``path`` older than ``STALE_TMP_S``: writes that a
    kill interrupted (a running writer's temp file is younger)."""
    target = Path(path)
    now = time.time()
    with contextlib.suppress(OSError):
        for tmp in target.parent.glob(f".{target.name}.*.tmp"):
            with contextlib.suppress(OSError):
                if now - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink()
