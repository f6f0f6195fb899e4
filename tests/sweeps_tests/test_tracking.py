"""What a sweep leaves in a real MLflow store (SQLite): runs, states, curves, artifacts."""

from __future__ import annotations

import math

import mlflow
import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from gemini_backend import JobRef
from gemini_backend import LossSnapshot
from sweeps import TrackingError
from sweeps import trial_record as ts
from sweeps.engine.runner import open_study
from sweeps.engine.runner import run_sweep
from sweeps.tracking.tracker import MlflowTracker
from sweeps.tracking.tracker import SweepInfo
from sweeps.trial_record import TrialOutcome
from tests.sweeps_tests.fake_backend import FakeBackend

TrialState = optuna.trial.TrialState
FAIL_MESSAGE = "429 RESOURCE_EXHAUSTED: tuning quota exceeded"


def runs_of(config):
    client = MlflowClient(tracking_uri=config.tracking_url)
    experiment = client.get_experiment_by_name(config.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("gemini_sweep.role") == "sweep"]
    children = {int(r.data.tags["gemini_sweep.trial"]): r for r in runs
                if r.data.tags.get("gemini_sweep.role") == "trial"}
    assert len(runs) == len(parents) + len(children), "a run is missing its role tag"
    return client, experiment, parents, children


def steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


