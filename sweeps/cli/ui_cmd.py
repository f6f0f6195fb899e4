"""`gemini-sweep ui`."""

from __future__ import annotations

from pathlib import Path

import typer

from sweeps.cli._common import app
from sweeps.cli._common import not_yet_available


@app.command("ui", help="Open the sweep's experiment in the MLflow UI.")
def ui_command(target: Path = typer.Argument(..., help="the sweep config or dataset")) -> None:
    not_yet_available("ui", 5)
