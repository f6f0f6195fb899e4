"""Training tokens each search policy spends before it holds a near-best configuration.

Replays REAL recorded curve sets (``--curves FILE...``, made by
``scripts/record_curve_sets.py``; by default the three of ``configs/data/curves_<name>.json``:
local jobs, batch size 8/16/32 x eight learning-rate multipliers 0.3-10, 8 epochs, each cell
recorded with 3 seeds) through
``sweeps.run_sweep`` and the replay backend, on a simulated clock (no waiting: the clock jumps
to the next poll), with a tracker that only keeps the outcomes. The replay serves each trial
one seed of its cell (chosen by the trial's name, which holds the benchmark seed), as real
training varies run to run; so a rerun prints the same table and every method meets the same
runs (a paired comparison).

Two search spaces, because the services differ:

Each set's grid is read from its recordings (``curve_sets.grid_of``): the epochs searched go
up to its recorded epochs, the multiplier spans its recorded range, batch sizes are its own.

* ``vertex``: epochs and learning-rate multiplier. Vertex AI, where Gemini tuning lives, takes
  no batch size for Gemini models (it picks its own); the recordings at batch 16 (else the
  set's middle batch size) stand in.
  It does take an adapter size, which the recordings do not have: a Vertex sweep that
  searches it is a two-knob case like ``all``.
* ``all``: epochs, every recorded batch size and multiplier, as the local backend takes them.

Methods, with Optuna's defaults otherwise (TPE: ``n_startup_trials=10``):

* ``random``     random search, epochs searched in 1-8, no pruning;
* ``tpe``        TPE, epochs searched in 1-8, no pruning: the common way (ratio 1);
* ``tpe+sha``    TPE, epochs searched, successive halving (min_epochs 1, reduction factor 3);
* ``curve``      TPE, ``epochs: {mode: from_curve, max: 8}``, no pruning;
* ``curve+sha``  TPE, from_curve, successive halving (min_epochs 2, reduction factor 3);
* ``tpe-4start``  ``tpe`` with 4 random trials before TPE instead of 10: the control that
                 shows how much of ``policy``'s saving is its shorter random start alone;
* ``policy``     the default policy of ``configs/*.yaml`` (``tests/sweeps_tests/
                 test_cost_policies.py`` checks they agree), the candidate the
                 leave-one-set-out choice picked on every recorded set: from_curve, no
                 pruner, no patience, and TPE after 6 stratified random trials
                 (``sampler: {n_startup_trials: 6, start: stratified}``: they take every
                 batch size twice and one sixth of the multiplier's log range each);
* ``previous-policy`` the default before: from_curve with ``patience: 2``,
                 ``behind_leader`` 1.3 from epoch 2, the same start;
* ``informed``   (``all`` space only) a floor, not a policy: ``policy`` on the region that
                 holds the near-best runs (batch size 8, multiplier 1.69-7.75), as if the
                 search had nothing left to find. It does not set the target.

Quality. A sweep's incumbent is its best trial by its own objective (what ``export`` picks);
it is deployed at its plateau epoch, which never exceeds the epochs its job ran (so nothing is
credited that would need another job). Its quality is the loss at that epoch on the set's
held-out ``test_loss`` where every epoch of the recordings has one (a split no method selects
on), else on the validation loss, with a printed note (optimistic: sweeps select on it):

* ``observed``: as the job reported it (the number the user sees); the headline figure;
* ``mean of seeds``: the mean over the cell's 3 recordings at that epoch (what the
  configuration is worth, not what one lucky run showed); a check that the ranking is not
  luck.

Where plain TPE itself misses the target, its sweep counts every token it spent (the least
it would have needed), so a ratio there is an upper bound for the method.

Each table row ends with the geometric mean of the method's ratios over the datasets, and the
run ends with each method's geometric mean over every cell printed: the one figure the
default is chosen by. A cell that is never reached makes it infinite.

Cost: cumulative training tokens of every trial finished so far (pruned and stopped ones
too) in the order they finished, plus, with ``--concurrency`` above 1, what the jobs still
running had trained by then. A cancelled job is billed for the steps it trained, as the
local backend that recorded the curves reports it; the runner cancels at the end of the
epoch whose validation loss decided it, one poll (0.4 epoch here) at most later. The target
is fixed before any method runs, from the recordings alone (``curve_sets.target_of``): 2%
above the best value of any cell's seed-mean curve, smoothed over 3 epochs so a one-epoch dip
cannot set it, among the cells the space can propose. A sweep that never reaches it within
``n_trials`` counts as infinite; every ratio is printed with the share of sweeps that reached
the target, e.g. ``0.72 (28/30)``.

``--leave-one-out`` also runs the policy grid of ``leave_one_out.policy_candidates`` (behind-
leader pruner ratio and start epoch, sparing trials that catch up or not, or no pruner;
patience or none; start trials; ``--candidates`` narrows it) and, for each set, reports the
candidate chosen on the *other* sets only (safety first: every cell reaching the target in
90% of sweeps, then the lowest geometric mean), with reach rates, and the geometric mean
over the held-out cells.

``--oracle-bound`` (concurrency 1) also prints, per method, what reaching the target would
have cost with the same proposals and a perfect pruner: every trial before the one that
reaches it cancelled at epoch 2, that one stopped at its plateau. It tells whether better
pruning alone could reach a ratio, or whether the proposals must get there in fewer trials.
For scale, the same pruner with uniform random proposals at the recorded epochs, drawn
straight from the recordings (``random_proposals_bound``): what a search that knows nothing
of the space would pay if its pruning were perfect.

Run: ``python benchmarks/cost_efficiency.py [--curves FILE...] [--seeds 30] [--n-trials 40]
[--jobs 2] [--concurrency 1] [--oracle-bound] [--leave-one-out]``. About an hour on 2 cores
with the defaults (the run docs/cost_efficiency.md quotes); the same seeds print the same
table. With ``--concurrency`` above 1 (jobs in flight per sweep, for every method) the order
in which simultaneous events are handled depends on thread timing, and a rerun can differ by
a trial here and there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import multiprocessing
import pickle
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import optuna

from gemini_backend import LossSnapshot
from gemini_backend.errors import InvalidRequestError
from gemini_backend.replay.backend import ReplayBackend
from gemini_backend.replay.backend import ReplayRecord
from gemini_backend.replay.backend import load_curves
from gemini_backend.replay.backend import nearest_record
from sweeps import SweepConfig
from sweeps.config.schema import PlateauConfig
from sweeps.engine.runner import run_sweep
from sweeps.plateau.analysis import epoch_means
from sweeps.plateau.analysis import find_plateau
from sweeps.tracking.tracker import NullTracker
from sweeps.trial_record import TrialOutcome

# Run as a script (and in the spawned workers) the modules beside it import by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from curve_sets import TARGET_GAP  # noqa: E402
from curve_sets import Grid  # noqa: E402
from curve_sets import cell_means  # noqa: E402
from curve_sets import cell_of  # noqa: E402
from curve_sets import grid_of  # noqa: E402
from curve_sets import loss_by_epoch  # noqa: E402
from curve_sets import quality_field  # noqa: E402
from curve_sets import target_of  # noqa: E402
from leave_one_out import Cell  # noqa: E402
from leave_one_out import choose  # noqa: E402
from leave_one_out import leave_one_set_out  # noqa: E402
from leave_one_out import policy_candidates  # noqa: E402
from leave_one_out import print_figures  # noqa: E402

DATA_DIR = Path(__file__).resolve().parent.parent / "configs" / "data"
DEFAULT_CURVES = tuple(str(DATA_DIR / f"curves_{name}.json")
                       for name in ("next_number", "reverse_word", "digit_sum"))
TrialState = optuna.trial.TrialState
PERFECT_CANCEL_EPOCH = 2  # oracle_bound_to: the policy's min_epochs
RANDOM_BOUND_SWEEPS = 400  # simulated sweeps behind random_proposals_bound's median
EPOCH_S = 1.0  # simulated seconds per recorded epoch (the replay's time_scale is set so)
POLL_INTERVAL_S = 0.4  # about two polls per epoch: pruners and patience see every epoch
SPACE_NAMES = ("vertex", "all")
# The epochs' upper end (``high`` / ``max``) is replaced by each set's recorded epochs
# (method_for); 8 is the default sets' and the shipped configs'.
EPOCHS_SEARCHED = {"low": 1, "high": 8}
FROM_CURVE = {"mode": "from_curve", "max": 8}
METHODS: dict[str, dict[str, Any]] = {
    "random": {"sampler": {"kind": "random"}, "epochs": EPOCHS_SEARCHED},
    "tpe": {"epochs": EPOCHS_SEARCHED},
    "tpe+sha": {"epochs": EPOCHS_SEARCHED, "pruner": {
        "kind": "successive_halving", "min_epochs": 1, "reduction_factor": 3}},
    "curve": {"epochs": FROM_CURVE},
    "curve+sha": {"epochs": FROM_CURVE, "pruner": {
        "kind": "successive_halving", "min_epochs": 2, "reduction_factor": 3}},
    "tpe-4start": {"epochs": EPOCHS_SEARCHED, "sampler": {"n_startup_trials": 4}},
    # The candidate leave-one-set-out chose on every recorded set (docs/cost_efficiency.md).
    "policy": {"epochs": FROM_CURVE, "pruner": {"kind": "none"},
               "sampler": {"n_startup_trials": 6, "start": "stratified"}},
}
# The default before the out-of-sample recordings (chosen on the three sets it was reported
# on): kept to show what it does on data it never saw.
METHODS["previous-policy"] = {"epochs": {**FROM_CURVE, "patience": 2}, "pruner": {
    "kind": "behind_leader", "ratio": 1.3, "min_epochs": 2},
    "sampler": {"n_startup_trials": 6, "start": "stratified"}}
# A floor, not a policy: ``policy`` told where the best configurations are (read off the
# recordings: batch size 8, multiplier 1.69-7.75, the cells around 2.2, 3.6 and 6.0 that
# hold every dataset's near-best runs). What is left is the price of the runs themselves.
METHODS["informed"] = {**METHODS["policy"], "space": {
    "batch_size": {"value": 8}, "learning_rate_multiplier": {"low": 1.69, "high": 7.75,
                                                              "log": True}}}
# Floors run only in these spaces and are not run unless named (--methods): their region
# was read off the three default sets.
FLOORS = {"informed": ("all",)}
DEFAULT_METHODS = [m for m in METHODS if m not in FLOORS]
# The leave-one-set-out grid; a name spells its numbers (leave_one_out.policy_candidates).
CANDIDATES = policy_candidates()
ALL_METHODS = {**METHODS, **CANDIDATES}
QUALITIES = ("observed", "mean of seeds")


def method_for(method: dict[str, Any], grid: Grid, space: str) -> dict[str, Any]:
    """The method's config fragment on one set: epochs up to its recorded epochs, its space."""
    epochs = dict(method["epochs"])
    epochs["high" if "low" in epochs else "max"] = grid.max_epochs
    return {**method, "epochs": epochs, "space": method.get("space", grid.spaces()[space])}


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
    """One sweep: (cumulative tokens, incumbent quality by each measure) per finished trial."""

    points: tuple[tuple[float, tuple[float, ...]], ...]
    n_pruned: int
    n_stopped: int
    # Per point: the tokens had every earlier trial been cancelled at PERFECT_CANCEL_EPOCH
    # and this one stopped at its plateau (see oracle_bound_to).
    oracle_tokens: tuple[float, ...] = ()

    def tokens_to(self, target: float, quality: int) -> float:
        return next((tokens for tokens, q in self.points if q[quality] <= target), math.inf)

    def oracle_bound_to(self, target: float, quality: int) -> float:
        """What reaching the target would have cost with the same proposals and a perfect
        pruner: one that cancels every trial before the one that reaches it at epoch
        PERFECT_CANCEL_EPOCH (the policy's min_epochs) and knows when that one plateaus."""
        return next((bound for (_, q), bound in zip(self.points, self.oracle_tokens,
                                                    strict=True) if q[quality] <= target),
                    math.inf)


