"""`gemini-sweep report`: PNG plots and a Markdown summary from a real replay sweep."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from sweeps import load_config
from sweeps.cli import app
from sweeps.tracking.read import trial_curves
from tests.conftest import REPO_ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
runner = CliRunner()


def write_sweep(folder: Path, *, name: str, n_trials: int = 4) -> Path:
    (folder / "data").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "configs/data/next_number.jsonl", folder / "data")
    shutil.copy(REPO_ROOT / "configs/data/replay_demo_curves.json", folder / "data")
    config = {"name": name, "dataset": {"path": "data/next_number.jsonl"},
              "backend": {"kind": "replay", "curves": "data/replay_demo_curves.json",
                          "time_scale": 0},
              "search_space": {"epochs": {"low": 2, "high": 8},
                               "learning_rate_multiplier": {"low": 0.2, "high": 5,
                                                            "log": True}},
              "n_trials": n_trials, "concurrency": n_trials, "sampler": {"seed": 7}}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def replay_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sweeps.engine.runner import run_sweep

    path = write_sweep(tmp_path_factory.mktemp("report"), name="report-sweep")
    run_sweep(load_config(path))
    return path


def test_report_writes_plots_and_a_summary_embedding_them(replay_sweep: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(replay_sweep), "-o", str(out)])
    assert result.exit_code == 0, result.output
    pngs = {p.name for p in out.glob("*.png")}
    assert pngs == {"optimization_history.png", "parallel_coordinate.png",
                    "param_importances.png", "loss_curves.png", "best_trial_curve.png"}
    assert all((out / name).read_bytes()[:8] == PNG_MAGIC for name in pngs)
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", summary)) == pngs

    config = load_config(replay_sweep)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    best = study.best_trial
    assert f"Best trial **{best.number}**" in summary
    assert f"`epochs` = {best.user_attrs['recommended_epochs']}" in summary
    assert f"plateaus at epoch {best.user_attrs['plateau_epoch']}" in summary
    rows = [line for line in summary.splitlines() if re.match(r"\| \**\d", line)]
    assert len(rows) == len(study.trials)


def test_curves_in_the_report_are_the_logged_ones(replay_sweep: Path) -> None:
    config = load_config(replay_sweep)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    curves = trial_curves(config.tracking_url, config.name,
                          sweep_id=study.user_attrs["gemini_sweep.sweep_id"])
    assert sorted(curves) == [t.number for t in study.trials]
    for trial in study.trials:
        assert len(curves[trial.number].train) == trial.user_attrs["epochs_completed"]


def test_report_of_a_sweep_without_completed_trials(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, name="nothing-done")
    config = load_config(path)
    config.state_dir.mkdir()
    study = optuna.create_study(study_name=config.name, storage=config.storage_url)
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    out = tmp_path / "out"
    result = runner.invoke(app, ["report", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    summary = (out / "summary.md").read_text(encoding="utf-8")
    assert "No trial has completed yet" in summary
    assert "1 fail" in summary
    assert (out / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC


def test_report_before_the_sweep_ran_says_so(tmp_path: Path) -> None:
    path = write_sweep(tmp_path, name="never-ran")
    result = runner.invoke(app, ["report", str(path), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "gemini-sweep run" in result.stderr
