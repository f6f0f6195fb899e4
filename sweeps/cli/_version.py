"""``gemini-sweep --version``: this package's version and the libraries a bug report needs.

Versions are read from the installed packages' metadata, never by importing them, so the
answer is instant.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Annotated

import typer

from sweeps.cli._common import app
from sweeps.cli._common import console

PACKAGE = "gemini-sweep"
_LIBRARIES = ("optuna", "mlflow", "torch")


def version_text() -> str:
    """``gemini-sweep 0.1.0 (Python 3.11.7; optuna 4.5.0, mlflow 3.1.0, torch absent)``."""
    libraries = ", ".join(f"{name} {_installed(name) or 'absent'}" for name in _LIBRARIES)
    own = _installed(PACKAGE) or "(not installed: run `pip install -e .`)"
    return f"{PACKAGE} {own} (Python {platform.python_version()}; {libraries})"


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _print_version(value: bool) -> None:
    if value:
        console.print(version_text(), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="print the version (and Python's, Optuna's, MLflow's, torch's) and exit")] = False,
) -> None:
    """Find the best fine-tuning hyperparameters for Gemini models, tracked in MLflow."""