class RecordingTracker(NullTracker):
    """Keeps every finished trial in the order it finished, with when (on the simulated
    clock) it started and finished (MLflow is not the subject)."""

    def __init__(self, clock: SimClock) -> None:
        self._clock = clock
        self._started_s: dict[int, float] = {}
        self.finished: list[FinishedTrial] = []

    def trial_started(self, number: int, knobs: dict[str, Any], key: str,
                      job_ref: dict[str, str] | None) -> str | None:
        self._started_s.setdefault(number, self._clock())
        return None

    def record_trial(self, outcome: TrialOutcome) -> str | None:
        self.finished.append(FinishedTrial(outcome, self._started_s.get(outcome.number,
                                                                       self._clock()),
                                           self._clock()))
        return None


@dataclass(frozen=True, slots=True)
class FinishedTrial:
    outcome: TrialOutcome
    started_s: float
    finished_s: float

    def tokens_by(self, time_s: float) -> float:
        """Tokens its job had trained by ``time_s`` (the replay bills steps, at an even pace)."""
        if time_s >= self.finished_s:
            return float(self.outcome.training_tokens)
        if time_s <= self.started_s:
            return 0.0
        share = (time_s - self.started_s) / (self.finished_s - self.started_s)
        return share * self.outcome.training_tokens


