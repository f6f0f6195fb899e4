"""The runner against an in-memory backend and a fake clock: no real waiting, no MLflow.

Real Optuna storage (SQLite next to the config) throughout; MLflow is covered in
test_tracking.py and the crash/resume path with real processes in test_crash_resume.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace

import optuna
import pytest

from gemini_backend import Capabilities
from gemini_backend import InvalidRequestError
from gemini_backend import JobRequest
from sweeps import DatasetError
from sweeps import TrackingError
from sweeps import load_config
from sweeps import trial_record as ts
from sweeps.engine.runner import open_study
from sweeps.engine.runner import prepare_data
from sweeps.engine.runner import run_sweep
from sweeps.tracking.tracker import NullTracker
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_dataset
from tests.sweeps_tests.fake_backend import FakeBackend

TrialState = optuna.trial.TrialState


def run(config, backend, clock, **kwargs):
    return run_sweep(config, backend=backend, tracker=NullTracker(), clock=clock,
                     sleep=clock.sleep, **kwargs)


def test_sweep_finishes_n_trials_each_submitted_once(make_config, clock) -> None:
    config = make_config(n_trials=5, concurrency=2)
    backend = FakeBackend(clock=clock)
    result = run(config, backend, clock)

    study = open_study(config)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert len(backend.submits) == len(set(backend.submits)) == 5
    for trial in trials:
        assert trial.user_attrs[ts.ATTR_KEY] in backend.submits
        assert trial.user_attrs[ts.ATTR_JOB_REF]["job_id"] == trial.user_attrs[ts.ATTR_KEY]
        assert trial.user_attrs["plateau_epoch"] >= 1
        assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert result.n_complete == 5 and not result.is_failed
    assert result.best_number == study.best_trial.number
    assert result.best_value == pytest.approx(study.best_value)
    assert result.best_params["learning_rate_multiplier"] == pytest.approx(
        study.best_params["learning_rate_multiplier"])


def test_never_more_jobs_in_flight_than_concurrency(make_config, clock) -> None:
    config = make_config(n_trials=7, concurrency=3)
    backend = FakeBackend(clock=clock)
    seen_running = []
    run(config, backend, clock,
        progress=lambda p: seen_running.append(len(p.jobs)))
    assert max(seen_running) == 3
    # Jobs overlap in time at most 3 at once, by their own start and end times.
    steps = backend.steps_per_epoch * 3
    spans = sorted((job.started_s, job.started_s + steps * backend.step_s)
                   for job in backend.jobs.values())
    for start, _ in spans:
        assert sum(s <= start < e for s, e in spans) <= 3


class SlowTracker(NullTracker):
    """Records take real time, as an MLflow server's would."""

    def record_trial(self, outcome):
        time.sleep(0.2)
        return None


def test_a_sequential_sweep_asks_each_trial_after_the_last_one_is_told(make_config, clock):
    # With concurrency 1 the sampler must see every result before it proposes the next
    # trial; asking while the last record was still being written made the proposals
    # depend on the writer thread's speed.
    config = make_config(n_trials=4, concurrency=1)
    backend = FakeBackend(clock=clock)
    run_sweep(config, backend=backend, tracker=SlowTracker(), clock=clock, sleep=clock.sleep)

    trials = open_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    for before, after in zip(trials, trials[1:], strict=False):
        assert after.datetime_start >= before.datetime_complete


def test_poll_interval_backs_off_while_a_long_job_shows_nothing_new(make_config, clock):
    config = make_config(n_trials=1, concurrency=1, search_space={"epochs": {"value": 1}})
    backend = FakeBackend(clock=clock, step_s=120.0, steps_per_epoch=2)
    run(config, backend, clock)
    # 240 s of job: polling every 1 s would be 240 polls; backing off x1.5 to the 8 s cap
    # (the fake's max_poll_interval_s) needs about 240 / 8 plus the ramp-up each step.
    assert backend.polls < 60
    assert backend.polls > 240 / 8


def test_transient_errors_are_retried_not_failed(make_config, clock) -> None:
    config = make_config(n_trials=3, concurrency=1)
    backend = FakeBackend(clock=clock, transient_polls=4, transient_submits=2)
    result = run(config, backend, clock)
    assert result.n_complete == 3 and result.n_failed == 0
    assert len(backend.submits) == len(set(backend.submits)) == 3


