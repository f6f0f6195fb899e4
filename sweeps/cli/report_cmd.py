"""`gemini-sweep report`."""

from __future__ import annotations

from pathlib import Path

import typer

from sweeps.cli._common import app
from sweeps.cli._common import not_yet_available


@app.command("report", help="Write PNG plots and a one-page summary of a sweep.")
def report_command(target: Path = typer.Argument(..., help="the sweep config or dataset")) -> None:
    not_yet_available("report", 5)
