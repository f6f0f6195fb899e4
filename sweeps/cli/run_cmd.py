"""`gemini-sweep run`."""

from __future__ import annotations

from pathlib import Path

import typer

from sweeps.cli._common import app
from sweeps.cli._common import not_yet_available


@app.command("run", help="Run a sweep: submit, poll and record trials until n_trials are done.")
def run_command(target: Path = typer.Argument(..., help="the sweep config or dataset")) -> None:
    not_yet_available("run", 4)
