"""A seeded sweep never proposes a configuration again because it restarted or has company.

Every process of a sweep rebuilds its sampler from ``sampler.seed``; when the seed was applied
once per process, each restart (and each extra worker) replayed the same random start: 30 kills
of a 12-trial sweep trained 5 distinct configurations. Here the multiplier is continuous, so two
equal configurations can only come from repeated random draws.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna

from sweeps import load_config
from sweeps._crashpoints import ENV_VAR
from sweeps.engine.runner import open_study
from tests.reliability_tests._sweep_procs import run_to_end
from tests.reliability_tests._sweep_procs import seed_mlflow
from tests.reliability_tests._sweep_procs import start_run
from tests.reliability_tests._sweep_procs import sweep_env
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_curves

SPACE = {"epochs": {"value": 2},
         "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}}


def _configurations(config_path: Path) -> list[tuple[float, ...]]:
    study = open_study(load_config(config_path))
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    return [tuple(sorted(t.params.items())) for t in finished]


def _seeded_sweep(folder: Path, mlflow_template: Path, *, name: str, n_trials: int,
                  n_startup_trials: int = 10) -> Path:
    write_curves(folder, duration_s=0.3)
    config_path = write_config(
        folder, name=name, n_trials=n_trials, concurrency=1, poll_interval_s=0.05,
        search_space=SPACE,
        sampler={"kind": "tpe", "seed": 0, "n_startup_trials": n_startup_trials},
        # Wall-clock jobs: workers side by side share one time (job time is per process).
        backend={"kind": "replay", "curves": "curves.json", "time_scale": 0.1,
                 "clock": "wall"})
    seed_mlflow(mlflow_template, folder)
    return config_path


def test_a_seeded_sweep_killed_after_every_trial_trains_distinct_configurations(
        tmp_path: Path, mlflow_template: Path) -> None:
    # A restart can replay a proposal in either phase of the sampler: the seeded random start
    # (where a per-process seed replays the same draws) and the TPE phase after it. A kill
    # after every trial, 4 trials in the random start and 2 in TPE, puts restarts in both;
    # each further process would cover the same two windows again at a few seconds each.
    n_trials = 6
    config_path = _seeded_sweep(tmp_path, mlflow_template, name="kills", n_trials=n_trials,
                                n_startup_trials=4)
    n_kills = 0
    for _ in range(3 * n_trials):
        # Each process tells one trial, then dies before telling the next.
        done = run_to_end(config_path, **{ENV_VAR: "before_tell:2"})
        if done.returncode == 0:
            break
        assert done.returncode == -9, done.stdout + done.stderr
        n_kills += 1
    final = run_to_end(config_path)
    assert final.returncode == 0, final.stdout + final.stderr
    configurations = _configurations(config_path)
    assert len(configurations) == n_trials
    repeated = {c: n for c, n in Counter(configurations).items() if n > 1}
    assert repeated == {}, f"after {n_kills} kills: {repeated}"
    assert n_kills >= n_trials // 2


def test_workers_side_by_side_propose_distinct_configurations(
        tmp_path: Path, mlflow_template: Path) -> None:
    n_trials = 10
    config_path = _seeded_sweep(tmp_path, mlflow_template, name="workers", n_trials=n_trials)
    workers = [start_run(config_path, env=sweep_env()) for _ in range(3)]
    for worker in workers:
        output = worker.communicate(timeout=600)[0].decode()
        assert worker.returncode == 0, output
    configurations = _configurations(config_path)
    assert len(configurations) == n_trials
    repeated = {c: n for c, n in Counter(configurations).items() if n > 1}
    assert repeated == {}, repeated


def test_a_restart_continues_the_sequence_a_single_run_would_propose() -> None:
    from sweeps.policy._per_trial_seed import PerTrialSeedTPESampler

    def proposals(restart_every: int, n: int) -> list[float]:
        storage = optuna.storages.InMemoryStorage()
        values: list[float] = []
        while len(values) < n:
            study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True,
                                        sampler=PerTrialSeedTPESampler(seed=3))
            for _ in range(restart_every):
                trial = study.ask()
                value = trial.suggest_float("m", 0.1, 10.0, log=True)
                study.tell(trial, abs(value - 1.0))
                values.append(value)
        return values

    assert proposals(1, 14) == proposals(14, 14)
    assert len(set(proposals(1, 14))) == 14
