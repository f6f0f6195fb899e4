"""Training tokens each search policy spends before it holds a near-best configuration.

Replays the REAL recorded curves of ``configs/data/curves_<dataset>.json`` (made by
``scripts/record_curve_sets.py``: 18 local jobs per dataset, batch 8/16/32 x multiplier
0.3-10, 8 epochs each) through ``sweeps.run_sweep`` and the replay backend, on a simulated
clock (no waiting: the clock jumps to the next poll), with ``NullTracker``. Methods, all with
the same space (batch {8, 16, 32}, multiplier 0.3-10 log) and Optuna 5 defaults otherwise:

* ``random``    random search, epochs searched in 1-8, no pruning;
* ``tpe``       Optuna TPE, epochs searched in 1-8, no pruning (the common way; ratio 1);
* ``sha``       TPE, epochs searched, successive halving (min_epochs 1, reduction factor 3);
* ``curve``     TPE, ``epochs: {mode: from_curve, max: 8}``, no pruning;
* ``curve+sha`` TPE, from_curve and successive halving.

The quality of a sweep's incumbent (its best trial by its own objective) is one quantity for
every method: the recorded validation loss at the epoch the sweep recommends, looked up in
the full 8-epoch recording of the configuration the replay backend served. A recommendation
beyond the epochs a trial ran is scored at that epoch without charging the re-run it would
need (this favours the epoch-searching baselines). Cost = cumulative training tokens of every
trial finished so far (pruned ones too), in completion order (concurrency 1). The target is
2% above the best quality any method's incumbent reached on that dataset; a run that never
reaches it within ``n_trials`` counts as infinite (reported as the success rate).

Run: ``python benchmarks/cost_efficiency.py [--seeds 10] [--n-trials 40]``. Prints the table.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from gemini_backend.replay import ReplayBackend
from gemini_backend.replay import load_curves
from gemini_backend.replay import nearest_record
from sweeps import SweepConfig
from sweeps._trial_state import TrialOutcome
from sweeps.runner import run_sweep
from sweeps.tracking import NullTracker

DATA_DIR = Path(__file__).resolve().parent.parent / "configs" / "data"
DATASETS = ("next_number", "reverse_word", "digit_sum")
TrialState = optuna.trial.TrialState
MAX_EPOCHS = 8
TARGET_GAP = 0.02
EPOCH_S = 1.0  # simulated seconds per recorded epoch (the replay's time_scale is set so)
POLL_INTERVAL_S = 0.4  # about two polls per epoch: the pruner sees every epoch
SHA = {"kind": "successive_halving", "min_epochs": 1, "reduction_factor": 3}
SHA2 = {"kind": "successive_halving", "min_epochs": 2, "reduction_factor": 3}
METHODS: dict[str, dict[str, Any]] = {
    "random": {"sampler": "random", "from_curve": False, "pruner": None},
    "tpe": {"sampler": "tpe", "from_curve": False, "pruner": None},
    "sha": {"sampler": "tpe", "from_curve": False, "pruner": SHA},
    "curve": {"sampler": "tpe", "from_curve": True, "pruner": None},
    "curve+sha": {"sampler": "tpe", "from_curve": True, "pruner": SHA},
    # Variants (not in the default run): 5 startup trials instead of TPE's 10, SHA from 2.
    "tpe/5": {"sampler": "tpe", "from_curve": False, "pruner": None, "startup": 5},
    "curve/5": {"sampler": "tpe", "from_curve": True, "pruner": None, "startup": 5},
    "curve+sha/5": {"sampler": "tpe", "from_curve": True, "pruner": SHA, "startup": 5},
    "curve+sha2/5": {"sampler": "tpe", "from_curve": True, "pruner": SHA2, "startup": 5},
}
DEFAULT_METHODS = ("random", "tpe", "sha", "curve", "curve+sha")


class SimClock:
    """Simulated time shared by the runner and the replay backend: sleeping advances it."""

    def __init__(self) -> None:
        self.now_s = 1_000_000.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds


@dataclass(frozen=True, slots=True)
class Trace:
    """One sweep: (cumulative tokens, incumbent quality) after each finished trial."""

    points: tuple[tuple[float, float], ...]
    n_pruned: int

    def tokens_to(self, target: float) -> float:
        return next((tokens for tokens, quality in self.points if quality <= target), math.inf)

    @property
    def best_quality(self) -> float:
        return min((q for _, q in self.points), default=math.inf)


def make_config(folder: Path, dataset: str, method: dict[str, Any], *, seed: int,
                n_trials: int) -> SweepConfig:
    data: dict[str, Any] = {
        "name": "bench", "dataset": {"path": str(DATA_DIR / f"{dataset}.jsonl"),
                                     "validation_split": 0.15, "seed": 0},
        "backend": {"kind": "replay", "curves": str(DATA_DIR / f"curves_{dataset}.json"),
                    "time_scale": _time_scale(dataset), "job_root": str(folder / "jobs")},
        "search_space": {"epochs": {"low": 1, "high": MAX_EPOCHS},
                         "batch_size": {"choices": [8, 16, 32]},
                         "learning_rate_multiplier": {"low": 0.3, "high": 10.0, "log": True}},
        "sampler": {"kind": method["sampler"], "seed": seed,
                    "n_startup_trials": method.get("startup")},
        "n_trials": n_trials, "concurrency": 1, "poll_interval_s": POLL_INTERVAL_S,
        "storage": f"sqlite:///{folder / 'optuna.db'}", "config_dir": folder,
    }
    if method["pruner"]:
        data["pruner"] = method["pruner"]
    if method["from_curve"]:
        data["search_space"]["epochs"] = {"mode": "from_curve", "max": MAX_EPOCHS}
    return SweepConfig.model_validate(data)


class RecordingTracker(NullTracker):
    """Keeps every finished trial in the order it finished (MLflow is not the subject)."""

    def __init__(self) -> None:
        self.outcomes: list[TrialOutcome] = []

    def record_trial(self, outcome: TrialOutcome) -> str | None:
        self.outcomes.append(outcome)
        return None


def _time_scale(dataset: str) -> float:
    """Play the slowest recorded job at EPOCH_S per epoch (recorded jobs took 1-5 s)."""
    records = load_curves(DATA_DIR / f"curves_{dataset}.json")
    return EPOCH_S * MAX_EPOCHS / min(r.duration_s for r in records)


def run_one(dataset: str, method: dict[str, Any], *, seed: int, n_trials: int,
            quality_of: Callable[[dict[str, Any], int], float]) -> Trace:
    with tempfile.TemporaryDirectory(prefix="cost-bench-") as tmp:
        folder = Path(tmp)
        config = make_config(folder, dataset, method, seed=seed, n_trials=n_trials)
        clock = SimClock()
        backend = ReplayBackend(config.backend, base_dir=folder, clock=clock)  # type: ignore[arg-type]
        tracker = RecordingTracker()
        run_sweep(config, backend=backend, tracker=tracker, clock=clock, sleep=clock.sleep)
    return _trace(tracker.outcomes, quality_of)


def _trace(outcomes: list[TrialOutcome],
           quality_of: Callable[[dict[str, Any], int], float]) -> Trace:
    points: list[tuple[float, float]] = []
    tokens, incumbent_value, incumbent_quality = 0.0, math.inf, math.inf
    for outcome in outcomes:
        tokens += outcome.training_tokens
        is_better = outcome.state is TrialState.COMPLETE and outcome.value is not None \
            and outcome.value < incumbent_value
        if is_better:
            incumbent_value = outcome.value  # type: ignore[assignment]
            epochs = outcome.recommended_epochs or outcome.plateau_epoch or 1
            incumbent_quality = quality_of(outcome.knobs, min(epochs, MAX_EPOCHS))
        points.append((tokens, incumbent_quality))
    n_pruned = sum(o.state is TrialState.PRUNED for o in outcomes)
    return Trace(points=tuple(points), n_pruned=n_pruned)


def truth_table(dataset: str) -> Callable[[dict[str, Any], int], float]:
    """Recorded validation loss of the configuration the replay served, at ``epoch``."""
    records = tuple(load_curves(DATA_DIR / f"curves_{dataset}.json"))

    def quality_of(knobs: dict[str, Any], epoch: int) -> float:
        record = records[nearest_record(records, knobs, epochs=1)]
        by_epoch = {p.epoch: p.eval_loss for p in record.curve if p.eval_loss is not None}
        return float(by_epoch[epoch])

    return quality_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--n-trials", type=int, default=40)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        choices=list(METHODS))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    print(f"optuna {optuna.__version__}; TPE defaults (n_startup_trials=10); "
          f"{args.seeds} seeds x {args.n_trials} trials; target: within {TARGET_GAP:.0%} "
          "of the best incumbent any method reached")
    for dataset in args.datasets:
        started_s = time.monotonic()
        quality_of = truth_table(dataset)
        traces = {name: [run_one(dataset, METHODS[name], seed=seed, n_trials=args.n_trials,
                                 quality_of=quality_of) for seed in range(args.seeds)]
                  for name in args.methods}
        print_table(dataset, traces, time.monotonic() - started_s)


def print_table(dataset: str, traces: dict[str, list[Trace]], elapsed_s: float) -> None:
    best = min(t.best_quality for runs in traces.values() for t in runs)
    target = best * (1 + TARGET_GAP)
    base = _median([t.tokens_to(target) for t in traces.get("tpe", [])])
    print(f"\n{dataset}: best validation loss {best:.4f}, target <= {target:.4f} "
          f"({elapsed_s:.0f} s)")
    print("| method    | median tokens to target | vs tpe | reached | pruned/sweep |")
    print("|-----------|------------------------:|-------:|--------:|-------------:|")
    for name, runs in traces.items():
        costs = [t.tokens_to(target) for t in runs]
        median = _median(costs)
        ratio = median / base if math.isfinite(base) and base > 0 else math.nan
        reached = sum(math.isfinite(c) for c in costs)
        pruned = statistics.mean(t.n_pruned for t in runs)
        print(f"| {name:<9} | {_fmt(median):>23} | {ratio:>6.2f} | {reached:>3}/{len(runs):<3} "
              f"| {pruned:>12.1f} |")


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _fmt(tokens: float) -> str:
    return f"{tokens:,.0f}" if math.isfinite(tokens) else "not reached"


if __name__ == "__main__":
    main()
