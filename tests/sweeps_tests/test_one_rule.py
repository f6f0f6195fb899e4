"""Each rule of the sweep has one home: the loop, the record, the summary and the results
read the same function, so they cannot disagree."""

from __future__ import annotations

import dataclasses
import math

import optuna
import pytest

from gemini_backend import LossSnapshot
from sweeps.engine.runner import open_study
from sweeps.engine.runner import run_sweep
from sweeps.plateau.analysis import ended_epoch_losses
from sweeps.plateau.analysis import epoch_means
from sweeps.tracking.tracker import NullTracker
from tests._warm_runs import run_warm
from tests.sweeps_tests.fake_backend import FakeBackend

TrialState = optuna.trial.TrialState


class NanStepBackend(FakeBackend):
    """One step of every job reports a NaN loss (and is re-polled twice), as a service that
    logs a diverged micro-batch does; every other step is finite."""

    def _snapshots(self, request, count):
        snaps = list(super()._snapshots(request, count))
        if len(snaps) >= 2:
            snaps[1] = dataclasses.replace(snaps[1], loss=math.nan)
            snaps.insert(0, snaps[0])  # the same step reported twice
        return tuple(snaps)


class RecordingTracker(NullTracker):
    def __init__(self):
        self.outcomes = []

    def record_trial(self, outcome):
        self.outcomes.append(outcome)
        return None


def test_one_nan_step_is_seen_the_same_way_by_pruner_patience_and_curve(make_config, clock):
    """A NaN step among finite ones: the pruner is reported the recorded curve's numbers
    and prunes nothing (the curve is clean); patience reads the same numbers."""
    config = make_config(n_trials=3, concurrency=3,
                         search_space={"epochs": {"value": 3},
                                       "learning_rate_multiplier": {"low": 0.9, "high": 1.1}},
                         dataset={"path": "data.jsonl", "validation_split": 0.0},
                         pruner={"kind": "behind_leader", "ratio": 1.3, "min_epochs": 1})
    backend = NanStepBackend(clock=clock)
    tracker = RecordingTracker()
    run_sweep(config, backend=backend, tracker=tracker, clock=clock, sleep=clock.sleep)

    trials = open_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    by_number = {o.number: o for o in tracker.outcomes}
    for trial in trials:
        reported = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
        curve = by_number[trial.number].train_epoch_loss
        assert all(math.isfinite(v) for v in curve)
        assert reported == pytest.approx(list(curve))


def test_ended_epoch_losses_are_the_recorded_epoch_means():
    snaps = [LossSnapshot(step=1, epoch=1, loss=2.0), LossSnapshot(step=1, epoch=1, loss=2.0),
             LossSnapshot(step=2, epoch=1, loss=math.nan), LossSnapshot(step=3, epoch=1, loss=1.0),
             LossSnapshot(step=4, epoch=2, loss=0.8), LossSnapshot(step=5, epoch=2, loss=0.6),
             LossSnapshot(step=6, epoch=3, loss=0.5)]
    seen = ended_epoch_losses(snaps, is_terminal=False, use_eval=False)
    train, _ = epoch_means(snaps)
    assert seen == {1: pytest.approx(1.5), 2: pytest.approx(0.7)}
    assert [seen[1], seen[2]] == train[:2]
    assert ended_epoch_losses(snaps, is_terminal=True, use_eval=False)[3] == train[2]


class Killed(BaseException):
    """The process dies here (not an Exception: nothing in the sweep may catch it)."""


