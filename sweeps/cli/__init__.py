"""The ``gemini-sweep`` command line: one module per command, composed here."""

from __future__ import annotations

from sweeps.cli import commands  # noqa: F401  (registers the commands on the app)
from sweeps.cli._common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
