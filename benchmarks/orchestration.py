"""How close a sweep gets to the ideal wall time, against the common hand-written way.

64 replay trials, 8 at a time, each job 2 s long with a 50-point loss curve played on the
wall clock (``clock: wall``: the jobs run while the sweep works, as remote jobs do), MLflow on
SQLite. The floor is ceil(64 / 8) x 2 s = 16 s; the figure printed is wall time / floor.

* ours: ``sweeps.run_sweep`` (ask/tell, one thread polling every job, log_batch writes,
  per-trial PNG and JSON artifacts, sweep plots at the end).
* ours, whole process: ``gemini-sweep run`` as a user runs it, from the interpreter's start
  (imports, config, store opening) to its exit (summary, plots), timed from outside.
* hand-written: ``study.optimize(n_jobs=8)`` whose objective sleeps 2 s while it "polls"
  (10 polls of 0.2 s) and logs each new point with ``mlflow.log_metric``.

Both MLflow stores are created before the clock starts (MLflow's one-time table creation
takes seconds and is not orchestration). Run: ``python benchmarks/orchestration.py``.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import mlflow
import optuna
import yaml
from mlflow import MlflowClient

from sweeps import load_config
from sweeps.engine.runner import run_sweep

N_TRIALS = 64
CONCURRENCY = 8
JOB_S = 2.0
EPOCHS = 5
STEPS_PER_EPOCH = 10  # 50 points a curve
MULTIPLIERS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def curve_of(multiplier: float) -> list[dict[str, float]]:
    penalty = abs(math.log(multiplier))
    return [{"step": s, "epoch": (s - 1) // STEPS_PER_EPOCH + 1,
             "loss": round(0.4 + 2 * penalty + 2 * math.exp(-1.2 * s / STEPS_PER_EPOCH), 6)}
            for s in range(1, EPOCHS * STEPS_PER_EPOCH + 1)]


def write_sweep(folder: Path) -> Path:
    rows = [{"text_input": f"what is {i} plus {i}", "output": f"{2 * i}"} for i in range(40)]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = [{"params": {"epochs": EPOCHS, "learning_rate_multiplier": m},
                "curve": curve_of(m), "duration_s": JOB_S, "tokens_per_epoch": 1000}
               for m in MULTIPLIERS]
    (folder / "curves.json").write_text(json.dumps(records))
    config = {
        "name": "bench", "dataset": {"path": "data.jsonl"},
        # Wall-clock jobs, as remote jobs run while the loop works (in job time the
        # loop's own work would pause them: that measures nothing of a real sweep).
        "backend": {"kind": "replay", "curves": "curves.json", "time_scale": 1.0,
                    "clock": "wall"},
        "search_space": {"epochs": {"value": EPOCHS},
                         "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
        "sampler": {"kind": "tpe", "seed": 0}, "n_trials": N_TRIALS,
        "concurrency": CONCURRENCY, "poll_interval_s": 0.05,
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def init_mlflow(uri: str) -> None:
    MlflowClient(tracking_uri=uri).search_experiments()  # creates the tables


def bench_ours(folder: Path) -> float:
    config = load_config(write_sweep(folder))
    (folder / ".gemini_sweep").mkdir()
    init_mlflow(config.tracking_url)
    start = time.monotonic()
    result = run_sweep(config)
    elapsed = time.monotonic() - start
    assert result.n_complete == N_TRIALS, result
    return elapsed


def bench_whole_process(folder: Path) -> float:
    """``gemini-sweep run`` in a fresh interpreter, start-up and the work after the last
    trial included (the MLflow tables created beforehand, as for ``bench_ours``)."""
    config_path = write_sweep(folder)
    config = load_config(config_path)
    (folder / ".gemini_sweep").mkdir()
    init_mlflow(config.tracking_url)
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "from sweeps.cli import main; main()", "run",
                    str(config_path), "-q"], cwd=folder, check=True,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def bench_hand_written(folder: Path) -> float:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    init_mlflow(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-hand-written")
    storage = f"sqlite:///{folder / 'optuna.db'}"
    study = optuna.create_study(storage=storage, study_name="bench")

    def objective(trial: optuna.Trial) -> float:
        multiplier = trial.suggest_float("learning_rate_multiplier", 0.1, 10.0, log=True)
        nearest = min(MULTIPLIERS, key=lambda m: abs(math.log(m / multiplier)))
        curve = curve_of(nearest)
        with mlflow.start_run(run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params({"learning_rate_multiplier": multiplier, "epochs": EPOCHS})
            per_poll = len(curve) // 10
            for poll in range(10):  # the job runs 2 s; poll every 0.2 s, log new points
                time.sleep(JOB_S / 10)
                for point in curve[poll * per_poll:(poll + 1) * per_poll]:
                    mlflow.log_metric("train_loss", point["loss"], step=int(point["step"]))
            return float(curve[-1]["loss"])

    start = time.monotonic()
    study.optimize(objective, n_trials=N_TRIALS, n_jobs=CONCURRENCY)
    return time.monotonic() - start


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    floor_s = math.ceil(N_TRIALS / CONCURRENCY) * JOB_S
    print(f"{N_TRIALS} trials, concurrency {CONCURRENCY}, {JOB_S:g} s jobs, "
          f"{EPOCHS * STEPS_PER_EPOCH}-point curves; floor {floor_s:g} s")
    with tempfile.TemporaryDirectory() as ours_dir, tempfile.TemporaryDirectory() as hand_dir, \
            tempfile.TemporaryDirectory() as whole_dir:
        ours_s = bench_ours(Path(ours_dir))
        print(f"ours (run_sweep):            {ours_s:6.2f} s  = {ours_s / floor_s:.3f} x floor")
        whole_s = bench_whole_process(Path(whole_dir))
        print(f"ours (whole `run` process):  {whole_s:6.2f} s  = {whole_s / floor_s:.3f} x floor")
        hand_s = bench_hand_written(Path(hand_dir))
        print(f"hand-written (n_jobs=8):     {hand_s:6.2f} s  = {hand_s / floor_s:.3f} x floor")


if __name__ == "__main__":
    main()
