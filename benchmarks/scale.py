"""Scale-out figures: trials per minute and per-trial orchestration overhead, by worker count.

Each setup runs one sweep of ``N_TRIALS`` replay trials, every job ``JOB_S`` long, each
worker running ``CONCURRENCY`` jobs at a time, with real ``gemini-sweep run`` processes:

* PostgreSQL study + an MLflow tracking server (PostgreSQL backend store), 1, 2 and 4 workers;
* SQLite study + SQLite MLflow store, 1 worker (the single-machine default).

The clock runs from the first trial's start to the last trial's end as the study records
them (process start-up, ~5 s of imports, is not orchestration). The ideal is
``ceil(N / slots) x JOB_S`` with ``slots = workers x CONCURRENCY``; the overhead per trial is
``(wall - ideal) x slots / N``: how long each job slot spends per trial on asking, submitting,
polling, recording in MLflow and telling, beyond the job itself.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user postgres). Run:
``python benchmarks/scale.py``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import psycopg2
import requests
import yaml

N_TRIALS = 24
CONCURRENCY = 2
JOB_S = 1.0
EPOCHS = 4
STEPS_PER_EPOCH = 10
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
RUN = [sys.executable, "-c", "from sweeps.cli import main; main()", "run", "-q"]


def write_sweep(folder: Path, name: str, *, storage: str | None,
                tracking_uri: str | None) -> Path:
    rows = [{"text_input": f"what is {i} plus {i}", "output": f"{2 * i}"} for i in range(40)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = [{"params": {"epochs": EPOCHS, "learning_rate_multiplier": m},
                "curve": [{"step": s, "epoch": (s - 1) // STEPS_PER_EPOCH + 1,
                           "loss": 0.4 + abs(math.log(m)) + 2 * math.exp(-s / 10)}
                          for s in range(1, EPOCHS * STEPS_PER_EPOCH + 1)],
                "duration_s": JOB_S, "tokens_per_epoch": 1000}
               for m in (0.1, 0.3, 1.0, 3.0, 10.0)]
    (folder / "curves.json").write_text(json.dumps(records))
    config = {
        "name": name, "dataset": {"path": "data.jsonl"},
        # Wall-clock jobs, as remote jobs run while the loop works (in job time the
        # loop's own work would pause them: that measures nothing of a real sweep).
        "backend": {"kind": "replay", "curves": "curves.json", "time_scale": 1.0,
                    "clock": "wall"},
        "search_space": {"epochs": {"value": EPOCHS},
                         "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
        "sampler": {"kind": "tpe", "seed": 0}, "n_trials": N_TRIALS,
        "concurrency": CONCURRENCY, "lease_s": 60,
    }
    if storage:
        config.update(storage=storage, tracking_uri=tracking_uri)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def database(admin, name: str) -> Iterator[str]:
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG}/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
         "--artifacts-destination", str(artifacts), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=1).ok:
                    break
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def run_workers(config_path: Path, n_workers: int) -> None:
    workers = [subprocess.Popen([*RUN, str(config_path)], cwd=config_path.parent,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE) for _ in range(n_workers)]
    for worker in workers:
        _, err = worker.communicate(timeout=900)
        if worker.returncode != 0:
            raise RuntimeError(f"worker failed: {err.decode()[-2000:]}")


def sweep_figures(study_name: str, storage: str, n_workers: int) -> dict[str, float]:
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
    assert len(trials) == N_TRIALS, f"{len(trials)} trials instead of {N_TRIALS}"
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    wall_s = (end - start).total_seconds()
    slots = n_workers * CONCURRENCY
    ideal_s = math.ceil(N_TRIALS / slots) * JOB_S
    return {"wall_s": wall_s, "trials_per_min": N_TRIALS / wall_s * 60, "ideal_s": ideal_s,
            "overhead_s": (wall_s - ideal_s) * slots / N_TRIALS}


def measure(label: str, n_workers: int, folder: Path, *, storage: str | None,
            tracking_uri: str | None) -> dict[str, float]:
    name = f"scale-{uuid.uuid4().hex[:6]}"
    folder.mkdir(parents=True)
    config_path = write_sweep(folder, name, storage=storage, tracking_uri=tracking_uri)
    run_workers(config_path, n_workers)
    study_storage = storage or f"sqlite:///{folder / '.gemini_sweep' / 'optuna.db'}"
    figures = sweep_figures(name, study_storage, n_workers)
    print(f"{label:<28} {n_workers:>7} {figures['wall_s']:>8.1f} {figures['ideal_s']:>8.1f} "
          f"{figures['trials_per_min']:>12.1f} {figures['overhead_s']:>15.2f}", flush=True)
    return figures


def main() -> None:
    os.environ.setdefault("COLUMNS", "200")
    admin = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
    admin.autocommit = True
    print(f"{N_TRIALS} replay trials, jobs {JOB_S:g} s, {CONCURRENCY} jobs per worker; "
          f"{os.cpu_count()} CPUs")
    print(f"{'setup':<28} {'workers':>7} {'wall s':>8} {'ideal s':>8} {'trials/min':>12} "
          f"{'overhead/trial s':>15}")
    with tempfile.TemporaryDirectory(prefix="gs-scale-") as tmp:
        root = Path(tmp)
        with database(admin, f"gs_bench_{uuid.uuid4().hex[:8]}_mlflow") as mlflow_db, \
                mlflow_server(mlflow_db, root / "artifacts") as tracking_uri:
            for n_workers in (1, 2, 4):
                with database(admin, f"gs_bench_{uuid.uuid4().hex[:8]}") as storage:
                    measure("PostgreSQL + MLflow server", n_workers, root / f"pg{n_workers}",
                            storage=storage, tracking_uri=tracking_uri)
        measure("SQLite + SQLite MLflow", 1, root / "sqlite", storage=None, tracking_uri=None)
    admin.close()


if __name__ == "__main__":
    main()
