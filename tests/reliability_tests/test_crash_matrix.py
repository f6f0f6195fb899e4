"""SIGKILL `gemini-sweep run` at seeded moments, run it again: every trial exactly once.

21 runs: for each of the replay backend and the fake Gemini API and Vertex AI services (real
HTTP to subprocesses on 127.0.0.1), one kill at each named crash point of
:mod:`sweeps._crashpoints` (after the submit but before the job reference is stored; after
it is stored; in the middle of writing a trial's MLflow run; after the run is written but
before the trial is told) at a seeded pass, plus three kills at a seeded random time. Then
`gemini-sweep run` again, to the end. Each run must end with every trial finished exactly
once, no job created twice (the service's own record of creations), one MLflow child run per
trial holding each reported curve point once, and no run left RUNNING.

The per-backend counts are printed (``pytest -s``) and written to
``test-artifacts/crash_matrix.txt``.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweeps import load_config
from sweeps._crashpoints import ENV_VAR
from sweeps._crashpoints import POINTS
from tests.conftest import REPO_ROOT
from tests.reliability_tests._sweep_procs import FakeService
from tests.reliability_tests._sweep_procs import backend_section
from tests.reliability_tests._sweep_procs import check_sweep
from tests.reliability_tests._sweep_procs import created_jobs
from tests.reliability_tests._sweep_procs import fake_service
from tests.reliability_tests._sweep_procs import run_to_end
from tests.reliability_tests._sweep_procs import seed_mlflow
from tests.reliability_tests._sweep_procs import start_run
from tests.reliability_tests._sweep_procs import sweep_env
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_curves

N_TRIALS = 4
SEED = 20261123
BACKENDS = ("replay", "gemini-api", "vertex")
N_TIMED = 3
SEARCH_SPACE = {"epochs": {"value": 3},
                "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}}


@dataclass(frozen=True)
class Scenario:
    backend: str
    index: int
    crash_at: str | None  # "after_submit:3"; None: SIGKILL at a random time
    kill_after_s: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.crash_at or f'timed-{self.kill_after_s:.2f}s'}"


def scenarios() -> list[Scenario]:
    """Seeded: the pass of each crash point, and the random kill times."""
    rng = random.Random(SEED)
    matrix = []
    for backend in BACKENDS:
        for point in POINTS:
            matrix.append(Scenario(backend, len(matrix), f"{point}:{rng.randint(1, N_TRIALS)}"))
        for _ in range(N_TIMED):
            matrix.append(Scenario(backend, len(matrix), None, round(rng.uniform(0.0, 2.0), 2)))
    return matrix


@pytest.fixture(scope="module")
def services() -> Iterator[dict[str, FakeService | None]]:
    """One fake of each service for the whole matrix; each scenario has its own study."""
    with ExitStack() as stack:
        yield {"replay": None,
               "gemini-api": stack.enter_context(fake_service("gemini-api", epoch_s=0.25)),
               "vertex": stack.enter_context(fake_service("vertex", step_s=0.04))}


@pytest.fixture(scope="module")
def summary() -> Iterator[dict[str, list[dict[str, int]]]]:
    counts: dict[str, list[dict[str, int]]] = defaultdict(list)
    yield counts
    lines = [summary_line(backend, rows) for backend, rows in sorted(counts.items())]
    artifacts = REPO_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "crash_matrix.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n" + "\n".join(lines))  # noqa: T201 - the matrix's figures, shown with -s


def summary_line(backend: str, rows: list[dict[str, int]]) -> str:
    total = defaultdict(int)
    for row in rows:
        for key, value in row.items():
            total[key] += value
    return (f"crash matrix {backend}: {len(rows)} runs ({total['killed']} SIGKILLed: "
            f"{total['at_point']} at crash points, {total['timed']} at random times), "
            f"then run again: {total['trials']} trials finished exactly once, "
            f"{total['creations']} jobs created (0 twice), {total['runs']} MLflow child "
            f"runs (1 per trial, 0 left RUNNING), {total['points']} curve points "
            f"(0 duplicated, 0 missing)")


def kill_at_random_time(process, config, service, delay_s: float) -> bool:
    """SIGKILL ``delay_s`` after the first job exists; False if the sweep ended first."""
    deadline = time.monotonic() + 120
    while not created_jobs(config, service):
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the sweep never submitted a job"
        time.sleep(0.02)
    time.sleep(delay_s)
    if process.poll() is not None:
        return False
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return True


@pytest.mark.parametrize("scenario", scenarios(), ids=lambda s: s.id)
def test_sigkill_then_rerun_finishes_every_trial_exactly_once(
        scenario: Scenario, services, summary, mlflow_template, tmp_path: Path) -> None:
    service = services[scenario.backend]
    write_curves(tmp_path, duration_s=1.0)
    config_path = write_config(
        tmp_path, name=f"cm-{scenario.backend}-{scenario.index}", n_trials=N_TRIALS,
        concurrency=2, poll_interval_s=0.1, search_space=SEARCH_SPACE,
        backend=backend_section(service, tmp_path))
    config = load_config(config_path)
    seed_mlflow(mlflow_template, tmp_path)

    if scenario.crash_at is not None:
        process = start_run(config_path, env=sweep_env(**{ENV_VAR: scenario.crash_at}))
        output = process.communicate(timeout=240)[0].decode()
        # The armed point was reached: the window under test really was hit.
        assert process.returncode == -signal.SIGKILL, output
        killed = True
    else:
        process = start_run(config_path)
        killed = kill_at_random_time(process, config, service, scenario.kill_after_s)
        if not killed:
            process.communicate(timeout=240)

    final = run_to_end(config_path)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "Traceback" not in final.stderr
    counts = check_sweep(config, service, N_TRIALS)
    summary[scenario.backend].append({
        "killed": int(killed), "at_point": int(scenario.crash_at is not None),
        "timed": int(killed and scenario.crash_at is None), "trials": counts.n_trials,
        "creations": counts.n_creations, "runs": counts.n_child_runs,
        "points": counts.n_points})
