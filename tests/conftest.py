"""Shared fixtures: paths to the repository's configs and example data, and one empty MLflow
store for the whole run."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

# Longest tests first, balanced across the xdist workers (see the module).
pytest_plugins = ["tests._slowest_first"]

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store that tests copy: MLflow's table set-up takes seconds, so it
    is made once per run, shared by the pytest-xdist workers (their temporary folders have one
    parent) under a file lock, and moved into place whole."""
    from mlflow import MlflowClient

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = root / "mlflow-template.db"
    with open(root / "mlflow-template.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            building = root / f"mlflow-template-{os.getpid()}.db"
            MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments()
            os.replace(building, path)
    return path