def make_config(folder: Path, dataset: str, space: str, method: dict[str, Any], *,
                seed: int, n_trials: int, concurrency: int = 1) -> SweepConfig:
    """A replay sweep over the curves file ``dataset`` (a path)."""
    method = method_for(method, _truth(dataset).grid, space)
    data: dict[str, Any] = {
        "name": f"bench-{seed}", "dataset": {"path": str(_examples_beside(dataset)),
                                     "validation_split": 0.15, "seed": 0},
        "backend": {"kind": "replay", "curves": str(curves_path(dataset)),
                    "time_scale": _time_scale(dataset), "job_root": str(folder / "jobs")},
        "search_space": {"epochs": method["epochs"], **method["space"]},
        "sampler": {"kind": "tpe", **method.get("sampler", {}), "seed": seed},
        "n_trials": n_trials, "concurrency": concurrency, "poll_interval_s": POLL_INTERVAL_S,
        "storage": f"sqlite:///{folder / 'optuna.db'}", "config_dir": folder,
    }
    if "pruner" in method:
        data["pruner"] = method["pruner"]
    return SweepConfig.model_validate(data)


def _examples_beside(curves: str) -> Path:
    """The sweep config needs a dataset; the replay serves curves whatever it holds, so the
    set's own ``<name>.jsonl`` where it lies beside the curves, else a shipped one."""
    path = curves_path(curves)
    own = path.with_name(path.stem.removeprefix("curves_") + ".jsonl")
    return own if own.is_file() else DATA_DIR / "next_number.jsonl"


