"""`gemini-sweep export`: the best trial's configuration, ready to submit.

The export goes to stdout (or ``-o FILE``) and nothing else does, so it can be piped; the
recommendation's notes (plateau, flags, learning-rate schedule) go to stderr. A Vertex
export with ``-o`` also writes the JSONL files its body names, next to FILE.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from sweeps.cli._common import app
from sweeps.cli._common import err_console
from sweeps.cli._common import user_errors
from sweeps.cli._export_warnings import export_warnings


class ExportFormatOption(enum.StrEnum):
    yaml = "yaml"
    json = "json"
    gemini_api = "gemini-api"
    vertex = "vertex"
    python = "python"
    curl = "curl"


@app.command("export", help="Export the best trial's configuration, ready to submit.")
def export_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="the sweep config")],
    fmt: Annotated[ExportFormatOption, typer.Option(
        "--format", "-f", help="yaml/json: the knobs and provenance; gemini-api/vertex: the "
        "exact create body; python/curl: a runnable request")] = ExportFormatOption.yaml,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="write here instead of stdout")] = None,
    base_model: Annotated[str | None, typer.Option(
        "--base-model", help="the base model of the create body [default: the config's, "
        "else the service's default]")] = None,
) -> None:
    with user_errors():
        # Loaded here, not at start-up: the export pulls in Optuna and the backends' wire code.
        from sweeps.config.schema import load_config
        from sweeps.results import export
        from sweeps.results.sweep_results import config_results

        config = load_config(config_path)
        best = export.best_config(config, config_results(config))
        text = export.render(config, best, fmt.value, base_model=base_model)
        notes = list(best.recommendation.notes)
        files: dict[str, bytes] = {}
        if fmt is ExportFormatOption.vertex or (
                fmt in (ExportFormatOption.python, ExportFormatOption.curl)
                and export.targets_vertex(config)):
            vertex = export.vertex_export(config, best, base_model=base_model)
            notes += vertex.notes
            files = vertex.files
        calls_gemini_api = fmt is ExportFormatOption.gemini_api or (
            fmt in (ExportFormatOption.python, ExportFormatOption.curl)
            and not export.targets_vertex(config))
        gemini_api_model = (export.gemini_api_body(config, best, base_model=base_model)
                            ["baseModel"] if calls_gemini_api else None)
        warnings = export_warnings(gemini_api_model=gemini_api_model, file_uris=files)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
        _write_data_files(output.parent, files)
        err_console.print(f"wrote {output}", markup=False, highlight=False)
    err_console.print(f"best trial {best.trial.number} of sweep {best.study_name!r}: "
                      f"{best.objective} = {best.trial.value:.6g}", markup=False,
                      highlight=False)
    for note in notes:
        err_console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    for warning in warnings:
        err_console.print(f"warning: {warning}", style="yellow", markup=False,
                          highlight=False, soft_wrap=True)


def _write_data_files(folder: Path, files: dict[str, bytes]) -> None:
    """The training (and validation) JSONL a Vertex body names, to upload before creating."""
    for name, (uri, data) in zip(("train.jsonl", "validation.jsonl"), files.items(),
                                 strict=False):
        path = folder / name
        path.write_bytes(data)
        err_console.print(f"wrote {path}: upload it with `gcloud storage cp {path} {uri}`",
                          markup=False, highlight=False, soft_wrap=True)
