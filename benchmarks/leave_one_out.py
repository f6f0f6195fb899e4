"""Leave-one-set-out choice of the sweep policy's numbers (pure bookkeeping, no sweeps).

For each held-out curve set, a candidate policy is chosen on every *other* set's results, and
only the held-out set's results of that choice are reported: a figure never comes from numbers
picked on its own data. ``cost_efficiency.py --leave-one-out`` runs the sweeps and calls this.

Choice rule: the fewest cells (set x space) where the candidate reaches the target in under
``MIN_REACH`` of its sweeps, then the highest worst-cell reach rate, then the lowest
geometric mean of the token ratios to plain TPE: safety first, cost second, as the default
must never silently lose the winner. (Counting unsafe cells, not only the worst one, keeps
the choice meaningful when one set's target is out of every method's reach.)
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MIN_REACH = 0.9


@dataclass(frozen=True, slots=True)
class Cell:
    """One method on one set and space: its median-token ratio to TPE and how many of its
    sweeps reached the target."""

    space: str
    ratio: float
    reached: int
    sweeps: int

    @property
    def reach_rate(self) -> float:
        return self.reached / self.sweeps if self.sweeps else 0.0

    def __str__(self) -> str:
        ratio = ("never" if math.isinf(self.ratio)
                 else "n/a (tpe never)" if math.isnan(self.ratio) else f"{self.ratio:.2f}")
        return f"{ratio} ({self.reached}/{self.sweeps})"


@dataclass(frozen=True, slots=True)
class HeldOut:
    """The figure for one held-out set: the candidate chosen without it, and its cells."""

    held_out: str
    chosen: str
    chosen_on: tuple[str, ...]
    cells: tuple[Cell, ...]


Results = Mapping[tuple[str, str], Sequence[Cell]]  # (candidate, set) -> its cells


def geomean(ratios: Iterable[float]) -> float:
    values = list(ratios)
    if not values or any(math.isnan(r) for r in values):
        return math.nan
    return math.exp(statistics.fmean(math.log(r) for r in values))  # log(inf) is inf


def choose(candidates: Sequence[str], sets: Sequence[str], results: Results) -> str:
    """The candidate the choice rule picks from ``results`` of ``sets`` only."""
    def score(candidate: str) -> tuple[int, float, float]:
        cells = [cell for name in sets for cell in results[(candidate, name)]]
        unsafe = sum(cell.reach_rate < MIN_REACH for cell in cells)
        worst_reach = min(cell.reach_rate for cell in cells)
        cost = geomean(cell.ratio for cell in cells)
        cost = math.inf if math.isnan(cost) else cost
        return (unsafe, -worst_reach, cost)

    return min(candidates, key=score)


def leave_one_set_out(candidates: Sequence[str], sets: Sequence[str],
                      results: Results) -> list[HeldOut]:
    """For each set: the candidate chosen on all the others, reported on that set alone."""
    if len(sets) < 2:
        raise ValueError("leave-one-set-out needs at least two curve sets")
    figures = []
    for held_out in sets:
        others = tuple(name for name in sets if name != held_out)
        chosen = choose(candidates, others, results)
        figures.append(HeldOut(held_out=held_out, chosen=chosen, chosen_on=others,
                               cells=tuple(results[(chosen, held_out)])))
    return figures


LeaderPruner = tuple[float, int, bool]  # behind_leader's ratio, min_epochs, spare_catching_up


def policy_candidates(*, pruners: Sequence[LeaderPruner | None] = (
                          None, (1.3, 2, True), (2.0, 4, False)),
                      patiences: Sequence[int | None] = (None, 4),
                      start_trials: Sequence[int] = (6,)) -> dict[str, dict[str, Any]]:
    """Sweep-config fragments of the policy grid, by a name that spells the numbers.
    ``epochs.max`` is filled in per set (its recorded epochs).

    The grid leaves out what failed out of sample before these recordings existed: a
    behind-leader pruner at 1.3 from epoch 2 that spares nobody cancelled the late-learning
    winners, and patience 2 stopped jobs before late gains. It keeps their safer forms: the
    same pruner sparing trials that catch up, a pruner that waits (2.0 from epoch 4), and
    patience 4, each beside none at all. The stratified start stays at 6 trials: on two
    cores the grid could not also double for the start (``start_trials`` takes more)."""
    candidates: dict[str, dict[str, Any]] = {}
    for pruner, patience, start in itertools.product(pruners, patiences, start_trials):
        epochs: dict[str, Any] = {"mode": "from_curve"}
        if patience is not None:
            epochs["patience"] = patience
        method: dict[str, Any] = {"epochs": epochs, "sampler": {
            "n_startup_trials": start, "start": "stratified"}}
        pruner_name = "no-pruner"
        if pruner is not None:
            ratio, min_epochs, spare = pruner
            method["pruner"] = {"kind": "behind_leader", "ratio": ratio,
                                "min_epochs": min_epochs}
            pruner_name = f"leader{ratio}@{min_epochs}"
            if spare:
                method["pruner"]["spare_catching_up"] = True
                pruner_name += "+spare"
        name = (pruner_name + ("/no-patience" if patience is None else f"/patience{patience}")
                + f"/start{start}")
        candidates[name] = method
    return candidates


def print_figures(figures: Sequence[HeldOut]) -> None:
    """Each held-out set's cells and the geometric mean over every held-out cell."""
    print("\nleave-one-set-out: each set's figure comes from the candidate chosen on the "
          "others; cell: ratio to tpe (sweeps that reached the target)")
    for figure in figures:
        cells = ", ".join(f"{cell.space} {cell}" for cell in figure.cells)
        print(f"  {figure.held_out}: {figure.chosen}: {cells}")
    every = [cell for figure in figures for cell in figure.cells]
    worst = min((cell.reach_rate for cell in every), default=0.0)
    print(f"  geometric mean over {len(every)} held-out cells: "
          f"{geomean(cell.ratio for cell in every):.2f}; worst reach rate {worst:.0%}")