def curves_path(dataset: str) -> Path:
    """A curves file, or the name of a shipped set (``digit_sum``)."""
    return Path(dataset) if dataset.endswith(".json") else DATA_DIR / f"curves_{dataset}.json"


def set_name(curves: str) -> str:
    return Path(curves).stem.removeprefix("curves_")


def _time_scale(dataset: str) -> float:
    """Play the slowest recorded job at EPOCH_S per epoch."""
    truth = _truth(dataset)
    return EPOCH_S * truth.grid.max_epochs / min(r.duration_s for r in truth.records)


class Truth:
    """A curves file's grid, and the quality loss (held-out test loss where recorded) of the
    run the replay served a trial and of its cell."""

    def __init__(self, dataset: str) -> None:
        self.records = tuple(load_curves(curves_path(dataset)))
        self.grid = grid_of(self.records, dataset)
        self.field = quality_field(self.records)
        self.cell_mean = cell_means(self.records, self.field)

    def target(self, space: str) -> float:
        """Fixed before any method runs (curve_sets.target_of), in the space's cells."""
        batch = self.grid.vertex_batch_size if space == "vertex" else None
        return target_of(self.records, self.field, batch_size=batch)

    def quality(self, outcome: TrialOutcome, epoch: int) -> tuple[float, float]:
        record = self.served(outcome)
        return loss_by_epoch(record, self.field)[epoch], self.cell_mean[cell_of(record)][epoch]

    def served(self, outcome: TrialOutcome) -> ReplayRecord:
        """The recording the replay served the trial: of the trial's cell, the one whose
        validation curve it reported (read from what it reported, not from how the replay
        picks among a cell's seeds; recordings that report the same are judged alike)."""
        cell = cell_of(self.records[nearest_record(self.records, outcome.knobs, epochs=1)])
        served = outcome.eval_epoch_loss or ()
        matches = [r for r in self.records if cell_of(r) == cell
                   and all(abs(loss_by_epoch(r, "eval_loss")[e] - loss) <= 1e-9
                           for e, loss in enumerate(served, start=1))]
        if len({tuple(loss_by_epoch(r, self.field).items()) for r in matches}) != 1:
            raise AssertionError(f"trial {outcome.number}: {len(matches)} recordings of cell "
                                 f"{cell} match the curve it reported, and their "
                                 f"{self.field} differs")
        return matches[0]

    @cache  # noqa: B019 (one Truth per dataset, kept for the run)
    def at_plateau(self, index: int) -> Served:
        """A record as a from_curve job run to its end would report it: its plateau epoch,
        the objective (``plateau_loss``, the default) and its quality there."""
        record = self.records[index]
        # The replay serves these points as snapshots; the runner scores them this way.
        train, evals = epoch_means([LossSnapshot(step=p.step, epoch=p.epoch, loss=p.loss,
                                                 eval_loss=p.eval_loss) for p in record.curve])
        plateau = find_plateau(train, evals, **PlateauConfig().model_dump())
        assert record.tokens_per_epoch, "the recorded curve sets give tokens_per_epoch"
        return Served(per_epoch=record.tokens_per_epoch, plateau_epoch=plateau.epoch,
                      objective=plateau.loss,
                      quality=(loss_by_epoch(record, self.field)[plateau.epoch],
                               self.cell_mean[cell_of(record)][plateau.epoch]))


