"""Pruners of our own, beside Optuna's (``pruners/`` in Optuna's layout).

:class:`LeaderGapPruner` cancels a job only when it is far behind: its loss at an epoch is
more than ``ratio`` times the lowest loss any other trial had at that same epoch. Rank-based
rules (median, successive halving) cancel a job for being in the wrong half or third, which on
recorded curves removed exactly the configurations that learn late and win
(docs/cost_efficiency.md); a ratio to the leader keeps those, which trail by a few percent
early on, and still stops the learning rates that are hopelessly slow or unstable, which
trail by 30% and more.
"""

from __future__ import annotations

import math

from optuna.pruners import BasePruner
from optuna.study import Study
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

_OTHERS = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class LeaderGapPruner(BasePruner):
    """Prune a trial whose loss at epoch ``k >= min_epochs`` exceeds ``ratio`` x the lowest
    loss another trial reported at epoch ``k``.

    Intermediate values are losses (positive). In a maximized study the runner reports
    ``-loss`` (see the sweep loop), and this pruner turns it back. Trials still running count
    too, so with several jobs in flight the first to fall behind is stopped early.

    Args:
        ratio: how far behind the leader, as a factor (> 1), before a job is cancelled.
        min_epochs: no job is cancelled before it has reported this many epochs.
    """

    def __init__(self, ratio: float = 1.3, min_epochs: int = 2) -> None:
        if not ratio > 1.0:
            raise ValueError(f"ratio must be greater than 1, got {ratio}")
        if min_epochs < 1:
            raise ValueError(f"min_epochs must be at least 1, got {min_epochs}")
        self.ratio = ratio
        self.min_epochs = min_epochs

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        epoch = trial.last_step
        if epoch is None or epoch < self.min_epochs:
            return False
        sign = -1.0 if study.direction is StudyDirection.MAXIMIZE else 1.0
        mine = sign * trial.intermediate_values[epoch]
        others = [
            sign * t.intermediate_values[epoch]
            for t in study.get_trials(deepcopy=False, states=_OTHERS)
            if t.number != trial.number and epoch in t.intermediate_values
        ]
        leader = min((v for v in others if math.isfinite(v)), default=None)
        if leader is None or leader <= 0.0:
            return False  # nothing to compare with, or a loss that a ratio cannot scale
        return not math.isfinite(mine) or mine > self.ratio * leader


__all__ = ["LeaderGapPruner"]
