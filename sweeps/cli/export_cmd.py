"""`gemini-sweep export`."""

from __future__ import annotations

from pathlib import Path

import typer

from sweeps.cli._common import app
from sweeps.cli._common import not_yet_available


@app.command("export", help="Export the best trial's configuration, ready to submit.")
def export_command(target: Path = typer.Argument(..., help="the sweep config or dataset")) -> None:
    not_yet_available("export", 5)