@dataclass(frozen=True, slots=True)
class Served:
    """One proposal of random_proposals_bound: what its job would cost and report."""

    per_epoch: float
    plateau_epoch: int
    objective: float
    quality: tuple[float, ...]


@cache
def _truth(dataset: str) -> Truth:
    return Truth(dataset)


def run_one(task: tuple[str, str, str, int, int, int]) -> tuple[tuple[str, str, str], Trace]:
    space, dataset, method, seed, n_trials, concurrency = task
    with tempfile.TemporaryDirectory(prefix="cost-bench-") as tmp:
        folder = Path(tmp)
        config = make_config(folder, dataset, space, ALL_METHODS[method], seed=seed,
                             n_trials=n_trials, concurrency=concurrency)
        clock = SimClock()
        backend = ReplayBackend(config.backend, base_dir=folder, clock=clock)  # type: ignore[arg-type]
        tracker = RecordingTracker(clock)
        run_sweep(config, backend=backend, tracker=tracker, clock=clock, sleep=clock.sleep)
    return (space, dataset, method), trace_of(tracker.finished, _truth(dataset))


class TraceCache:
    """Finished sweeps' traces on disk, one file per task, named by everything that decides
    the sweep: the space, the curves file's content, the method's config, the seed, the
    trials and the concurrency."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, task: tuple[str, str, str, int, int, int]) -> Path:
        space, dataset, method, seed, n_trials, concurrency = task
        fingerprint = json.dumps([space, _file_digest(dataset), ALL_METHODS[method], seed,
                                  n_trials, concurrency], sort_keys=True)
        digest = hashlib.sha256(fingerprint.encode("utf-8")).hexdigest()[:20]
        return self.folder / f"{set_name(dataset)}-{space}-seed{seed}-{digest}.pickle"

    def add_to(self, traces: dict[tuple[str, str, str], list[Trace]],
               task: tuple[str, str, str, int, int, int]) -> bool:
        """Add the task's kept trace to ``traces``; False when none is kept."""
        try:
            trace = pickle.loads(self._path(task).read_bytes())
        except (OSError, pickle.UnpicklingError, EOFError):
            return False
        traces.setdefault(task[:3], []).append(trace)
        return True

    def store(self, task: tuple[str, str, str, int, int, int], trace: Trace) -> None:
        path = self._path(task)
        partial = path.with_suffix(".tmp")
        partial.write_bytes(pickle.dumps(trace))
        partial.replace(path)


@cache
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def trace_of(finished: Sequence[FinishedTrial], truth: Truth) -> Trace:
    """The incumbent's quality and the tokens spent so far, each time a trial finishes.

    Spent: every finished trial's tokens plus what the jobs still running have trained by
    then (with ``concurrency`` > 1 those are on the bill too).
    """
    points: list[tuple[float, tuple[float, ...]]] = []
    oracle_tokens: list[float] = []
    # Every epoch costs the same (the training set's tokens); a cancelled job also paid for
    # part of its next epoch, so the cheapest finished trial's ratio is the exact price.
    per_epoch = min((t.outcome.training_tokens / len(t.outcome.eval_epoch_loss)
                     for t in finished if t.outcome.eval_epoch_loss), default=0.0)
    cancelled_early = 0.0  # the earlier trials' tokens, each cancelled at the oracle's epoch
    incumbent_value = math.inf
    quality: tuple[float, ...] = (math.inf, math.inf)
    n_pruned = n_stopped = 0
    for trial in finished:
        outcome = trial.outcome
        tokens = sum(other.tokens_by(trial.finished_s) for other in finished)
        n_pruned += outcome.state is TrialState.PRUNED
        n_stopped += outcome.stopped_after_epoch is not None
        is_better = outcome.state is TrialState.COMPLETE and outcome.value is not None \
            and outcome.value < incumbent_value
        if is_better:
            incumbent_value = outcome.value  # type: ignore[assignment]
            quality = truth.quality(outcome, outcome.plateau_epoch or 1)
        points.append((tokens, quality))
        reach_tokens = (per_epoch * outcome.plateau_epoch if outcome.plateau_epoch
                        else outcome.training_tokens)
        oracle_tokens.append(cancelled_early + reach_tokens)
        cancelled_early += min(outcome.training_tokens, per_epoch * PERFECT_CANCEL_EPOCH)
    return Trace(points=tuple(points), n_pruned=n_pruned, n_stopped=n_stopped,
                 oracle_tokens=tuple(oracle_tokens))