def test_a_create_left_unsettled_is_waited_for_not_counted_as_failed_submits(make_config,
                                                                             clock):
    """A backend that cannot yet tell whether a lost create made a job (a lagging list) says
    so for as long as its window lasts; the trial waits instead of failing after the usual
    submit attempts, which could leave that job paid for with no trial to collect it."""
    config = make_config(n_trials=1, concurrency=1)
    backend = FakeBackend(clock=clock, unsettled_submits=20)
    result = run(config, backend, clock)
    assert result.n_complete == 1 and result.n_failed == 0
    assert backend.submits == [open_study(config).get_trials()[0].user_attrs[ts.ATTR_KEY]]


def test_failed_jobs_fail_trials_and_stop_after_consecutive_limit(make_config, clock):
    config = make_config(n_trials=10, concurrency=1, max_consecutive_failures=2)
    message = "403 insufficient authentication scopes"
    backend = FakeBackend(clock=clock, fail_when=lambda request: message)
    result = run(config, backend, clock)
    trials = open_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all(t.user_attrs[ts.ATTR_FAIL_REASON] == message for t in trials)
    assert result.is_failed and result.n_failed == 2
    assert "2 trials failed in a row" in result.stop_reason and message in result.stop_reason


def test_a_success_resets_the_consecutive_failure_count(make_config, clock) -> None:
    config = make_config(n_trials=5, concurrency=1, max_consecutive_failures=2)
    numbers = iter(range(100))
    fails = {0, 2, 4}  # never two in a row

    def fail_some(request: JobRequest) -> str | None:
        return "bad luck" if next(numbers) in fails else None

    result = run(config, FakeBackend(clock=clock, fail_when=fail_some), clock)
    assert not result.is_failed
    assert (result.n_complete, result.n_failed) == (2, 3)


