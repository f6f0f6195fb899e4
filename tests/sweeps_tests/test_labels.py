"""What the tools around a sweep read from it: real MLflow and Optuna SQLite stores.

- The MLflow experiment says it is model training (``mlflow.experimentKind``), so the MLflow
  UI opens it on its runs and charts, not in the GenAI view as "evaluation runs".
- The Optuna study names its objectives, so optuna-dashboard and the `optuna` CLI show
  ``plateau_loss`` instead of "Objective 0" / "value".
- A pruned trial's run says why and after which epoch it was cancelled.
"""

from __future__ import annotations

import json
import subprocess
import sys

from mlflow import MlflowClient

from sweeps.engine.runner import open_study
from sweeps.tracking import _writer as writer
from tests.sweeps_tests.test_tracking import mixed_sweep  # noqa: F401  (fixture)
from tests.sweeps_tests.test_tracking import runs_of

KIND = "mlflow.experimentKind"


def test_the_experiment_opens_in_the_training_view(mixed_sweep) -> None:  # noqa: F811
    config, _, _ = mixed_sweep
    _, experiment, _, _ = runs_of(config)
    assert experiment.tags[KIND] == "custom_model_development"


def test_an_older_experiment_gets_the_kind_and_a_chosen_kind_is_kept(tmp_path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    older = client.create_experiment("made-before-the-tag")
    chosen = client.create_experiment("kind-chosen-in-the-ui", tags={KIND: "genai_development"})
    for name in ("made-before-the-tag", "kind-chosen-in-the-ui"):
        writer.ensure_experiment(client, name, artifact_root=None)
    assert client.get_experiment(older).tags[KIND] == "custom_model_development"
    assert client.get_experiment(chosen).tags[KIND] == "genai_development"


def test_the_study_names_its_objective_for_the_optuna_cli(mixed_sweep) -> None:  # noqa: F811
    config, _, _ = mixed_sweep
    study = open_study(config)
    assert study.metric_names == ["plateau_loss"]
    done = subprocess.run(
        [sys.executable, "-c", "from optuna.cli import main; main()", "trials",
         "--study-name", config.name, "--storage", config.storage_url, "-f", "json"],
        capture_output=True, text=True, timeout=120, check=True)
    values = {row["number"]: row["value"] for row in json.loads(done.stdout)
              if row["state"] == "COMPLETE"}
    assert values == {trial.number: {"plateau_loss": trial.value}
                      for trial in study.get_trials() if trial.value is not None
                      and trial.state.name == "COMPLETE"}
    assert values  # the sweep has completed trials to show


def test_a_multi_objective_study_names_both_objectives(make_config) -> None:
    config = make_config(objective=["plateau_loss", "cost"])
    assert open_study(config).metric_names == ["plateau_loss", "cost"]


def test_a_pruned_run_says_why_and_after_which_epoch(mixed_sweep) -> None:  # noqa: F811
    config, _, _ = mixed_sweep
    client, _, _, children = runs_of(config)
    pruned = children[2]
    assert pruned.info.status == "KILLED"
    epochs_scored = len(client.get_metric_history(pruned.info.run_id, "train_loss_epoch"))
    tags = pruned.data.tags
    assert tags["gemini_sweep.pruned_after_epoch"] == str(epochs_scored)
    reason = tags["gemini_sweep.prune_reason"]
    assert reason.startswith(f"cancelled after epoch {epochs_scored} (validation loss ")
    assert "median: the loss was worse than the median of earlier trials" in reason
    for number in (0, 1, 3):  # completed and failed runs carry no prune reason
        assert "gemini_sweep.prune_reason" not in children[number].data.tags
