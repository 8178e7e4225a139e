"""Every command's errors, handled once: ``@one_line_errors("resdoctor")``."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from resdoctor.errors import ResdoctorError, first_line

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2, prefix: str = "resdoctor") -> None:
    """Print ``prefix: message`` on stderr and exit with ``code``."""
    typer.echo(f"{prefix}: {message}", err=True)
    raise typer.Exit(code)


def one_line_errors(prefix: str = "resdoctor") -> Callable[[F], F]:
    """A ``ResdoctorError`` exits with its own code after one line; any other exception (a
    bug) exits 2 after one line naming its type. No traceback unless RESDOCTOR_DEBUG is set."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                with warnings.catch_warnings():
                    # torch's safe loader warns about the pickle protocol of files it refuses
                    warnings.filterwarnings("ignore", message="Detected pickle protocol")
                    return fn(*args, **kwargs)
            except (typer.Exit, typer.Abort, KeyboardInterrupt):
                raise
            except ResdoctorError as e:
                if os.environ.get("RESDOCTOR_DEBUG"):
                    raise
                fail(first_line(e), e.exit_code, prefix)
            except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback
                if os.environ.get("RESDOCTOR_DEBUG"):
                    raise
                fail(f"{type(e).__name__}: {first_line(e)}", 2, prefix)

        return wrapper  # type: ignore[return-value]

    return decorate
