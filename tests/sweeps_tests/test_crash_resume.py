"""Kill `gemini-sweep run` with SIGKILL mid-sweep, run it again: nothing lost, nothing twice.

Real processes, the real replay backend (jobs persisted on disk), real Optuna and MLflow
SQLite stores. After the final run every trial has finished exactly once, no job was created
twice (the replay backend's own submission log), each trial has exactly one MLflow child run
holding every curve point once, and no run is left RUNNING.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import optuna
from mlflow import MlflowClient

from gemini_backend import JobRef
from gemini_backend import create_backend
from gemini_backend.replay.backend import ReplayBackend
from sweeps import load_config
from sweeps import trial_record as ts
from sweeps.engine.runner import open_study
from tests._warm_runs import WarmRun
from tests.reliability_tests._sweep_procs import start_run
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_curves

TrialState = optuna.trial.TrialState

SEARCH_SPACE = {"epochs": {"value": 4},
                "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}}


def created_jobs(config) -> list[str]:
    """Every job the backend created, once per creation (what a service would bill)."""
    if config.backend.kind == "replay":
        return [e["key"] for e in ReplayBackend.submission_log(config.state_dir / "replay_jobs")]
    job_root = config.state_dir / "jobs"
    if not job_root.exists():
        return []
    # A dot-folder is a job being created (renamed into place when complete), not a job.
    return [p.name for p in job_root.iterdir() if p.is_dir() and not p.name.startswith(".")]


def kill_when(process: WarmRun, config, *, submissions: int) -> None:
    """SIGKILL the sweep as soon as the backend has created ``submissions`` jobs."""
    deadline = time.monotonic() + 180
    while len(created_jobs(config)) < submissions:
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the sweep never reached the kill point"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def kill_twice_then_finish(config_path: Path, seed_mlflow, *, n_trials: int):
    config = load_config(config_path)
    seed_mlflow(config)
    kill_when(start_run(config_path), config, submissions=2)  # first jobs in flight
    assert running_trials(config), "the kill should leave trials in flight"
    kill_when(start_run(config_path), config, submissions=n_trials - 2)  # some recorded
    assert running_trials(config)
    final = start_run(config_path)
    output = final.communicate(timeout=600)[0].decode()
    assert final.returncode == 0, output

    trials = open_study(config).get_trials()
    assert len(trials) == n_trials
    # The message carries each failed trial's reason: a failure here has been seen once
    # and could not be diagnosed without it.
    assert {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}, (
        [(t.number, t.user_attrs.get(ts.ATTR_FAIL_REASON)) for t in trials
         if t.state == TrialState.FAIL], output)
    assert_mlflow_complete(config, trials)
    return config, trials


def test_sigkill_twice_then_rerun_finishes_every_trial_exactly_once(tmp_path, seed_mlflow):
    write_curves(tmp_path, duration_s=1.5)
    config_path = write_config(
        tmp_path, n_trials=6, concurrency=2, search_space=SEARCH_SPACE,
        backend={"kind": "replay", "curves": "curves.json", "time_scale": 1.0})
    config, trials = kill_twice_then_finish(config_path, seed_mlflow, n_trials=6)
    assert sorted(created_jobs(config)) == sorted(t.user_attrs[ts.ATTR_KEY] for t in trials)


def test_sigkill_with_real_local_training_loses_and_repeats_nothing(
        tmp_path, seed_mlflow, repo_root) -> None:
    shutil.copyfile(repo_root / "configs" / "data" / "next_number.jsonl",
                    tmp_path / "data.jsonl")
    config_path = write_config(
        tmp_path, n_trials=4, concurrency=2, backend={"kind": "local"},
        search_space={"epochs": {"value": 2}, "batch_size": {"value": 16},
                      "learning_rate_multiplier": {"low": 0.5, "high": 2.0, "log": True}})
    config, trials = kill_twice_then_finish(config_path, seed_mlflow, n_trials=4)
    jobs = created_jobs(config)
    assert sorted(jobs) == sorted(t.user_attrs[ts.ATTR_JOB_REF]["job_id"] for t in trials)
    assert {t.state for t in trials} == {TrialState.COMPLETE}


def test_ctrl_c_exits_130_leaves_jobs_running_and_a_rerun_collects_them(
        tmp_path, seed_mlflow) -> None:
    write_curves(tmp_path, duration_s=1.0)
    config_path = write_config(
        tmp_path, n_trials=4, concurrency=2, search_space=SEARCH_SPACE,
        backend={"kind": "replay", "curves": "curves.json", "time_scale": 4.0})
    config = load_config(config_path)
    seed_mlflow(config)
    process = start_run(config_path)
    deadline = time.monotonic() + 120
    while len(created_jobs(config)) < 2:
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.5)  # the job refs are stored; the 4 s jobs are still running
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 130, output
    assert "keep running" in output
    backend = create_backend(config.backend, base_dir=config.config_dir)
    in_flight = running_trials(config)
    assert in_flight
    for trial in in_flight:  # Ctrl-C cancelled nothing
        ref = JobRef.from_dict(trial.user_attrs[ts.ATTR_JOB_REF])
        assert backend.poll(ref).state.value in ("RUNNING", "SUCCEEDED")

    final = start_run(config_path)
    assert final.wait(timeout=300) == 0
    trials = open_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted(created_jobs(config)) == sorted(t.user_attrs[ts.ATTR_KEY] for t in trials)


def running_trials(config) -> list[optuna.trial.FrozenTrial]:
    return open_study(config).get_trials(states=(TrialState.RUNNING,))


def assert_mlflow_complete(config, trials) -> None:
    """One parent, one child per trial holding every point its job reported, once."""
    backend = create_backend(config.backend, base_dir=config.config_dir)
    client = MlflowClient(tracking_uri=config.tracking_url)
    experiment = client.get_experiment_by_name(config.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    parents = [r for r in runs if r.data.tags.get("gemini_sweep.role") == "sweep"]
    children = {int(r.data.tags["gemini_sweep.trial"]): r for r in runs
                if r.data.tags.get("gemini_sweep.role") == "trial"}
    assert len(parents) == 1
    assert len(children) == len(runs) - 1  # no trial has two runs
    assert sorted(children) == [t.number for t in trials]
    for trial in trials:
        run = children[trial.number]
        reported = backend.poll(JobRef.from_dict(trial.user_attrs[ts.ATTR_JOB_REF])).snapshots
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert sorted(m.step for m in history) == [s.step for s in reported]
        expected = "FINISHED" if trial.state is TrialState.COMPLETE else "KILLED"
        assert run.info.status == expected
