"""Helpers of the reliability tests: fake services as processes, `gemini-sweep run` as a
process, and the end-of-sweep invariants (exactly once, nothing lost, nothing RUNNING).

The fakes run as real subprocesses on free ports of 127.0.0.1 (never another address), so a
SIGKILLed sweep talks to a service that outlives it, as a real one would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import requests
from mlflow import MlflowClient

from gemini_backend import BaseBackend
from gemini_backend import JobRef
from gemini_backend import create_backend
from gemini_backend.replay.backend import ReplayBackend
from sweeps import SweepConfig
from sweeps import trial_record as ts
from sweeps.engine.runner import open_study
from tests._warm_runs import WarmRun
from tests._warm_runs import run_warm
from tests._warm_runs import start_warm
from tests.conftest import REPO_ROOT

TrialState = optuna.trial.TrialState
RUN = [sys.executable, "-c", "from sweeps.cli import main; main()", "run"]
GEMINI_KEY = "AIzaSy-fake-crash-matrix-key-0001"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class FakeService:
    """A fake service process and its URL."""

    kind: str
    url: str
    process: subprocess.Popen[bytes]

    def admin(self, endpoint: str, **params: str) -> Any:
        return requests.get(f"{self.url}/_admin/{endpoint}", params=params, timeout=10).json()

    def post(self, endpoint: str, body: dict[str, Any]) -> None:
        requests.post(f"{self.url}/_admin/{endpoint}", json=body,
                      timeout=10).raise_for_status()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the fake service exited at start"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@contextmanager
def fake_service(kind: str, *, epoch_s: float = 0.3, step_s: float = 0.05,
                 api_key: str = GEMINI_KEY, extra_args: tuple[str, ...] = ()
                 ) -> Iterator[FakeService]:
    """``gemini-api`` or ``vertex`` fake as a subprocess on a free loopback port;
    ``extra_args`` go to its command line (e.g. ``--list-lag-s 3``)."""
    port = free_port()
    if kind == "gemini-api":
        argv = ["-m", "tests.gemini_backend_tests.fake_gemini_api", "--port", str(port),
                "--api-key", api_key, "--epoch-s", str(epoch_s)]
    else:
        argv = ["-m", "tests.gemini_backend_tests.fake_vertex", "--port", str(port),
                "--queued-s", "0.05", "--step-s", str(step_s)]
    process = subprocess.Popen([sys.executable, *argv, *extra_args], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(port, process)
        yield FakeService(kind, f"http://127.0.0.1:{port}", process)
    finally:
        process.kill()
        process.wait(timeout=10)


# The fakes' jobs last seconds, not hours: poll them at that pace, not the services' minutes.
FAKE_POLLING = {"poll_interval_s": 0.5, "max_poll_interval_s": 2.0}


def backend_section(service: FakeService | None, folder: Path) -> dict[str, Any]:
    """The ``backend:`` config for a fake (or the replay backend when ``service`` is None)."""
    if service is None:
        return {"kind": "replay", "curves": "curves.json", "time_scale": 0.3}
    if service.kind == "gemini-api":
        return {"kind": "gemini-api", "base_url": service.url, "api_key_env": "FAKE_GEMINI_KEY",
                "timeout_s": 5, **FAKE_POLLING}
    from tests.gemini_backend_tests.fake_vertex import service_account_key

    key_path = folder / "sa-key.json"
    if not key_path.exists():
        key_path.write_text(json.dumps(service_account_key(service.url)), encoding="utf-8")
    return {"kind": "vertex", "project": "test-project", "bucket": "test-bucket",
            "base_url": service.url, "storage_base_url": service.url,
            "credentials_file": "sa-key.json", "timeout_s": 5,
            # The fakes' list shows a job at once unless told to lag: a short wait suffices.
            "list_lag_window_s": 2, **FAKE_POLLING}


def sweep_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "FAKE_GEMINI_KEY": GEMINI_KEY, **extra}
    env.pop("GEMINI_API_KEY", None)
    env.pop("GOOGLE_API_KEY", None)
    return env


def start_run(config_path: Path, *, env: dict[str, str] | None = None, cold: bool = False
              ) -> subprocess.Popen[bytes] | WarmRun:
    """`gemini-sweep run CONFIG -q`, its output and errors in one stream; forked from the warm
    launcher unless ``cold`` (a new interpreter: for tests of the run's first seconds)."""
    if cold:
        return subprocess.Popen([*RUN, str(config_path), "-q"], cwd=config_path.parent,
                                env=env or sweep_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    return start_warm(["run", str(config_path), "-q"], cwd=config_path.parent,
                      env=env or sweep_env())


def run_to_end(config_path: Path, *, timeout_s: float = 240, **env: str
               ) -> subprocess.CompletedProcess[str]:
    """`gemini-sweep run CONFIG` to its end, forked from the warm launcher."""
    return run_warm(["run", str(config_path)], cwd=config_path.parent, env=sweep_env(**env),
                    timeout_s=timeout_s)


# --- what was created, what was recorded -------------------------------------------------


def created_jobs(config: SweepConfig, service: FakeService | None) -> list[str]:
    """The idempotency key of every job the service created, once per creation."""
    if service is None:
        log = ReplayBackend.submission_log(config.state_dir / "replay_jobs")
        return [entry["key"] for entry in log]
    # One fake serves many sweeps: keep this study's jobs (keys start with its name).
    prefix = f"{config.name.lower()}-"
    if service.kind == "gemini-api":
        creates = service.admin("requests", method="POST", path="/v1beta/tunedModels")
        ids = [r["query"]["tunedModelId"] for r in creates["requests"]]
    else:
        jobs = service.admin("jobs")["tuningJobs"]
        ids = [job["labels"]["gemini-sweep-key"] for job in jobs]
    return [job_id for job_id in ids if job_id.startswith(prefix)]


def expected_creations(config: SweepConfig, service: FakeService | None,
                       trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """What :func:`created_jobs` must hold when each trial's job was created exactly once."""
    from gemini_backend.gemini_api._wire import tuned_model_id
    from gemini_backend.vertex._wire import label_value

    keys = [t.user_attrs[ts.ATTR_KEY] for t in trials]
    if service is None:
        return sorted(keys)
    if service.kind == "gemini-api":
        return sorted(tuned_model_id(k) for k in keys)
    return sorted(label_value(k) for k in keys)


@dataclass(frozen=True)
class Consistency:
    n_trials: int
    n_creations: int
    n_child_runs: int
    n_points: int


def check_sweep(config: SweepConfig, service: FakeService | None,
                n_trials: int) -> Consistency:
    """Assert the invariants after the last run; return the counts for the summary line."""
    trials = open_study(config).get_trials()
    states = Counter(t.state.name for t in trials)
    assert len(trials) == n_trials, states
    assert set(states) <= {"COMPLETE", "PRUNED"}, states
    created = created_jobs(config, service)
    dupes = [key for key, n in Counter(created).items() if n > 1]
    assert dupes == [], f"jobs created twice: {dupes}"
    assert sorted(created) == expected_creations(config, service, trials)
    n_points = check_mlflow(config, trials)
    return Consistency(len(trials), len(created), len(trials), n_points)


def check_mlflow(config: SweepConfig, trials: list[optuna.trial.FrozenTrial], *,
                 backend: BaseBackend | None = None) -> int:
    """One parent; one child per trial, holding every reported point once; none RUNNING.

    ``backend`` (default: the config's) is polled for what each job reported.
    """
    if backend is not None:
        return _check_runs(config, trials, backend)
    # The key is read lazily, at the first request: keep it set while polling.
    with mock.patch.dict(os.environ, {"FAKE_GEMINI_KEY": GEMINI_KEY}), \
            create_backend(config.backend, base_dir=config.config_dir) as backend:
        return _check_runs(config, trials, backend)


def _check_runs(config: SweepConfig, trials: list[optuna.trial.FrozenTrial],
                backend: BaseBackend) -> int:
    client = MlflowClient(tracking_uri=config.tracking_url)
    experiment = client.get_experiment_by_name(config.name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    roles = Counter(r.data.tags.get("gemini_sweep.role") for r in runs)
    assert roles == {"sweep": 1, "trial": len(trials)}, roles
    children = {int(r.data.tags["gemini_sweep.trial"]): r for r in runs
                if r.data.tags.get("gemini_sweep.role") == "trial"}
    assert sorted(children) == sorted(t.number for t in trials)
    n_points = 0
    for trial in trials:
        run = children[trial.number]
        ref = JobRef.from_dict(trial.user_attrs[ts.ATTR_JOB_REF])
        reported = [s.step for s in backend.poll(ref).snapshots]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
        assert sorted(steps) == sorted(reported), (trial.number, steps, reported)
        expected = "FINISHED" if trial.state is TrialState.COMPLETE else "KILLED"
        assert run.info.status == expected
        assert run.data.tags.get("gemini_sweep.job_id") == ref.job_id
        n_points += len(steps)
    return n_points


# --- MLflow store --------------------------------------------------------------------------


def seed_mlflow(template: Path, config_dir: Path) -> None:
    """Copy the empty store to where a config in ``config_dir`` keeps its MLflow db."""
    state_dir = config_dir / ".gemini_sweep"
    state_dir.mkdir(parents=True, exist_ok=True)
    if not (state_dir / "mlflow.db").exists():
        shutil.copyfile(template, state_dir / "mlflow.db")
