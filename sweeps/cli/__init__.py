"""The ``gemini-sweep`` command line: one module per command, composed here.

This module imports nothing heavy at import time: the console script imports it and then
calls :func:`main`, and everything else (typer, rich, the commands) loads inside ``main``,
where a Ctrl-C during start-up ends with one line and exit code 130, not a traceback.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    import typer

    app: typer.Typer

#: The exit code of an interrupted command (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def main() -> None:
    try:
        command_line = _app()
        command_line()
    except KeyboardInterrupt:
        # Before a command had started (or after it ended): nothing is left running.
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def _app() -> typer.Typer:
    from sweeps.cli import commands  # noqa: F401  (registers the commands on the app)
    from sweeps.cli._common import app as command_line

    return command_line


def __getattr__(name: str) -> Any:
    if name == "app":  # `from sweeps.cli import app`: the typer app, for tests and embedding
        return _app()
    raise AttributeError(f"module 'sweeps.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