@pytest.fixture
def mixed_sweep(make_config, seed_mlflow, clock):
    """Four trials, one per outcome: complete, complete, pruned, failed."""
    config = make_config(
        n_trials=4, concurrency=1, dataset={"path": "data.jsonl", "validation_split": 0.25},
        search_space={"epochs": {"value": 4},
                      "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
        pruner={"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 2})
    seed_mlflow(config)
    study = open_study(config)
    for multiplier in (1.0, 1.1, 10.0, 0.9):
        study.enqueue_trial({"learning_rate_multiplier": multiplier})

    def fail_one(request):
        return FAIL_MESSAGE if request.learning_rate_multiplier == 0.9 else None

    backend = FakeBackend(clock=clock, fail_when=fail_one)
    tracking_uri_before = mlflow.get_tracking_uri()
    result = run_sweep(config, backend=backend, clock=clock, sleep=clock.sleep)
    assert mlflow.get_tracking_uri() == tracking_uri_before  # no global MLflow state
    return config, result, backend


def test_one_parent_and_one_child_per_trial_with_honest_states(mixed_sweep) -> None:
    config, result, _ = mixed_sweep
    client, experiment, parents, children = runs_of(config)
    assert experiment.artifact_location.startswith(
        (config.state_dir / "mlartifacts").resolve().as_uri())
    assert len(parents) == 1 and sorted(children) == [0, 1, 2, 3]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert {run.data.tags["mlflow.parentRunId"] for run in children.values()} == {
        parent.info.run_id}
    assert [children[n].info.status for n in range(4)] == [
        "FINISHED", "FINISHED", "KILLED", "FAILED"]
    trials = open_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE,
                                         TrialState.PRUNED, TrialState.FAIL]
    for trial in trials:
        assert trial.user_attrs[ts.ATTR_RUN_ID] == children[trial.number].info.run_id
    failed = children[3]
    assert failed.data.tags["gemini_sweep.fail_reason"] == FAIL_MESSAGE
    assert math.isnan(failed.data.metrics["objective"])
    assert parent.data.tags["gemini_sweep.best_trial"] == str(result.best_number)
    assert result.best_number == open_study(config).best_trial.number


def test_child_run_holds_every_curve_point_once_and_the_artifacts(mixed_sweep) -> None:
    config, _, backend = mixed_sweep
    client, _, parents, children = runs_of(config)
    run = children[0]
    run_id = run.info.run_id
    assert run.data.params["learning_rate_multiplier"] == "1.0"
    assert run.data.params["epochs"] == "4"
    assert run.data.params["backend"] == config.backend.kind
    assert len(run.data.params["dataset_hash"]) == 64
    assert steps(client, run_id, "train_loss") == list(range(1, 17))  # 4 epochs x 4 steps
    assert steps(client, run_id, "train_loss_epoch") == [1, 2, 3, 4]
    assert steps(client, run_id, "eval_loss_epoch") == [1, 2, 3, 4]
    trial = open_study(config).get_trials()[0]
    assert run.data.metrics["plateau_epoch"] == trial.user_attrs["plateau_epoch"]
    assert run.data.metrics["objective"] == pytest.approx(trial.value)
    for key in ("loss_at_plateau", "recommended_epochs", "final_loss", "training_tokens"):
        assert key in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"loss_curve.png", "loss_curve.json"} <= artifacts
    pruned_steps = steps(client, children[2].info.run_id, "train_loss")
    assert pruned_steps == list(range(1, len(pruned_steps) + 1)) and len(pruned_steps) < 16
    plots = {a.path for a in client.list_artifacts(parents[0].info.run_id, "sweep_plots")}
    assert {"sweep_plots/optimization_history.png", "sweep_plots/loss_curves.png"} <= plots


def _outcome(number: int, n_steps: int) -> TrialOutcome:
    snapshots = tuple(LossSnapshot(step=s, epoch=(s - 1) // 5 + 1, loss=1.0 / s)
                      for s in range(1, n_steps + 1))
    return TrialOutcome(number=number, state=TrialState.COMPLETE,
                        knobs={"epochs": 2, "learning_rate_multiplier": 1.0}, key=f"k{number}",
                        job_ref=JobRef("fake", f"job{number}", f"k{number}"),
                        snapshots=snapshots, train_epoch_loss=(0.5, 0.2), value=0.2,
                        plateau_epoch=2, loss_at_plateau=0.2)


def test_a_repeated_or_half_done_record_writes_only_the_missing_points(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    tracker.start_sweep(SweepInfo(name="s", sweep_id="abc", backend="fake", base_model="m",
                                  dataset_hash="h"))
    run_id = tracker.trial_started(0, {"epochs": 2}, "k0", None)
    client = MlflowClient(tracking_uri=uri)
    # A crash in the middle of writing: 4 of the 10 points are already there.
    client.log_batch(run_id, metrics=[Metric("train_loss", 1.0 / s, 0, s) for s in (1, 2, 3, 4)])
    assert tracker.record_trial(_outcome(0, 10)) == run_id
    tracker.record_trial(_outcome(0, 10))  # and recording again changes nothing
    assert steps(client, run_id, "train_loss") == list(range(1, 11))
    assert steps(client, run_id, "objective") == [0]
    assert client.get_run(run_id).info.status == "FINISHED"
    again = MlflowTracker(uri)  # a new process finds the same runs by their tags
    again.start_sweep(SweepInfo(name="s", sweep_id="abc", backend="fake", base_model="m",
                                dataset_hash="h"))
    assert again.parent_run_id == tracker.parent_run_id
    assert again.record_trial(_outcome(0, 10)) == run_id


def test_resumed_sweep_reuses_its_parent_run(make_config, seed_mlflow, clock) -> None:
    config = make_config(n_trials=2, concurrency=2)
    seed_mlflow(config)
    backend = FakeBackend(clock=clock)
    run_sweep(config, backend=backend, clock=clock, sleep=clock.sleep)
    config = make_config(n_trials=3, concurrency=2)
    run_sweep(config, backend=backend, clock=clock, sleep=clock.sleep)
    _, _, parents, children = runs_of(config)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(children) == [0, 1, 2]


class FlakyTracker(MlflowTracker):
    """Fails to record trial 1 every time, as a tracking server that is down would."""

    def record_trial(self, outcome: TrialOutcome) -> str:
        if outcome.number == 1:
            raise TrackingError("MLflow: recording trial 1 failed after 3 attempts: 503")
        return super().record_trial(outcome)


def test_unrecorded_trial_is_told_only_after_a_later_run_records_it(
        make_config, seed_mlflow, clock) -> None:
    config = make_config(n_trials=3, concurrency=1)
    seed_mlflow(config)
    backend = FakeBackend(clock=clock)
    result = run_sweep(config, backend=backend, tracker=FlakyTracker(config.tracking_url),
                       clock=clock, sleep=clock.sleep)
    assert result.n_unrecorded == 1 and not result.is_failed
    states = [t.state for t in open_study(config).get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.RUNNING, TrialState.COMPLETE]

    run_sweep(config, backend=backend, clock=clock, sleep=clock.sleep)
    states = [t.state for t in open_study(config).get_trials()]
    assert states == [TrialState.COMPLETE] * 3
    assert len(backend.submits) == len(set(backend.submits)) == 3
    _, _, _, children = runs_of(config)
    assert [children[n].info.status for n in range(3)] == ["FINISHED"] * 3
