"""`gemini-sweep report`: PNG plots and a one-page Markdown summary of a sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sweeps.cli._common import app
from sweeps.cli._common import console
from sweeps.cli._common import user_errors


@app.command("report", help="Write PNG plots and a one-page summary (Markdown) of a sweep.")
def report_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="the sweep config")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="the folder to write into (created if missing)")] = Path("report"),
) -> None:
    with user_errors():
        # Loaded here, not at start-up: the report pulls in MLflow and matplotlib.
        from sweeps.config.schema import load_config
        from sweeps.results.report import write_report

        config = load_config(config_path)
        files = write_report(config, output)
    console.print(f"wrote {files.summary} and {len(files.images)} plots: "
                  + ", ".join(path.name for path in files.images.values()),
                  markup=False, highlight=False, soft_wrap=True)
