"""`gemini-sweep validate`: check a dataset (or a sweep config's dataset) before spending.

Exit 0 with a summary when the dataset is valid, 2 listing every error otherwise. ``--json``
prints the machine-readable report of :meth:`sweeps.data.dataset.DatasetReport.to_dict`.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated

import typer
from rich.table import Table

from sweeps.cli._common import EXIT_BAD_INPUT
from sweeps.cli._common import app
from sweeps.cli._common import console
from sweeps.cli._common import err_console
from sweeps.cli._common import user_errors

if TYPE_CHECKING:
    from sweeps.data.dataset import DatasetReport
    from sweeps.data.dataset import LengthStats

_CONFIG_SUFFIXES = (".yaml", ".yml")


class BackendKind(enum.StrEnum):
    """The backends whose dataset limits `validate` knows."""

    local = "local"
    gemini_api = "gemini-api"
    vertex = "vertex"


@dataclass(frozen=True, slots=True)
class _Target:
    """What to validate and how: from the command line, or a sweep config's dataset section."""

    dataset: Path
    backend: str = "local"
    preamble: str = ""
    validation_split: float = 0.0
    seed: int = 0


@app.command("validate", help="Check a dataset file (or a sweep config's dataset) and "
                              "summarise it: exit 0 if valid, 2 listing every error.")
def validate_command(
    dataset: Annotated[Path, typer.Argument(
        metavar="DATASET",
        help="a .jsonl, .json or .csv dataset, or a sweep config (.yaml) whose dataset and "
             "backend to check")],
    backend: Annotated[BackendKind | None, typer.Option(
        "--backend", help="whose limits apply [default: local, or the config's]")] = None,
    preamble: Annotated[str | None, typer.Option(
        "--preamble", help="text put in front of every input (production prompts must "
                           "carry it too)")] = None,
    validation_split: Annotated[float | None, typer.Option(
        "--validation-split", min=0.0, max=0.99,
        help="fraction held out for validation, checked against the backend's limits")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="seed of the validation split")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="print a machine-readable report")] = False,
) -> None:
    with user_errors():
        from sweeps.data.dataset import validate_dataset

        chosen = _resolve(dataset, backend=backend.value if backend else None,
                          preamble=preamble, validation_split=validation_split, seed=seed)
        report = validate_dataset(chosen.dataset, preamble=chosen.preamble,
                                  backend=chosen.backend,
                                  validation_split=chosen.validation_split, seed=chosen.seed)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    if not report.is_valid:
        raise typer.Exit(EXIT_BAD_INPUT)


def _resolve(target: Path, *, backend: str | None, preamble: str | None,
             validation_split: float | None, seed: int | None) -> _Target:
    """Command-line options win over a config's values; a dataset file uses the defaults."""
    if target.suffix.lower() not in _CONFIG_SUFFIXES:
        return _Target(target, backend or "local", preamble or "", validation_split or 0.0,
                       seed or 0)
    from sweeps.config.schema import load_config

    config = load_config(target)
    section = config.dataset
    return _Target(
        config.dataset_path,
        backend or config.backend.kind,
        section.preamble if preamble is None else preamble,
        section.validation_split if validation_split is None else validation_split,
        section.seed if seed is None else seed,
    )


def _print_report(report: DatasetReport) -> None:
    if report.stats.n_records:  # nothing to summarise when the file could not be read
        console.print(_summary_table(report))
    # User text may hold [brackets] (JSON indexes): never read it as rich markup.
    for warning in report.warnings:
        console.print(f"warning: {warning}", style="yellow", markup=False, highlight=False,
                      soft_wrap=True)
    for error in report.errors:
        err_console.print(f"error: {error}", style="red", markup=False, highlight=False,
                          soft_wrap=True)
    if report.is_valid:
        console.print(f"valid: {report.stats.n_examples:,} examples, "
                      f"{len(report.warnings)} warning(s)", markup=False, highlight=False)
    else:
        err_console.print(f"invalid: {len(report.errors)} error(s); fix them and run "
                          "`gemini-sweep validate` again", markup=False, highlight=False)


def _summary_table(report: DatasetReport) -> Table:
    stats = report.stats
    table = Table(title=f"{report.path} (limits of {report.backend})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("examples", f"{stats.n_examples:,}")
    if stats.n_validation:
        table.add_row("train / validation", f"{stats.n_train:,} / {stats.n_validation:,}")
    table.add_row("input chars p50 / p95 / max", _lengths(stats.input_chars))
    table.add_row("output chars p50 / p95 / max", _lengths(stats.output_chars))
    table.add_row("est. tokens per epoch", f"{stats.tokens_per_epoch:,}")
    if stats.request_bytes is not None:
        table.add_row("inline request", f"{stats.request_bytes:,} bytes")
    if stats.jsonl_bytes is not None:
        table.add_row("training JSONL", f"{stats.jsonl_bytes:,} bytes")
    if report.preamble:
        table.add_row("preamble", f"{report.preamble!r} (production prompts need it too)")
    table.add_row("content hash", report.content_hash[:16])
    return table


def _lengths(lengths: LengthStats) -> str:
    return f"{lengths.p50_chars:,} / {lengths.p95_chars:,} / {lengths.max_chars:,}"
