"""MLflow's own log lines (tracebacks of a locked or broken store) go to a file, not the
terminal: the sweep's messages say what happened, in its own words."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from sweeps.tracking.tracker import MlflowTracker
from sweeps.tracking.tracker import SweepInfo


def test_mlflow_tracebacks_go_to_the_log_file_next_to_the_store(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlflow.db")
    tracker.start_sweep(SweepInfo(name="logs", sweep_id="s1", backend="replay",
                                  base_model="", dataset_hash="h"))
    capfd.readouterr()
    try:
        raise RuntimeError("database is locked")
    except RuntimeError:
        # What MLflow's store does when a write fails (logger.exception on its own logger).
        logging.getLogger("mlflow.store.db.utils").exception("a write failed")
    tracker.close()

    printed = capfd.readouterr()
    assert "Traceback" not in printed.err + printed.out
    log = (tmp_path / "mlflow.log").read_text(encoding="utf-8")
    assert "a write failed" in log and "RuntimeError: database is locked" in log
