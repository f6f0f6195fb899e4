"""Many workers on one study: study-wide n_trials, leases, take-over, MLflow server.

The first tests run workers as threads on a real SQLite study (each with its own lock file
handle, so ``flock`` excludes them as it does processes). The last one is the real thing:
a fresh PostgreSQL database, a real ``mlflow server`` on a PostgreSQL backend store, three
``gemini-sweep run`` processes on one study with the replay backend, one SIGKILLed mid-sweep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import optuna
import pytest
import requests

from gemini_backend.replay.backend import ReplayBackend
from sweeps import load_config
from sweeps import trial_record as ts
from sweeps.engine._lease import ATTR_WORKER_NODE
from sweeps.engine._lease import StudyLeases
from sweeps.engine._lease import new_worker_id
from sweeps.engine._study_lock import StudyLock
from sweeps.engine.runner import open_study
from sweeps.engine.runner import run_sweep
from sweeps.errors import TrackingError
from sweeps.tracking.tracker import NullTracker
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_curves
from tests.sweeps_tests.fake_backend import FakeBackend

TrialState = optuna.trial.TrialState

# MLflow 3 starts job-runner processes (GenAI evaluation jobs) beside every server; a sweep
# never uses them, and on two cores they slowed every test that starts a server.
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def make_leases(config, *, lease_s: float = 30.0, study_concurrency: int | None = None):
    """A worker's view of the study: its own study object, lock handle and worker id."""
    return StudyLeases(open_study(config), StudyLock(config.storage_url, config.name),
                       worker_id=new_worker_id(), lease_s=lease_s,
                       study_concurrency=study_concurrency)


def run_threads(target, n: int) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(index: int) -> None:
        barrier.wait()  # start together: the race is the point
        results[index] = target(index)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_racing_workers_ask_exactly_n_trials_in_total(tmp_path) -> None:
    config = load_config(write_config(tmp_path, n_trials=7))
    open_study(config)
    workers = [make_leases(config) for _ in range(4)]

    def ask_until_exhausted(index: int) -> list[int]:
        numbers = []
        while True:
            asked = workers[index].ask(max_trials=7, now_s=0.0)
            if asked.is_exhausted:
                return numbers
            numbers.append(asked.trial.number)

    asked = run_threads(ask_until_exhausted, 4)
    numbers = sorted(n for per_worker in asked for n in per_worker)
    assert numbers == list(range(7))  # no trial 8 from two workers asking the last one
    assert len(open_study(config).get_trials()) == 7
    for worker in workers:
        worker.close()


def test_study_concurrency_caps_running_trials_across_workers(tmp_path) -> None:
    config = load_config(write_config(tmp_path, n_trials=10))
    first, second = make_leases(config, study_concurrency=3), make_leases(config,
                                                                          study_concurrency=3)
    got = [first.ask(max_trials=10, now_s=0.0).trial, second.ask(max_trials=10, now_s=0.0).trial,
           first.ask(max_trials=10, now_s=0.0).trial]
    assert all(trial is not None for trial in got)
    refused = second.ask(max_trials=10, now_s=0.0)
    assert refused.trial is None and not refused.is_exhausted  # wait for a slot, not stop
    first.study.tell(got[0], 1.0)
    assert second.ask(max_trials=10, now_s=5.0).trial is not None


def test_a_trial_is_taken_over_only_when_its_lease_is_free(tmp_path) -> None:
    config = load_config(write_config(tmp_path, n_trials=10))
    other_machine = make_leases(config, lease_s=60.0)
    me = make_leases(config, lease_s=60.0)
    held = other_machine.ask(max_trials=10, now_s=0.0).trial
    storage = other_machine.study._storage
    storage.set_trial_user_attr(held._trial_id, ATTR_WORKER_NODE, "elsewhere/boot/1")
    assert me.claim_orphans(held=set()) == []  # fresh heartbeat: a live worker has it
    assert me.n_held_by_others == 1

    # The other machine stopped renewing 61 s ago: its lease has run out.
    storage.set_trial_user_attr(held._trial_id, ts.ATTR_HEARTBEAT, time.time() - 61)
    claimed = me.claim_orphans(held=set())
    assert [t.number for t in claimed] == [held.number]
    frozen = me.study.get_trials()[held.number]
    assert frozen.user_attrs[ts.ATTR_WORKER] == me.worker_id
    assert other_machine.renew({held.number}) == {held.number}  # it learns it lost it


