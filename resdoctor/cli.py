"""The ``resdoctor`` command line (typer). Thin: parse, call the core, render."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="resdoctor: a training-health doctor for residual networks.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
