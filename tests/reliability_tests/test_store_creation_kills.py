"""SIGKILL while the embedded stores are being created, again and again: the next run works.

MLflow creates its SQLite store with a series of schema migrations that are not one
transaction; a kill in the middle used to leave ``_alembic_tmp_*`` tables that made every later
``gemini-sweep run`` fail for good. These tests kill at many points of that window (from
outside, with SIGKILL: no ``finally`` runs) and then check that the stores open and take writes.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweeps import load_config
from sweeps._embedded_stores import StoreError
from sweeps._embedded_stores import ensure_optuna_store
from sweeps.tracking._store import ensure_mlflow_store
from tests.conftest import REPO_ROOT
from tests.reliability_tests._sweep_procs import run_to_end
from tests.reliability_tests._sweep_procs import start_run
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_curves

SEED = 20261204

# One child imports the store code once, then forks a fresh process per creation and
# SIGKILLs it after the given delay: each kill still hits a process of its own in the middle
# of creating the stores (nothing in it runs after the signal), without paying MLflow's
# seconds of import per kill. It answers "killed" (the kill landed before the creation
# ended) or "done".
_CREATE_AND_KILL = """
import os, signal, sys, time
from sweeps._embedded_stores import ensure_optuna_store
from sweeps.tracking._store import ensure_mlflow_store
import optuna  # imported before 'ready'
print("ready", flush=True)
for line in sys.stdin:
    folder, delay_s = line.split()
    pid = os.fork()
    if pid == 0:
        ensure_mlflow_store(f"sqlite:///{folder}/mlflow.db", artifact_root=None)
        ensure_optuna_store(f"sqlite:///{folder}/optuna.db")
        os._exit(0)
    time.sleep(float(delay_s))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        print("killed", flush=True)
    else:
        print("done" if os.WEXITSTATUS(status) == 0 else f"failed {status}", flush=True)
"""


class _StoreCreator:
    """The forking child of ``_CREATE_AND_KILL``."""

    def __init__(self) -> None:
        self.child = subprocess.Popen([sys.executable, "-c", _CREATE_AND_KILL],
                                      cwd=REPO_ROOT, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
        assert self.child.stdout is not None
        assert self.child.stdout.readline().strip() == "ready"

    def create_and_kill(self, folder: Path, delay_s: float) -> bool:
        """Create both stores in ``folder`` in a new process, SIGKILLed ``delay_s`` after it
        starts. True if the kill landed before the stores were done."""
        assert self.child.stdin is not None and self.child.stdout is not None
        self.child.stdin.write(f"{folder} {delay_s}\n")
        self.child.stdin.flush()
        answer = self.child.stdout.readline().strip()
        assert answer in ("killed", "done"), answer
        return answer == "killed"

    def close(self) -> None:
        self.child.kill()
        self.child.wait(timeout=30)


def _assert_stores_work(folder: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    experiment_id = client.create_experiment(f"e-{time.monotonic_ns()}")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "loss", 0.5, step=1)
    client.set_terminated(run.info.run_id)
    study = optuna.create_study(storage=f"sqlite:///{folder}/optuna.db")
    study.tell(study.ask(), 1.0)


def test_stores_killed_at_many_points_of_their_creation_open_whole(tmp_path: Path) -> None:
    # Kills spread over the whole creation window (about 1.5 s here; slower machines stretch
    # it, so the later kills still land inside), on the same folder one after the other.
    delays = [0.12 * i for i in range(14)]
    creator = _StoreCreator()
    try:
        landed = sum(creator.create_and_kill(tmp_path, delay) for delay in delays)
    finally:
        creator.close()
    assert landed >= len(delays) // 2, f"only {landed} kills hit the creation window"

    ensure_mlflow_store(f"sqlite:///{tmp_path}/mlflow.db", artifact_root=None)
    ensure_optuna_store(f"sqlite:///{tmp_path}/optuna.db")
    _assert_stores_work(tmp_path)
    leftovers = [p.name for p in tmp_path.iterdir() if ".building-" in p.name]
    assert leftovers == []


def _half_built_mlflow_store(path: Path) -> None:
    """What a kill in the middle of MLflow's own in-place creation leaves behind."""
    child = f"""
import sqlalchemy
from alembic import command
from mlflow.store.db.base_sql_model import Base
from mlflow.store.db.utils import _get_alembic_config
from mlflow.store.db.utils import InitialBase
url = "sqlite:///{path}"
engine = sqlalchemy.create_engine(url)
InitialBase.metadata.create_all(engine)
config = _get_alembic_config(url)
with engine.begin() as connection:
    config.attributes["connection"] = connection
    command.upgrade(config, "0a8213491aaa")
"""
    subprocess.run([sys.executable, "-c", child], cwd=REPO_ROOT, check=True, timeout=120)
    with sqlite3.connect(path) as connection:  # the table a killed migration leaves
        connection.execute("CREATE TABLE _alembic_tmp_latest_metrics (step INTEGER)")


def test_a_half_built_store_holding_nothing_is_rebuilt(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    _half_built_mlflow_store(db)
    # What every later run met before (in a child: MLflow caches its engine per process).
    opened = subprocess.run(
        [sys.executable, "-c", "import sys; from mlflow import MlflowClient; "
         "MlflowClient(tracking_uri=sys.argv[1]).search_experiments()", f"sqlite:///{db}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert "_alembic_tmp_latest_metrics already exists" in opened.stderr

    ensure_mlflow_store(f"sqlite:///{db}", artifact_root=None)
    ensure_optuna_store(f"sqlite:///{tmp_path}/optuna.db")
    _assert_stores_work(tmp_path)


def test_a_half_built_store_holding_runs_is_left_alone_with_words(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    _half_built_mlflow_store(db)
    with sqlite3.connect(db) as connection:
        connection.execute("INSERT INTO runs (run_uuid, lifecycle_stage) "
                           "VALUES ('abc', 'active')")
    before = db.read_bytes()
    with pytest.raises(StoreError, match="incomplete .* holds data: back it up"):
        ensure_mlflow_store(f"sqlite:///{db}", artifact_root=None)
    assert db.read_bytes() == before


def _wait_for_store_files(state_dir: Path, process: subprocess.Popen[bytes]) -> bool:
    """Until the MLflow store starts being written (the window under test)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if state_dir.is_dir() and any(p.name.startswith("mlflow.db")
                                      and not p.name.endswith("create-lock")
                                      for p in state_dir.iterdir()):
            return True
        time.sleep(0.005)
    raise AssertionError("the sweep never started creating its MLflow store")


def test_a_sweep_killed_in_its_first_seconds_again_and_again_finishes(tmp_path: Path) -> None:
    write_curves(tmp_path, duration_s=0.5)
    config_path = write_config(
        tmp_path, name="early-kills", n_trials=3, concurrency=1, poll_interval_s=0.1,
        backend={"kind": "replay", "curves": "curves.json", "time_scale": 0.3})
    config = load_config(config_path)
    rng = random.Random(SEED)
    n_in_window = 0
    for _ in range(8):
        process = start_run(config_path, cold=True)
        if _wait_for_store_files(config.state_dir, process):
            time.sleep(rng.uniform(0.0, 1.5))
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
                n_in_window += 1
        process.communicate(timeout=60)
    assert n_in_window >= 1

    final = run_to_end(config_path)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "Traceback" not in final.stderr
    study = optuna.load_study(study_name="early-kills", storage=config.storage_url)
    assert len([t for t in study.trials if t.state.is_finished()]) == 3