def _quiet() -> None:
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", nargs="+", default=list(DEFAULT_CURVES), metavar="FILE",
                        help="recorded curve sets (scripts/record_curve_sets.py)")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--n-trials", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2, help="sweeps run at once")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs in flight per sweep")
    parser.add_argument("--spaces", nargs="+", default=list(SPACE_NAMES), choices=SPACE_NAMES)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS,
                        choices=list(ALL_METHODS))
    parser.add_argument("--leave-one-out", action="store_true",
                        help="also run the policy grid (leave_one_out.policy_candidates) and "
                             "report each set on the candidate chosen on the other sets")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES),
                        choices=list(CANDIDATES), metavar="NAME",
                        help="with --leave-one-out: the policies to choose among "
                             "(default: the whole grid)")
    parser.add_argument("--keep-traces", type=Path, metavar="DIR",
                        help="keep each sweep's trace in DIR and reuse those already there: "
                             "a run can be split or resumed (clear DIR when the code or the "
                             "recordings change)")
    parser.add_argument("--oracle-bound", action="store_true",
                        help="also print what a perfect pruner would have spent (concurrency 1)")
    args = parser.parse_args()
    _quiet()
    curves = [str(Path(path).resolve()) for path in args.curves]
    for path in curves:
        try:
            truth = _truth(path)
        except (InvalidRequestError, ValueError) as exc:
            raise SystemExit(f"--curves: {exc}") from None
        if truth.field != "test_loss":
            print(f"note: {path} records no test_loss: quality is judged on the validation "
                  "loss the sweeps select on (optimistic)")
    methods = ["tpe", *[m for m in args.methods if m != "tpe"]]  # the ratio's base
    if args.leave_one_out:
        methods += [m for m in args.candidates if m not in methods]
    print(f"optuna {optuna.__version__}; {args.seeds} seeds x {args.n_trials} trials per "
          f"sweep; target: within {TARGET_GAP:.0%} of the best smoothed seed-mean curve of "
          "the space's recorded cells (fixed before any method runs)")
    tasks = [(space, dataset, method, seed, args.n_trials, args.concurrency)
             for space in args.spaces for dataset in curves
             for method in methods_in(space, methods) for seed in range(args.seeds)]
    started_s = time.monotonic()
    traces: dict[tuple[str, str, str], list[Trace]] = {}
    kept = TraceCache(args.keep_traces) if args.keep_traces else None
    to_run = [task for task in tasks if kept is None or not kept.add_to(traces, task)]
    # Each worker silences its own logging; run_one leaves a caller's logging alone.
    with multiprocessing.get_context("spawn").Pool(args.jobs, initializer=_quiet) as pool:
        for task, trace in zip(to_run, pool.imap(run_one, to_run, chunksize=4), strict=True):
            traces.setdefault(trace[0], []).append(trace[1])
            if kept is not None:
                kept.store(task, trace[1])
    print(f"({len(to_run)} sweeps in {time.monotonic() - started_s:.0f} s"
          + (f"; {len(tasks) - len(to_run)} read from {args.keep_traces}" if kept else "")
          + ")")
    ratios: dict[str, list[float]] = {}
    printed = [m for m in methods if m not in CANDIDATES or m in args.methods]
    for space in args.spaces:
        targets = {d: _truth(d).target(space) for d in curves}
        for index, quality in enumerate(QUALITIES):
            in_space = methods_in(space, printed)
            table = print_table(space, quality, index, targets, in_space, traces)
            for method, cells in table.items():
                ratios.setdefault(method, []).extend(c.ratio for c in cells)
            if args.oracle_bound and args.concurrency == 1:
                print_oracle_bound(space, index, targets, in_space, traces, args.n_trials)
    # One figure per method to choose the default by: every cell counts, and a cell
    # that is not reached makes it infinite (a policy that misses is not cheap).
    print("\ngeometric mean of the ratios to tpe over every cell printed above "
          "(floors: their spaces only):")
    for method, method_ratios in ratios.items():
        print(f"  {method}: {_fmt_ratio(_geomean(method_ratios))} over "
              f"{len(method_ratios)} cells")
    if args.leave_one_out:
        results = {(method, set_name(d)): [cell_result(space, d, method, traces)
                                           for space in args.spaces]
                   for method in args.candidates for d in curves}
        names = [set_name(d) for d in curves]
        print_figures(leave_one_set_out(args.candidates, names, results))
        print(f"  chosen on every set (what would ship): "
              f"{choose(args.candidates, names, results)}")


