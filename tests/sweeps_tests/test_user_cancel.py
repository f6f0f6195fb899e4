"""`gemini-sweep cancel`: a user stops a sweep's spending, or cancels some of its trials.

Real processes as a user runs them: `gemini-sweep run` in the background, `gemini-sweep
cancel` beside it; the real replay and local backends and the HTTP fakes of the Gemini API and
Vertex on 127.0.0.1; real Optuna (SQLite, and PostgreSQL with two workers) and MLflow stores.
A cancelled trial must end FAIL "cancelled by the user" with its MLflow run KILLED and the
points it reported kept, and its job must never be created again.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from sweeps import load_config
from sweeps import trial_record as ts
from sweeps._user_cancel import USER_CANCEL_MESSAGE
from sweeps.results.sweep_results import load_study
from tests._warm_runs import WarmRun
from tests._warm_runs import start_warm
from tests.reliability_tests._sweep_procs import backend_section
from tests.reliability_tests._sweep_procs import created_jobs
from tests.reliability_tests._sweep_procs import fake_service
from tests.reliability_tests._sweep_procs import sweep_env
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_curves
from tests.sweeps_tests.test_distributed import pg_databases  # noqa: F401  (fixture)

TrialState = optuna.trial.TrialState
CLI = [sys.executable, "-c", "from sweeps.cli import main; main()"]
SEARCH_SPACE = {"epochs": {"value": 4},
                "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}}


_started: list[WarmRun] = []


@pytest.fixture(autouse=True)
def _stop_leftover_runs():
    """A failed test must not leave a sweep running (and polling) behind it."""
    yield
    while _started:
        process = _started.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def start_run(config_path: Path, *extra: str) -> WarmRun:
    process = start_warm(["run", str(config_path), "-q", *extra], cwd=config_path.parent,
                         env=sweep_env(), text=True)
    _started.append(process)
    return process


def cancel(config_path: Path, *args: str, answer: str | None = None
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "cancel", str(config_path), *args], cwd=config_path.parent,
                          env=sweep_env(), input=answer, capture_output=True, text=True,
                          timeout=120, check=False)


def trials_of(config, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    return load_study(study_name=config.name,
                      storage=storage or config.storage_url).get_trials()


def wait_for_jobs(config, process: WarmRun, n: int, *,
                  storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """Wait until ``n`` RUNNING trials have a job reference stored and one reported a point."""
    deadline = time.monotonic() + 180
    while True:
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the jobs never started"
        try:
            running = [t for t in trials_of(config, storage) if t.state is TrialState.RUNNING
                       and ts.ATTR_JOB_REF in t.user_attrs]
        except Exception:  # noqa: BLE001  the study is being created
            running = []
        if len(running) >= n:
            return running
        time.sleep(0.1)


def assert_cancelled(config, numbers: set[int], storage: str | None = None) -> None:
    """FAIL with the user's reason, the MLflow run KILLED, and its job created once."""
    trials = {t.number: t for t in trials_of(config, storage)}
    for number in numbers:
        trial = trials[number]
        assert trial.state is TrialState.FAIL, (number, trial.state)
        assert trial.user_attrs[ts.ATTR_FAIL_REASON] == USER_CANCEL_MESSAGE
    client = MlflowClient(tracking_uri=config.tracking_url)
    experiment = client.get_experiment_by_name(config.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    children = {int(r.data.tags["gemini_sweep.trial"]): r for r in runs
                if r.data.tags.get("gemini_sweep.role") == "trial"}
    for number in numbers:
        assert children[number].info.status == "KILLED"
        assert children[number].data.tags["gemini_sweep.fail_reason"] == USER_CANCEL_MESSAGE


def test_cancel_all_stops_a_running_replay_sweep_and_a_later_run_continues(
        tmp_path, seed_mlflow) -> None:
    write_curves(tmp_path, duration_s=40.0)  # 40 s jobs: still running when cancelled
    config_path = write_config(tmp_path, n_trials=5, concurrency=2, search_space=SEARCH_SPACE,
                               backend={"kind": "replay", "curves": "curves.json",
                                        "time_scale": 1.0})
    config = load_config(config_path)
    seed_mlflow(config)
    run = start_run(config_path)
    in_flight = wait_for_jobs(config, run, 2)
    time.sleep(3.0)  # the jobs report their first points (a point every 2 s)

    asked = cancel(config_path, "--all", answer="n\n")  # asks first; "no" cancels nothing
    assert asked.returncode == 1, asked.stdout + asked.stderr
    assert "nothing cancelled" in asked.stdout
    for trial in in_flight:
        assert f"cancel trial {trial.number}: job" in asked.stdout
    assert {t.state for t in trials_of(config)} == {TrialState.RUNNING}

    done = cancel(config_path, "--all", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    output = run.communicate(timeout=60)[0]  # "done when": stopped within a minute
    assert run.returncode == 0, output
    assert "cancelled by the user" in output

    trials = trials_of(config)
    assert TrialState.RUNNING not in {t.state for t in trials}
    assert len(trials) == 2  # no new trial started after the stop
    assert_cancelled(config, {t.number for t in in_flight})
    client = MlflowClient(tracking_uri=config.tracking_url)
    for trial in trials:  # the curve reported up to the cancel is kept
        run_id = trial.user_attrs[ts.ATTR_RUN_ID]
        assert client.get_metric_history(run_id, "train_loss"), trial.number

    # A later run continues the sweep with new trials; the cancelled ones are not re-run.
    data = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    data["backend"]["time_scale"] = 0.05
    config_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    again = start_run(config_path)
    output = again.communicate(timeout=240)[0]
    assert again.returncode == 0, output
    trials = trials_of(config)
    assert len(trials) == 5
    assert Counter(t.state for t in trials)[TrialState.FAIL] == 2
    assert max(Counter(created_jobs(config, None)).values()) == 1  # each job created once


@pytest.mark.parametrize("kind", ["replay", "replay-simulated", "local", "gemini-api",
                                  "vertex"])
def test_cancel_some_trials_the_sweep_goes_on(tmp_path, seed_mlflow, repo_root,
                                              kind: str) -> None:
    overrides: dict = {"search_space": SEARCH_SPACE}
    service_context = nullcontext(None)
    if kind.startswith("replay"):
        write_curves(tmp_path, duration_s=8.0)  # running when the cancel lands
        overrides["backend"] = {"kind": "replay", "curves": "curves.json", "time_scale": 1.0,
                                "clock": "simulated" if kind.endswith("simulated") else "wall"}
    elif kind == "local":
        shutil.copyfile(repo_root / "configs" / "data" / "next_number.jsonl",
                        tmp_path / "data.jsonl")
        overrides["backend"] = {"kind": "local", "job_root": "jobs"}
        # Long enough to be still training when the cancel lands on a loaded machine.
        overrides["search_space"] = {**SEARCH_SPACE, "epochs": {"value": 6},
                                     "batch_size": {"value": 16}}
    else:
        service_context = fake_service(kind, epoch_s=2.0, step_s=0.3)
    with service_context as service:
        if service is not None:
            overrides["backend"] = backend_section(service, tmp_path)
        # One failure in a row would stop the sweep: a user's cancel is not one.
        config_path = write_config(tmp_path, n_trials=3, concurrency=2,
                                   max_consecutive_failures=1, **overrides)
        config = load_config(config_path)
        seed_mlflow(config)
        run = start_run(config_path)
        first = min(wait_for_jobs(config, run, 1), key=lambda t: t.number)

        done = cancel(config_path, "--trial", str(first.number), "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"cancel trial {first.number}: job" in done.stdout
        output = run.communicate(timeout=300)[0]
        assert run.returncode == 0, output  # the sweep went on to its n_trials

        trials = trials_of(config)
        assert len(trials) == 3
        assert_cancelled(config, {first.number})
        others = [t for t in trials if t.number != first.number]
        assert {t.state for t in others} <= {TrialState.COMPLETE, TrialState.PRUNED}, [
            (t.number, t.user_attrs.get(ts.ATTR_FAIL_REASON)) for t in others]
        if service is None:  # never submitted again
            created = created_jobs(config, None) if kind.startswith("replay") else [
                p.name for p in (tmp_path / "jobs").iterdir() if not p.name.startswith(".")]
            assert len(created) == 3


def test_cancel_refuses_unclear_requests(tmp_path, seed_mlflow) -> None:
    write_curves(tmp_path, duration_s=0.5)
    config_path = write_config(tmp_path, n_trials=1, concurrency=1, search_space=SEARCH_SPACE,
                               backend={"kind": "replay", "curves": "curves.json",
                                        "time_scale": 0.01})
    seed_mlflow(load_config(config_path))
    for args in ((), ("--all", "--trial", "0"), ("--trial",), ("3",)):
        refused = cancel(config_path, *args)
        assert refused.returncode == 2 and "--trial" in refused.stderr, args
    finished = start_run(config_path)
    assert finished.wait(timeout=120) == 0
    refused = cancel(config_path, "--trial", "0", "7", "--yes")
    assert refused.returncode == 2
    assert "trial 0: already COMPLETE" in refused.stderr
    assert "trial 7: no such trial" in refused.stderr


@pytest.mark.postgres
def test_cancel_all_stops_two_workers_sharing_a_postgres_study(
        tmp_path, seed_mlflow, pg_databases) -> None:  # noqa: F811
    optuna_url, _ = pg_databases
    write_curves(tmp_path, duration_s=40.0)
    # Wall-clock jobs: two workers share one time (job time is per process).
    config_path = write_config(tmp_path, n_trials=8, concurrency=2, search_space=SEARCH_SPACE,
                               backend={"kind": "replay", "curves": "curves.json",
                                        "time_scale": 1.0, "clock": "wall"})
    config = load_config(config_path, storage=optuna_url)
    seed_mlflow(config)
    workers = [start_run(config_path, "--storage", optuna_url) for _ in range(2)]
    wait_for_jobs(config, workers[0], 4, storage=optuna_url)

    done = cancel(config_path, "--all", "--yes", "--storage", optuna_url)
    assert done.returncode == 0, done.stdout + done.stderr
    for worker in workers:
        output = worker.communicate(timeout=60)[0]
        assert worker.returncode == 0, output
    trials = trials_of(config, optuna_url)
    assert TrialState.RUNNING not in {t.state for t in trials}
    assert len(trials) == 4
    assert_cancelled(config, {t.number for t in trials}, optuna_url)
