"""The one error policy. An error a user can fix (a bad file, option or setting) is a
``ResdoctorError``: every command prints its first line and exits with its ``exit_code``, as
click's exceptions carry theirs. Anything else is a bug: one line too, exit 2, and
``RESDOCTOR_DEBUG=1`` shows the traceback."""

from __future__ import annotations


class ResdoctorError(Exception):
    """Input resdoctor cannot use: one clear line, exit code 2."""

    exit_code = 2


def first_line(error: BaseException, whole: bool = False, limit: int = 240) -> str:
    """The message of ``error`` on one line (its first line, or all lines joined), at most
    ``limit`` characters; the class name when it has no message."""
    lines = [x.strip() for x in str(error).strip().splitlines() if x.strip()]
    text = " ".join(lines) if whole else (lines[0] if lines else "")
    return (text or type(error).__name__)[:limit]