def cell_result(space: str, dataset: str, method: str,
                traces: dict[tuple[str, str, str], list[Trace]],
                quality: int = QUALITIES.index("observed")) -> Cell:
    """One method on one set and space: median tokens to the target over TPE's, and reach."""
    target = _truth(dataset).target(space)
    costs = [t.tokens_to(target, quality) for t in traces[(space, dataset, method)]]
    base = _tpe_tokens_to(space, dataset, target, quality, traces)
    median = _median(costs)
    ratio = median / base if math.isfinite(base) and base > 0 else math.nan
    return Cell(space=space, ratio=ratio, reached=sum(math.isfinite(c) for c in costs),
                sweeps=len(costs))


@cache
def _random_sweeps(space: str, dataset: str, n_trials: int) -> tuple[tuple[int, ...], ...]:
    """RANDOM_BOUND_SWEEPS sweeps of uniform random proposals over the space (the multiplier
    log-uniform), each proposal the index of the record the replay would serve it."""
    records = _truth(dataset).records
    rng = random.Random(f"{space}/{dataset}")
    return tuple(tuple(nearest_record(records, _random_knobs(space, dataset, rng), epochs=1,
                                      tie_break=str(rng.random()))
                       for _ in range(n_trials))
                 for _ in range(RANDOM_BOUND_SWEEPS))


def _random_knobs(space: str, dataset: str, rng: random.Random) -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    for name, spec in _truth(dataset).grid.spaces()[space].items():
        if "value" in spec:
            knobs[name] = spec["value"]
        elif "choices" in spec:
            knobs[name] = rng.choice(spec["choices"])
        else:
            low, high = math.log(spec["low"]), math.log(spec["high"])
            knobs[name] = math.exp(rng.uniform(low, high))
    return knobs


def random_proposals_bound(space: str, dataset: str, target: float, quality: int,
                           n_trials: int) -> float:
    """What a search that knows nothing of the space pays with the perfect pruner of
    ``oracle_bound_to``: median tokens over RANDOM_BOUND_SWEEPS simulated sweeps of uniform
    random proposals, drawn straight from the recordings (no Optuna, no runner), scored as
    ``trace_of`` scores a sweep. A policy's proposals must beat these by a wide margin, from
    the first trials on, for its real pruning (which cannot know the winner) to come near."""
    truth = _truth(dataset)
    return _median([perfect_pruner_cost([truth.at_plateau(i) for i in sweep], target, quality)
                    for sweep in _random_sweeps(space, dataset, n_trials)])


def perfect_pruner_cost(served: Sequence[Served], target: float, quality: int) -> float:
    """Tokens until the incumbent (the best objective so far, what ``export`` picks) reaches
    ``target``: every proposal before the one that makes it so cancelled at
    PERFECT_CANCEL_EPOCH, that one stopped at its plateau; infinite if it never does."""
    spent = 0.0
    incumbent: Served | None = None
    for proposal in served:
        if incumbent is None or proposal.objective < incumbent.objective:
            incumbent = proposal
            if incumbent.quality[quality] <= target:
                return spent + proposal.per_epoch * proposal.plateau_epoch
        spent += proposal.per_epoch * PERFECT_CANCEL_EPOCH
    return math.inf