class DiesAtCancel(FakeBackend):
    """The process is killed at the first cancel: before the call reaches the service, or
    right after it landed (before the trial was recorded)."""

    def __init__(self, *args, landed: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.landed = landed
        self.armed = True

    def cancel(self, ref):
        if self.armed and self.landed:
            super().cancel(ref)
        if self.armed:
            self.armed = False
            raise Killed
        super().cancel(ref)


@pytest.mark.parametrize("landed", [True, False], ids=["after-cancel", "before-cancel"])
def test_a_killed_and_resumed_sweep_keeps_the_reason_a_trial_was_cancelled_with(
        make_config, clock, landed):
    """The pruner decided at epoch 2 and the process died; the resumed sweep (whose pruner
    would not prune today: it was switched off) reads the stored reason: PRUNED at epoch 2,
    never FAIL "cancelled outside the sweep" and never run on to the end."""
    space = {"epochs": {"value": 4},
             "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}}
    config = make_config(n_trials=3, concurrency=1, search_space=space,
                         pruner={"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 2})
    study = open_study(config)
    for multiplier in (1.0, 1.1, 10.0):
        study.enqueue_trial({"learning_rate_multiplier": multiplier})
    backend = DiesAtCancel(clock=clock, landed=landed)
    with pytest.raises(Killed):
        run_sweep(config, backend=backend, tracker=NullTracker(), clock=clock,
                  sleep=clock.sleep)
    bad = open_study(config).get_trials()[2]
    assert bad.state is TrialState.RUNNING
    assert bad.user_attrs["cancel_reason"]["kind"] == "pruned"

    resumed = make_config(n_trials=3, concurrency=1, search_space=space)  # no pruner now
    tracker = RecordingTracker()
    result = run_sweep(resumed, backend=backend, tracker=tracker, clock=clock,
                       sleep=clock.sleep)
    bad = open_study(config).get_trials()[2]
    assert bad.state is TrialState.PRUNED
    assert bad.user_attrs["cancel_reason"] == {"kind": "pruned", "epoch": 2,
                                               "message": "pruned after epoch 2"}
    assert backend.jobs[bad.user_attrs["idempotency_key"]].cancelled_s is not None
    (outcome,) = tracker.outcomes
    assert len(outcome.train_epoch_loss) == 2  # scored on the epochs that decided it
    assert result.n_pruned == 1 and result.n_complete == 2


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_service_exits_with_the_outage_code_not_bad_input(
        tmp_path, monkeypatch):
    """Nothing listens at the service's address: after its retries, `run` exits 3 (try
    again later), not 2 (fix your config), and says which call could not connect."""
    from typer.testing import CliRunner

    from sweeps.cli import app
    from sweeps.cli._common import EXIT_UNAVAILABLE
    from tests.sweeps_tests.conftest import write_config

    monkeypatch.setenv("GEMINI_API_KEY", "test-key-not-secret")
    config_path = write_config(tmp_path, backend={
        "kind": "gemini-api", "base_url": f"http://127.0.0.1:{_closed_port()}",
        "max_retries": 0, "timeout_s": 2})
    result = CliRunner().invoke(app, ["run", str(config_path), "-q"])
    assert result.exit_code == EXIT_UNAVAILABLE == 3, result.output
    assert "connection failed" in result.output


def test_help_documents_the_outage_exit_code():
    from typer.testing import CliRunner

    from sweeps.cli import app

    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert "3 a service is unreachable or failing" in result.output


class BilledBackend(FakeBackend):
    """Reports what each job was billed: the first job more than the others."""

    def _status(self, job):
        status = super()._status(job)
        if status.state.is_terminal():
            first = min(self.jobs.values(), key=lambda j: j.started_s) is job
            status = dataclasses.replace(status, training_tokens=9000 if first else 5000)
        return status


def test_summary_and_status_name_the_same_best_trial_on_a_tie(make_config, clock):
    """Two trials with the same objective value: the one that cost fewer tokens is best, in
    the run summary as in status and export (the summary took the first one)."""
    from sweeps.results.sweep_results import config_results

    config = make_config(n_trials=2, concurrency=1)
    study = open_study(config)
    for _ in range(2):
        study.enqueue_trial({"learning_rate_multiplier": 1.0})
    result = run_sweep(config, backend=BilledBackend(clock=clock), tracker=NullTracker(),
                       clock=clock, sleep=clock.sleep)
    results = config_results(config)
    values = [t.value for t in results.trials]
    assert values[0] == values[1]
    assert results.best.number == 1  # fewer tokens
    assert result.best_number == results.best.number


def test_summary_status_mlflow_and_export_recommend_the_same_epochs(
        make_config, clock, seed_mlflow):
    """The trial ran 8 epochs and its curve plateaus earlier: every place names the
    plateau's epochs to tune with, and beside it the 8 the trial ran."""
    import json

    from mlflow import MlflowClient
    from typer.testing import CliRunner

    from sweeps.cli import app
    from sweeps.results.export import best_config
    from sweeps.results.sweep_results import config_results
    from sweeps.tracking.tracker import MlflowTracker

    config = make_config(n_trials=2, concurrency=1,
                         search_space={"epochs": {"value": 8},
                                       "learning_rate_multiplier": {"low": 0.5, "high": 2.0}})
    seed_mlflow(config)
    tracker = MlflowTracker(config.tracking_url)
    result = run_sweep(config, backend=FakeBackend(clock=clock), tracker=tracker,
                       clock=clock, sleep=clock.sleep)
    recommended = result.best_params["epochs"]
    assert recommended < 8 and result.best_params_run["epochs"] == 8

    assert best_config(config, config_results(config)).knobs["epochs"] == recommended
    client = MlflowClient(tracking_uri=config.tracking_url)
    tags = client.get_run(tracker.parent_run_id).data.tags
    assert json.loads(tags["gemini_sweep.best_params"])["epochs"] == recommended
    assert json.loads(tags["gemini_sweep.best_params_run"])["epochs"] == 8
    status = CliRunner().invoke(app, ["status", str(config.config_dir / "sweep.yaml")],
                                env={"COLUMNS": "300"})
    assert f"tune with: epochs={recommended}" in status.output, status.output
    assert "the trial ran 8 epochs" in status.output
    as_json = CliRunner().invoke(app, ["status", str(config.config_dir / "sweep.yaml"),
                                       "--json"])
    assert json.loads(as_json.output)["recommended_knobs"]["epochs"] == recommended


def test_quick_start_with_a_budget_spends_at_most_the_budget_plus_one_epoch(tmp_path):
    """The README's quick start (real local training) with budget max_training_tokens
    60000: the budget commits each job at the tokens the backend trains on (3,651 an epoch,
    where the dataset's estimate says 964), so it ends within one epoch of one job."""
    import shutil

    import yaml

    from gemini_backend import create_backend
    from sweeps import load_config
    from sweeps.engine.runner import prepare_data
    from sweeps.results.sweep_results import config_results
    from tests.conftest import REPO_ROOT

    shutil.copytree(REPO_ROOT / "configs" / "data", tmp_path / "data")
    config = yaml.safe_load((REPO_ROOT / "configs" / "quickstart.yaml").read_text())
    config["budget"] = {"max_training_tokens": 60000}
    (tmp_path / "quickstart.yaml").write_text(yaml.safe_dump(config))
    config = load_config(tmp_path / "quickstart.yaml")
    backend = create_backend(config.backend, base_dir=config.config_dir)
    one_epoch = backend.training_tokens_per_epoch(prepare_data(config).train)
    assert one_epoch > 3 * prepare_data(config).tokens_per_epoch  # the estimate undercounts

    result = run_sweep(config, backend=backend, tracker=NullTracker())
    billed = sum(t.training_tokens or 0 for t in config_results(config).trials)
    assert result.stop_reason.startswith("budget:")
    assert billed == result.spent_tokens
    assert billed <= 60000 + one_epoch


def test_a_trial_whose_evaluation_the_budget_cannot_pay_never_starts(tmp_path, clock):
    """The budget pays one job's training but not its billed evaluation too: the trial is
    not started (its evaluation would have pushed the spend over the limit)."""
    from sweeps import load_config
    from sweeps.data.dataset import estimate_tokens
    from sweeps.engine.runner import prepare_data
    from tests.sweeps_tests.test_evaluation import AnsweringBackend
    from tests.sweeps_tests.test_evaluation import _eval_config

    path = _eval_config(tmp_path, n_trials=1, concurrency=1)
    config = load_config(path)
    data = prepare_data(config)
    backend = AnsweringBackend(clock=clock)
    training = data.tokens_per_epoch * 3
    evaluation = sum(estimate_tokens(e.text_input or "") + estimate_tokens(e.output)
                     for e in data.validation[:config.evaluation.max_examples])
    assert evaluation > 0
    limit = training + evaluation // 2
    path = _eval_config(tmp_path, n_trials=1, concurrency=1,
                        budget={"max_training_tokens": limit})
    result = run_sweep(load_config(path), backend=backend, tracker=NullTracker(),
                       clock=clock, sleep=clock.sleep)
    assert backend.submits == []
    assert result.spent_tokens == 0 and result.stop_reason.startswith("budget:")


def test_retry_call_stops_at_its_overall_deadline_on_the_injected_sleep():
    from gemini_backend import Backoff
    from gemini_backend import TransientError
    from gemini_backend import retry_call
    from tests.sweeps_tests.fake_backend import FakeClock

    clock = FakeClock()
    calls = []

    def always_down(attempt):
        calls.append(clock())
        raise TransientError("503 service unavailable", retry_after_s=4.0)

    backoff = Backoff(initial_s=1.0, maximum_s=8.0, max_attempts=100, deadline_s=20.0)
    with pytest.raises(TransientError):
        retry_call(always_down, what="list jobs", backoff=backoff, sleep=clock.sleep,
                   clock=clock)
    assert 1 < len(calls) < 100  # stopped by the deadline, not by the attempts
    assert clock.slept_s <= 20.0
    assert all(b - a >= 4.0 for a, b in zip(calls, calls[1:], strict=False))  # Retry-After


def test_a_poll_that_keeps_failing_stops_the_sweep_as_an_outage_leaving_jobs_running(
        make_config, clock):
    """Retryable poll errors for half an hour: the sweep stops with ServiceUnavailable (exit
    3) instead of polling forever; the job is not cancelled and the trial stays RUNNING for
    the next run to collect."""
    from sweeps import ServiceUnavailable

    config = make_config(n_trials=1, concurrency=1)
    backend = FakeBackend(clock=clock, transient_polls=10**9)

    def give_up_after_a_day(progress):
        assert clock() < 1000.0 + 86400, "the sweep polled a dead service for a day"

    with pytest.raises(ServiceUnavailable, match="has not answered a poll"):
        run_sweep(config, backend=backend, tracker=NullTracker(), clock=clock,
                  sleep=clock.sleep, progress=give_up_after_a_day)
    assert backend.cancels == []
    (trial,) = open_study(config).get_trials()
    assert trial.state is TrialState.RUNNING


def test_validate_measures_the_file_the_vertex_backend_uploads(tmp_path):
    """The size `validate` checks against Vertex's file limit is the size of the JSONL the
    backend uploads, byte for byte (it re-encoded the examples its own way). Vertex refuses
    output-only examples, so every example has an input here."""
    import json as json_module

    from gemini_backend import JobRequest
    from gemini_backend import config_model
    from gemini_backend import create_backend
    from sweeps.data.dataset import validate_dataset

    rows = [{"text_input": f"question {i} é", "output": f"answer number {i} ü"}
            for i in range(30)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json_module.dumps(r) + "\n" for r in rows), encoding="utf-8")
    report = validate_dataset(path, backend="vertex")
    assert not report.errors, report.errors

    settings = config_model("vertex").model_validate(
        {"kind": "vertex", "project": "p", "bucket": "bkt"})
    backend = create_backend(settings, base_dir=tmp_path)
    call = backend.create_call(JobRequest(
        train=report.dataset.prepared(), epochs=1, learning_rate_multiplier=1.0,
        base_model="", display_name="t", idempotency_key="k"))
    (uploaded,) = call.files.values()
    assert report.stats.jsonl_bytes == len(uploaded)


@pytest.mark.parametrize("poll_interval_s", [1.0, 12.0], ids=["every-step", "3-epochs-a-poll"])
def test_a_prune_is_decided_at_the_epoch_boundary_however_late_the_poll(
        make_config, clock, poll_interval_s):
    """Whether polls see each epoch end or three at once, the pruner is asked at every epoch
    boundary and the trial is pruned at the epoch that decided it (2), not at the last epoch
    the poll happened to reveal."""
    config = make_config(n_trials=3, concurrency=1, poll_interval_s=poll_interval_s,
                         dataset={"path": "data.jsonl", "validation_split": 0.25},
                         search_space={"epochs": {"value": 6}, "learning_rate_multiplier": {
                             "low": 0.1, "high": 10.0, "log": True}},
                         pruner={"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 2})
    study = open_study(config)
    for multiplier in (1.0, 1.1, 10.0):
        study.enqueue_trial({"learning_rate_multiplier": multiplier})
    run_sweep(config, backend=FakeBackend(clock=clock), tracker=NullTracker(), clock=clock,
              sleep=clock.sleep)
    bad = open_study(config).get_trials()[2]
    assert bad.state is TrialState.PRUNED
    assert bad.user_attrs["cancel_reason"]["epoch"] == 2
    assert max(bad.intermediate_values) == 2


def test_a_sigkilled_sweep_resumes_a_stop_with_the_reason_stored_before_the_cancel(tmp_path):
    """SIGKILL right after the stop at the plateau was written, before the cancel call: the
    rerun (whose config has no patience now, so nothing would stop the job today) reads the
    stored reason, cancels the job and completes the trial on the epochs that decided it."""
    import os

    from gemini_backend.replay.backend import ReplayBackend
    from tests.sweeps_tests.test_cost_policies import _patience_config

    space = {"learning_rate_multiplier": {"value": 1.0}}
    config = _patience_config(tmp_path, n_trials=1, sampler={"kind": "random", "seed": 0},
                              search_space={"epochs": {"mode": "from_curve", "max": 8,
                                                       "patience": 2}, **space})
    argv = ["run", str(tmp_path / "sweep.yaml"), "-q"]
    crashed = run_warm(argv, cwd=tmp_path, timeout_s=300,
                       env={**os.environ, "GEMINI_SWEEP_CRASH_AT": "after_cancel_reason:1"})
    assert crashed.returncode == -9, crashed.stdout[-2000:]
    (trial,) = open_study(config).trials
    assert trial.state is TrialState.RUNNING

    _patience_config(tmp_path, n_trials=1, sampler={"kind": "random", "seed": 0},
                     search_space={"epochs": {"mode": "from_curve", "max": 8}, **space})
    resumed = run_warm(argv, cwd=tmp_path, timeout_s=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:]
    (trial,) = open_study(config).trials
    assert trial.state is TrialState.COMPLETE
    assert trial.user_attrs["stopped_after_epoch"] == 5
    assert trial.user_attrs["cancel_reason"]["kind"] == "stopped"
    jobs = ReplayBackend.submission_log(tmp_path / ".gemini_sweep" / "replay_jobs")
    assert len(jobs) == 1


def test_a_job_cancelled_by_another_process_with_a_stored_reason_fails_with_that_reason(
        make_config, clock):
    """The contract for a user's cancel from another process: store the reason on the
    trial, then cancel the job; the running sweep records the trial with that reason."""
    from sweeps import trial_record as ts

    config = make_config(n_trials=1, concurrency=1)
    backend = FakeBackend(clock=clock)

    def cancel_from_outside(progress):
        if progress.jobs and progress.jobs[0].epoch >= 2 and not backend.cancels:
            trial = open_study(config).get_trials()[0]
            storage = open_study(config)._storage
            reason = ts.CancelReason(ts.CANCEL_USER, None, "cancelled by the user")
            storage.set_trial_user_attr(trial._trial_id, ts.ATTR_CANCEL_REASON,
                                        reason.to_dict())
            backend.cancel(backend.find(trial.user_attrs[ts.ATTR_KEY]))

    run_sweep(config, backend=backend, tracker=NullTracker(), clock=clock, sleep=clock.sleep,
              progress=cancel_from_outside)
    (trial,) = open_study(config).get_trials()
    assert trial.state is TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "cancelled by the user"