def test_a_trial_told_while_its_heartbeat_is_written_does_not_starve_the_others(
        tmp_path, monkeypatch) -> None:
    # The loop tells a trial without the study lock, so it may finish between renew's read
    # and its write: that trial is dropped, and the worker's other trial still gets its
    # heartbeat this round (three missed rounds would hand it to another worker).
    config = load_config(write_config(tmp_path, n_trials=10))
    me = make_leases(config)
    told, kept = (me.ask(max_trials=10, now_s=0.0).trial for _ in range(2))
    read_before_the_tell = me.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    me.study.tell(told, 1.0)
    me.study._storage.set_trial_user_attr(kept._trial_id, ts.ATTR_HEARTBEAT, 0.0)
    monkeypatch.setattr(me.study, "get_trials", lambda **_: read_before_the_tell)

    assert me.renew({told.number, kept.number}) == {told.number}
    assert open_study(config).trials[kept.number].user_attrs[ts.ATTR_HEARTBEAT] > 0.0


def test_a_local_worker_that_died_is_taken_over_at_once(tmp_path) -> None:
    config = load_config(write_config(tmp_path, n_trials=10))
    me = make_leases(config, lease_s=300.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        trials = []
        for pid in (dead.pid, alive.pid):
            trial = me.study.ask()
            trial.set_user_attr(ts.ATTR_WORKER, f"{me.worker_id.split(':')[0]}:{pid}:abcdef")
            trial.set_user_attr(ATTR_WORKER_NODE, me.node)
            trial.set_user_attr(ts.ATTR_HEARTBEAT, time.time())
            trials.append(trial)
        claimed = me.claim_orphans(held=set())
        assert [t.number for t in claimed] == [trials[0].number]  # not the live one
    finally:
        alive.kill()
        alive.wait()


def test_two_workers_racing_for_one_orphan_take_it_once(tmp_path) -> None:
    config = load_config(write_config(tmp_path, n_trials=10))
    orphan = open_study(config).ask()
    orphan.set_user_attr(ts.ATTR_WORKER, "elsewhere:1:dead00")
    orphan.set_user_attr(ts.ATTR_HEARTBEAT, time.time() - 3600)
    workers = [make_leases(config) for _ in range(4)]
    claimed = run_threads(lambda i: workers[i].claim_orphans(held=set()), 4)
    assert sorted(len(c) for c in claimed) == [0, 0, 0, 1]


class FlakyTracker(NullTracker):
    """MLflow down for a while: each trial's first ``n_failures`` records fail."""

    def __init__(self, n_failures: int) -> None:
        self.n_failures = n_failures
        self.attempts: dict[int, int] = {}

    def record_trial(self, outcome) -> str:
        self.attempts[outcome.number] = self.attempts.get(outcome.number, 0) + 1
        if self.attempts[outcome.number] <= self.n_failures:
            raise TrackingError("MLflow: connection refused")
        return f"run-{outcome.number}"


def test_mlflow_outage_is_retried_later_in_the_same_run(make_config, clock) -> None:
    config = make_config(n_trials=3, concurrency=2)
    tracker = FlakyTracker(n_failures=2)
    result = run_sweep(config, backend=FakeBackend(clock=clock), tracker=tracker, clock=clock,
                       sleep=clock.sleep)
    trials = open_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert result.n_unrecorded == 0 and result.n_complete == 3
    assert tracker.attempts == {0: 3, 1: 3, 2: 3}
    assert [t.user_attrs[ts.ATTR_RUN_ID] for t in trials] == ["run-0", "run-1", "run-2"]


# --- the real thing: PostgreSQL, an MLflow tracking server, three worker processes ------------

PG_HOST, PG_PORT = "127.0.0.1", 5432
N_TRIALS = 8
LEASE_S = 3.0


def postgres_answers() -> bool:
    try:
        socket.create_connection((PG_HOST, PG_PORT), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture
def pg_databases():
    """Two fresh databases (Optuna, MLflow) with unique names, dropped at the end."""
    if not postgres_answers():
        pytest.skip(f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT}")
    import psycopg2

    names = [f"gs_test_{uuid.uuid4().hex[:10]}_{part}" for part in ("optuna", "mlflow")]
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield [f"postgresql+psycopg2://postgres@{PG_HOST}:{PG_PORT}/{n}" for n in names]
    finally:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(pg_databases, tmp_path):
    """A real ``mlflow server`` on a PostgreSQL backend store, on a free loopback port."""
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", pg_databases[1],
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
        env=SERVER_ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _is_healthy(url):
            assert server.poll() is None, (tmp_path / "mlflow-server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not start in 60 s"
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _is_healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def start_worker(config_path, index: int) -> subprocess.Popen[bytes]:
    log = (config_path.parent / f"worker-{index}.log").open("wb")
    env = {**os.environ, "COLUMNS": "400"}  # one log record per line
    return subprocess.Popen([*RUN, str(config_path)], cwd=config_path.parent, env=env,
                            stdout=log, stderr=subprocess.STDOUT)


RUN = [sys.executable, "-c", "from sweeps.cli import main; main()", "run"]


@pytest.mark.postgres
def test_three_workers_on_postgres_and_an_mlflow_server_one_killed(
        tmp_path, pg_databases, mlflow_server) -> None:
    write_curves(tmp_path, duration_s=2.0)
    config_path = write_config(
        tmp_path, n_trials=N_TRIALS, concurrency=2, study_concurrency=3, lease_s=LEASE_S,
        storage=pg_databases[0], tracking_uri=mlflow_server,
        search_space={"epochs": {"value": 4},
                      "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
        # One time for every worker's jobs: job time would be each process's own.
        backend={"kind": "replay", "curves": "curves.json", "time_scale": 1.0,
                 "clock": "wall"})
    config = load_config(config_path)
    workers = [start_worker(config_path, i) for i in range(3)]
    victim, held = kill_first_worker_holding_jobs(config, workers, tmp_path)
    for worker in workers:
        if worker is not victim:
            assert worker.wait(timeout=180) == 0, worker_logs(tmp_path)
    victim.wait()  # reaped only now: until then its PID looked alive, so the lease decided

    trials = open_study(config).get_trials()
    assert len(trials) == N_TRIALS
    assert [t.state for t in trials] == [TrialState.COMPLETE] * N_TRIALS
    submitted = [e["key"] for e in ReplayBackend.submission_log(tmp_path / ".gemini_sweep"
                                                                / "replay_jobs")]
    assert sorted(submitted) == sorted(t.user_attrs[ts.ATTR_KEY] for t in trials)  # once each
    assert max_jobs_playing_at_once(tmp_path / ".gemini_sweep" / "replay_jobs") <= 3

    logs = worker_logs(tmp_path)
    for number, (worker_id, job_id) in held.items():
        trial = trials[number]
        assert trial.user_attrs[ts.ATTR_WORKER] != worker_id  # a live worker finished it
        assert trial.user_attrs[ts.ATTR_JOB_REF]["job_id"] == job_id  # the same job
        assert f"trial={number} taken over from worker {worker_id}: no heartbeat for" in logs, \
            logs
    assert_one_run_per_trial(mlflow_server, config.name, trials)


def kill_first_worker_holding_jobs(
        config, workers, folder) -> tuple[subprocess.Popen[bytes], dict[int, tuple[str, str]]]:
    """SIGKILL the first worker seen holding submitted jobs: it, and its trials' job ids.

    Not a worker chosen in advance: the three start together and race for the
    study_concurrency slots, and under CPU load one of them can lose every race until the
    other two have asked all N_TRIALS; it then never holds a job and cannot be killed with
    one. The worker is stopped (SIGSTOP) while its trials are read, so the trials returned
    are exactly those it dies holding; if its jobs ended between the two reads, it goes on.
    """
    by_pid = {worker.pid: worker for worker in workers}
    deadline = time.monotonic() + 120  # a hang guard: the first job comes within seconds
    study = None
    while True:
        exited = [index for index, worker in enumerate(workers) if worker.poll() is not None]
        assert not exited, f"workers {exited} exited before any held a job\n" \
                           f"{worker_logs(folder)}"
        assert time.monotonic() < deadline, f"no worker submitted a job\n{worker_logs(folder)}"
        try:
            study = study or optuna.load_study(study_name=config.name,
                                               storage=config.storage_url)
        except KeyError:  # the study does not exist yet
            time.sleep(0.1)
            continue
        for pid in by_pid:
            if not jobs_held_by(study, pid):
                continue
            os.kill(pid, signal.SIGSTOP)
            held = jobs_held_by(study, pid)  # read again while it can neither tell nor submit
            if held:
                os.kill(pid, signal.SIGKILL)
                return by_pid[pid], held
            os.kill(pid, signal.SIGCONT)
        time.sleep(0.1)


def jobs_held_by(study, pid: int) -> dict[int, tuple[str, str]]:
    """The RUNNING trials of worker process ``pid`` with a submitted job: worker id, job id."""
    return {t.number: (t.user_attrs[ts.ATTR_WORKER], t.user_attrs[ts.ATTR_JOB_REF]["job_id"])
            for t in study.get_trials(states=(TrialState.RUNNING,))
            if f":{pid}:" in t.user_attrs.get(ts.ATTR_WORKER, "")
            and ts.ATTR_JOB_REF in t.user_attrs}


def max_jobs_playing_at_once(job_root) -> int:
    """From the replay job files: the most jobs whose play time overlapped."""
    jobs = [json.loads(p.read_text()) for p in job_root.glob("*.json")]
    edges = sorted([(j["started_at"], 1) for j in jobs]
                   + [(j["started_at"] + j["play_duration_s"], -1) for j in jobs],
                   key=lambda edge: (edge[0], edge[1]))
    playing = most = 0
    for _, step in edges:
        playing += step
        most = max(most, playing)
    return most


def worker_logs(folder) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("worker-*.log")))


def assert_one_run_per_trial(server: str, study_name: str, trials) -> None:
    """Over REST: one parent run, one FINISHED child per trial under it, none RUNNING."""
    experiment = requests.get(f"{server}/api/2.0/mlflow/experiments/get-by-name",
                              params={"experiment_name": study_name}, timeout=10).json()
    runs = requests.post(f"{server}/api/2.0/mlflow/runs/search", timeout=10, json={
        "experiment_ids": [experiment["experiment"]["experiment_id"]],
        "max_results": 1000}).json()["runs"]
    tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
    parents = [run for run, tag in zip(runs, tags, strict=True)
               if tag.get("gemini_sweep.role") == "sweep"]
    assert len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    children = [(int(tag["gemini_sweep.trial"]), run, tag)
                for run, tag in zip(runs, tags, strict=True)
                if tag.get("gemini_sweep.role") == "trial"]
    assert sorted(number for number, _, _ in children) == [t.number for t in trials]
    assert {tag["mlflow.parentRunId"] for _, _, tag in children} == {parent_id}
    assert [run["info"]["status"] for run in runs if run["info"]["status"] == "RUNNING"] == []
    assert {run["info"]["status"] for _, run, _ in children} == {"FINISHED"}
