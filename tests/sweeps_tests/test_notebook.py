"""The quickstart notebook runs top to bottom and its outputs agree with the sweep it ran."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import optuna
import yaml
from nbclient import NotebookClient

from sweeps import load_config
from tests.conftest import REPO_ROOT

NOTEBOOK = REPO_ROOT / "notebooks" / "quickstart.ipynb"


def stream_text(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells
                   if cell.cell_type == "code" for output in cell.get("outputs", [])
                   if output.output_type == "stream")


def test_quickstart_notebook_runs_and_exports_the_best_trial(tmp_path: Path) -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "commit the notebook without outputs"
    client = NotebookClient(notebook, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    text = stream_text(notebook)
    config_path = Path(re.search(r"CONFIG: (\S+)", text).group(1))
    assert not config_path.is_relative_to(REPO_ROOT), "the notebook must not write in the repo"
    try:
        check_outputs(notebook, text, config_path)
    finally:
        shutil.rmtree(config_path.parent, ignore_errors=True)


def check_outputs(notebook: nbformat.NotebookNode, text: str, config_path: Path) -> None:
    config = load_config(config_path)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    complete = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    # Export's rule: lowest objective, ties to fewer training tokens.
    best = min(complete, key=lambda t: (t.value, t.user_attrs["training_tokens"], t.number))

    assert f"(plateau_loss {best.value:.4f})" in text
    assert f"RUNS READ FROM MLFLOW: {len(study.trials)}" in text
    images = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if "image/png" in output.get("data", {})]
    assert len(images) == 1, "the loss-curve plot is missing"

    exported_yaml = text.split("GEMINI API HYPERPARAMETERS")[0]
    exported = yaml.safe_load(exported_yaml[exported_yaml.index("knobs:"):])
    assert exported["trial"]["number"] == best.number
    assert exported["knobs"]["epochs"] == best.user_attrs["recommended_epochs"]
    hyper = re.search(r"GEMINI API HYPERPARAMETERS: (.*)", text).group(1)
    assert f'"epochCount": {best.user_attrs["recommended_epochs"]}' in hyper
