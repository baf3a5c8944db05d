"""The CLI's edge: where errors become one red line on stderr and an exit code."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class _StdoutConsole(Console):
    def on_broken_pipe(self) -> None:
        # rich raises SystemExit(1) here, which would vanish inside a socket callback; let the
        # command see the BrokenPipeError and exit 0 through stdout_closed().
        self.quiet = True
        raise BrokenPipeError("stdout was closed")


def stdout_console() -> Console:
    """The console human-readable output goes to (plain text when stdout is not a terminal)."""
    return _StdoutConsole(highlight=False, soft_wrap=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as one red line on stderr and exit with ``code``."""
    stderr.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(code)


def note(message: str, console: Console | None = None) -> None:
    """A dim status line on stderr (joins, reconnect attempts)."""
    (console or stderr).print(escape(message), style="dim", markup=True, highlight=False)


def warn(message: str, console: Console | None = None) -> None:
    """A yellow line on stderr for something the user should know but that is not an error."""
    (console or stderr).print(escape(message), style="yellow", markup=True, highlight=False)


def stdout_closed() -> NoReturn:
    """Exit quietly when the reader of stdout went away (``relay listen | head -3``)."""
    # Point stdout at /dev/null so the interpreter's final flush cannot fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise typer.Exit(0)
