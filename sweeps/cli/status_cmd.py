"""`gemini-sweep status`."""

from __future__ import annotations

from pathlib import Path

import typer

from sweeps.cli._common import app
from sweeps.cli._common import not_yet_available


@app.command("status", help="Show a sweep's trials, the best one and the budget spent.")
def status_command(target: Path = typer.Argument(..., help="the sweep config or dataset")) -> None:
    not_yet_available("status", 5)