def _median_pruned_sweep(make_config):
    """Three trials at 4 epochs, the third clearly bad: the median pruner stops it."""
    config = make_config(n_trials=3, concurrency=1, search_space={
        "epochs": {"value": 4},
        "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
        pruner={"kind": "median", "n_startup_trials": 2, "n_warmup_steps": 2})
    study = open_study(config)
    for multiplier in (1.0, 1.1, 10.0):
        study.enqueue_trial({"learning_rate_multiplier": multiplier})
    return config


def test_median_pruner_cancels_a_clearly_bad_trial(make_config, clock) -> None:
    config = _median_pruned_sweep(make_config)
    backend = FakeBackend(clock=clock)
    result = run(config, backend, clock)

    bad = open_study(config).get_trials()[2]
    assert bad.state is TrialState.PRUNED
    assert backend.cancels == [bad.user_attrs[ts.ATTR_KEY]]
    assert max(bad.intermediate_values) == 2  # stopped after epoch 2, not run to 4
    assert result.n_pruned == 1 and result.n_complete == 2


def test_a_cancel_the_service_refuses_leaves_the_sweep_running(make_config, clock) -> None:
    """A service may refuse to cancel a job it considers ended (the Gemini API answers 400
    for an operation it no longer lists); the prune is still recorded and the sweep goes on
    instead of stopping on an uncaught error."""
    config = _median_pruned_sweep(make_config)
    backend = FakeBackend(clock=clock, cancel_refusal="the job lists no running operation")
    result = run(config, backend, clock)
    assert [t.state for t in open_study(config).get_trials()] == [
        TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert result.n_pruned == 1 and result.n_complete == 2


def test_budget_that_fits_k_trials_submits_exactly_k(make_config, clock) -> None:
    config = make_config(n_trials=10, concurrency=2)
    tokens_per_trial = prepare_data(config).tokens_per_epoch * 3
    config = make_config(n_trials=10, concurrency=2,
                         budget={"max_training_tokens": 3 * tokens_per_trial})
    backend = FakeBackend(clock=clock)
    result = run(config, backend, clock)
    assert len(backend.submits) == 3
    assert result.n_complete == 3 and len(open_study(config).get_trials()) == 3
    assert result.stop_reason.startswith("budget:")
    assert result.spent_tokens == 3 * tokens_per_trial and result.committed_tokens == 0


def test_resume_after_interrupt_submits_nothing_twice(make_config, clock) -> None:
    config = make_config(n_trials=6, concurrency=3)
    backend = FakeBackend(clock=clock)
    passes = []

    def interrupt_mid_sweep(progress) -> None:
        passes.append(progress)
        if progress.n_complete >= 2 and progress.jobs:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(config, backend, clock, progress=interrupt_mid_sweep)
    assert backend.cancels == []  # Ctrl-C never cancels jobs in flight
    running = open_study(config).get_trials(states=(TrialState.RUNNING,))
    assert running, "the interrupt should leave jobs in flight"

    assert_rerun_completes_without_resubmitting(config, backend, clock, n_trials=6)


def assert_rerun_completes_without_resubmitting(config, backend: FakeBackend, clock, *,
                                                n_trials: int) -> None:
    """The next run collects every job in flight: all trials complete, none paid twice."""
    result = run(config, backend, clock)
    trials = open_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n_trials
    assert len(backend.submits) == len(set(backend.submits)) == n_trials
    assert result.n_complete == n_trials


class UnopenableTracker(NullTracker):
    """MLflow that cannot be opened (a store refusing connections)."""

    def start_sweep(self, info) -> None:
        raise TrackingError("MLflow: opening the sweep's parent run failed: connection refused")


def run_with_unopenable_mlflow(config, backend: FakeBackend, clock) -> None:
    with pytest.raises(TrackingError, match="connection refused"):
        run_sweep(config, backend=backend, tracker=UnopenableTracker(), clock=clock,
                  sleep=clock.sleep)


def test_mlflow_that_cannot_be_opened_stops_the_sweep_and_a_rerun_collects_its_jobs(
        make_config, clock) -> None:
    """MLflow is opened beside the first submits: its failure stops the sweep with its error,
    the jobs submitted meanwhile are neither cancelled nor told, and the next run collects
    them without submitting anything twice."""
    config = make_config(n_trials=4, concurrency=2)
    backend = FakeBackend(clock=clock)
    run_with_unopenable_mlflow(config, backend, clock)
    assert backend.cancels == []
    left = open_study(config).get_trials()
    assert {t.state for t in left} <= {TrialState.RUNNING}  # nothing told without its run

    assert_rerun_completes_without_resubmitting(config, backend, clock, n_trials=4)


class PaidFakeBackend(FakeBackend):
    """A backend whose jobs cost money, as Vertex's and the Gemini API's do."""

    @property
    def capabilities(self) -> Capabilities:
        return replace(super().capabilities, bills_jobs=True)


def test_mlflow_that_cannot_be_opened_costs_nothing_on_a_backend_that_bills_jobs(
        make_config, clock) -> None:
    """On a paid backend MLflow is opened before any submit: a wrong tracking URL is bad
    input, refused before a job is paid for."""
    config = make_config(n_trials=4, concurrency=2)
    backend = PaidFakeBackend(clock=clock)
    run_with_unopenable_mlflow(config, backend, clock)
    assert backend.submits == []


def test_resume_finds_a_job_submitted_just_before_a_crash(make_config, clock) -> None:
    """Crash after submit, before the job ref was stored: the key finds the job again."""
    config = make_config(n_trials=2, concurrency=2)
    backend = FakeBackend(clock=clock)
    study = open_study(config)
    run(config, backend, clock)  # creates the sweep id; 2 trials done
    sweep_id = study.user_attrs[ts.STUDY_ATTR_SWEEP_ID]
    config = make_config(n_trials=4, concurrency=2)
    submitted = study.ask({"learning_rate_multiplier": optuna.distributions.FloatDistribution(
        0.1, 10.0, log=True)})
    key = ts.idempotency_key(config.name, sweep_id, submitted.number)
    submitted.set_user_attr(ts.ATTR_KEY, key)
    submitted.set_user_attr(ts.ATTR_KNOBS, {"epochs": 3, "learning_rate_multiplier": 1.0})
    backend.submit(_request(config, key))  # the submit that happened; its ref was lost
    never_submitted = study.ask()  # crashed before its key was written

    run(config, backend, clock)
    trials = open_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert backend.submits.count(key) == 1
    assert len(backend.submits) == len(set(backend.submits)) == 4
    assert trials[never_submitted.number].user_attrs[ts.ATTR_JOB_REF]


def _request(config, key: str) -> JobRequest:
    data = prepare_data(config)
    return JobRequest(train=data.train, epochs=3, learning_rate_multiplier=1.0,
                      base_model="", display_name="x", idempotency_key=key)


def test_bad_dataset_is_rejected_before_any_submit(tmp_path, make_config, clock) -> None:
    config = make_config()
    write_dataset(tmp_path, n_examples=5)  # below the 20-example minimum
    backend = FakeBackend(clock=clock)
    with pytest.raises(DatasetError, match="data.jsonl"):
        run(config, backend, clock)
    assert backend.submits == []


def test_knob_the_backend_cannot_take_is_rejected_before_any_submit(make_config, clock):
    config = make_config(search_space={"epochs": {"value": 3}, "adapter_size": {
        "choices": [1, 4]}})
    backend = FakeBackend(clock=clock)
    with pytest.raises(InvalidRequestError, match="adapter_size"):
        run(config, backend, clock)
    assert backend.submits == []
    assert not (config.state_dir / "optuna.db").exists() or not open_study(config).trials


def test_knobs_and_keys_are_stored_for_export(make_config, clock) -> None:
    config = make_config(n_trials=1, concurrency=1)
    run(config, FakeBackend(clock=clock), clock)
    trial = open_study(config).get_trials()[0]
    knobs = trial.user_attrs[ts.ATTR_KNOBS]
    assert knobs["epochs"] == 3  # a fixed knob is stored though Optuna never searched it
    assert knobs["learning_rate_multiplier"] == trial.params["learning_rate_multiplier"]
    json.dumps(trial.user_attrs)  # everything stored is plain JSON


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from sweeps.cli import app
    return lambda *args: CliRunner().invoke(app, ["run", *map(str, args)])


def test_cli_run_prints_the_best_trial_and_how_to_open_it(tmp_path, cli, seed_mlflow) -> None:
    config_path = write_config(tmp_path, n_trials=3, concurrency=2)
    seed_mlflow(load_config(config_path))
    result = cli(config_path, "-q")
    assert result.exit_code == 0, result.output
    study = open_study(load_config(config_path))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert f"best: trial {study.best_trial.number}" in result.output
    assert f"gemini-sweep ui {config_path}" in result.output
    assert "mlflow ui --backend-store-uri sqlite:///" in result.output


def test_cli_run_exits_1_when_the_sweep_stops_on_failures(tmp_path, cli, seed_mlflow) -> None:
    config_path = write_config(tmp_path, n_trials=5, concurrency=1, max_consecutive_failures=2,
                               backend={"kind": FakeBackend.kind, "fail_message": "quota"})
    seed_mlflow(load_config(config_path))
    result = cli(config_path, "-q")
    assert result.exit_code == 1, result.output
    assert "2 trials failed in a row" in result.output and "quota" in result.output


def test_cli_run_exits_2_on_a_bad_config_naming_field_and_line(tmp_path, cli) -> None:
    config_path = write_config(tmp_path, n_trials=0)
    result = cli(config_path)
    assert result.exit_code == 2
    assert "n_trials (line" in result.output
    assert not (tmp_path / ".gemini_sweep" / "optuna.db").exists()


def test_cli_run_exits_130_on_ctrl_c_saying_jobs_keep_running(tmp_path, cli, monkeypatch):
    from sweeps.cli import run_cmd

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_cmd, "run_sweep", interrupted)
    result = cli(write_config(tmp_path))
    assert result.exit_code == 130
    assert "keep running" in result.output


def test_grid_sweep_stops_at_the_grid_size_instead_of_paying_for_repeats(make_config, clock):
    config = make_config(n_trials=10, concurrency=2, sampler={"kind": "grid", "seed": 1},
                         search_space={"epochs": {"value": 3},
                                       "learning_rate_multiplier": {"choices": [0.5, 1.0, 2.0]}})
    backend = FakeBackend(clock=clock)
    result = run(config, backend, clock)
    multipliers = [t.params["learning_rate_multiplier"] for t in open_study(config).trials]
    assert sorted(multipliers) == [0.5, 1.0, 2.0]
    assert len(backend.submits) == 3 and result.n_complete == 3