def methods_in(space: str, methods: list[str]) -> list[str]:
    return [m for m in methods if space in FLOORS.get(m, (space,))]


def print_table(space: str, quality: str, index: int, targets: dict[str, float],
                methods: list[str],
                traces: dict[tuple[str, str, str], list[Trace]]) -> dict[str, list[Cell]]:
    """Print one space x quality table; return each method's cells (ratio to tpe, reach)."""
    datasets = list(targets)
    print(f"\nspace {space}, quality = {quality}; each cell: median tokens to the target, "
          "ratio to tpe (sweeps that reached the target)")
    print("targets: " + ", ".join(f"{set_name(d)} {_truth(d).field} <= {t:.4f}"
                                  for d, t in targets.items()))
    print("| method | " + " | ".join(set_name(d) for d in datasets)
          + " | geometric mean | pruned / stopped per sweep |")
    print("|---|" + "---:|" * len(datasets) + "---:|---:|")
    table: dict[str, list[Cell]] = {}
    for method in methods:
        texts = []
        for dataset in datasets:
            cell = cell_result(space, dataset, method, traces, index)
            median = _median([t.tokens_to(targets[dataset], index)
                              for t in traces[(space, dataset, method)]])
            texts.append(f"{_fmt(median)}, {cell}")
            table.setdefault(method, []).append(cell)
        all_runs = [t for d in datasets for t in traces[(space, d, method)]]
        pruned = statistics.mean(t.n_pruned for t in all_runs)
        stopped = statistics.mean(t.n_stopped for t in all_runs)
        ratios = [c.ratio for c in table[method]]
        print(f"| {method} | " + " | ".join(texts)
              + f" | {_fmt_ratio(_geomean(ratios))} | {pruned:.1f} / {stopped:.1f} |")
    return table


def _tpe_tokens_to(space: str, dataset: str, target: float, index: int,
                   traces: dict[tuple[str, str, str], list[Trace]]) -> float:
    """Plain TPE's median tokens to the target: the base of every ratio. A TPE sweep that
    never reached it counts what it spent in all its trials, the least it would have needed:
    a ratio to that base can only flatter TPE, and a cell TPE mostly misses still compares."""
    return _median([_at_least(t, t.tokens_to(target, index))
                    for t in traces[(space, dataset, "tpe")]])


def _at_least(trace: Trace, tokens: float) -> float:
    return tokens if math.isfinite(tokens) else (trace.points[-1][0] if trace.points else 0.0)


def print_oracle_bound(space: str, index: int, targets: dict[str, float], methods: list[str],
                       traces: dict[tuple[str, str, str], list[Trace]], n_trials: int) -> None:
    """How far better pruning alone could go: each method's proposals, with every trial
    before the one that reaches the target cancelled at PERFECT_CANCEL_EPOCH; and, for
    scale, uniform random proposals with the same pruner."""
    print(f"perfect pruner, same proposals (every trial before the one that reaches the "
          f"target cancelled at epoch {PERFECT_CANCEL_EPOCH}): median tokens (ratio to tpe)")
    bounds = {method: {dataset: _median([t.oracle_bound_to(target, index)
                                         for t in traces[(space, dataset, method)]])
                       for dataset, target in targets.items()}
              for method in methods}
    bounds[f"random proposals at the recorded epochs ({RANDOM_BOUND_SWEEPS} simulated "
           "sweeps)"] = {dataset: random_proposals_bound(space, dataset, target, index,
                                                         n_trials)
                         for dataset, target in targets.items()}
    base = {dataset: _tpe_tokens_to(space, dataset, target, index, traces)
            for dataset, target in targets.items()}
    for label, cells in bounds.items():
        print(f"  {label}: " + " | ".join(f"{_fmt(bound)} ({bound / base[dataset]:.2f})"
                                          for dataset, bound in cells.items()))


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan


def _geomean(ratios: list[float]) -> float:
    if not ratios or any(math.isnan(r) for r in ratios):
        return math.nan
    return math.exp(statistics.fmean(math.log(r) for r in ratios))  # log(inf) is inf


def _fmt_ratio(ratio: float) -> str:
    if math.isnan(ratio):
        return "n/a"
    return "inf (a cell not reached)" if math.isinf(ratio) else f"{ratio:.2f}"


def _fmt(tokens: float) -> str:
    return f"{tokens:,.0f}" if math.isfinite(tokens) else "not reached"


if __name__ == "__main__":
    main()
