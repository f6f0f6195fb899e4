"""`gemini-sweep validate`."""

from __future__ import annotations

from pathlib import Path

import typer

from sweeps.cli._common import app
from sweeps.cli._common import not_yet_available


@app.command("validate", help="Check a dataset file and summarise it.")
def validate_command(target: Path = typer.Argument(..., help="the sweep config or dataset")) -> None:
    not_yet_available("validate", 2)
