"""Pruners of our own, beside Optuna's (``pruners/`` in Optuna's layout).

:class:`LeaderGapPruner` cancels a job only when it is far behind: its loss at an epoch is
more than ``ratio`` times the lowest loss any other trial had at that same epoch. Rank-based
rules (median, successive halving) cancel a job for being in the wrong half or third, which on
recorded curves removed exactly the configurations that learn late and win
(docs/cost_efficiency.md); a ratio to the leader keeps those, which trail by a few percent
early on, and still stops the learning rates that are hopelessly slow or unstable, which
trail by 30% and more.

Even a ratio cancels a winner that starts slowly: at a large batch the highest learning rate
often leads at epoch 2 by 1.4-2x and ends worse than a lower one. With ``spare_catching_up``
a trial behind by more than the ratio is kept while it closes the gap fast enough to catch
the leader by the last epoch: the gap (as a ratio) is extrapolated geometrically from its
last two epochs. A rate that is hopelessly slow or unstable does not close the gap and is
still cancelled.
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
        spare_catching_up: keep a trial whose gap to the leader, shrinking at its pace over
            the last epoch, would close by ``max_epochs`` (the trial's last epoch).
        max_epochs: the epochs a job runs, for ``spare_catching_up`` (a trial that searched
            ``epochs`` runs its own).
    """

    def __init__(self, ratio: float = 1.3, min_epochs: int = 2, *,
                 spare_catching_up: bool = False, max_epochs: int | None = None) -> None:
        if not ratio > 1.0:
            raise ValueError(f"ratio must be greater than 1, got {ratio}")
        if min_epochs < 1:
            raise ValueError(f"min_epochs must be at least 1, got {min_epochs}")
        if spare_catching_up and max_epochs is None:
            raise ValueError("spare_catching_up needs max_epochs, the epochs a job runs")
        self.ratio = ratio
        self.min_epochs = min_epochs
        self.spare_catching_up = spare_catching_up
        self.max_epochs = max_epochs

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        epoch = trial.last_step
        if epoch is None or epoch < self.min_epochs:
            return False
        sign = -1.0 if study.direction is StudyDirection.MAXIMIZE else 1.0
        others = [t for t in study.get_trials(deepcopy=False, states=_OTHERS)
                  if t.number != trial.number]
        mine = sign * trial.intermediate_values[epoch]
        leader = _leader_loss(others, epoch, sign)
        if leader is None:
            return False  # nothing to compare with, or a loss that a ratio cannot scale
        if math.isfinite(mine) and mine <= self.ratio * leader:
            return False
        return not (self.spare_catching_up and self._catches_up(trial, others, epoch, sign))

    def _catches_up(self, trial: FrozenTrial, others: list[FrozenTrial], epoch: int,
                    sign: float) -> bool:
        """Would the gap to the leader, shrinking as it did over the last epoch, be closed
        by the trial's last epoch?"""
        before = trial.intermediate_values.get(epoch - 1)
        leader_before = _leader_loss(others, epoch - 1, sign)
        leader_now = _leader_loss(others, epoch, sign)
        mine = sign * trial.intermediate_values[epoch]
        if before is None or leader_before is None or leader_now is None \
                or not (math.isfinite(mine) and mine > 0 and sign * before > 0):
            return False
        gap_now = math.log(mine / leader_now)
        gap_before = math.log(sign * before / leader_before)
        closing_per_epoch = gap_before - gap_now
        last_epoch = int(trial.params.get("epochs", self.max_epochs or epoch))
        epochs_left = last_epoch - epoch
        return closing_per_epoch > 0 and gap_now - closing_per_epoch * epochs_left <= 0.0


def _leader_loss(trials: list[FrozenTrial], epoch: int, sign: float) -> float | None:
    """The lowest positive finite loss any of ``trials`` reported at ``epoch``."""
    losses = [sign * t.intermediate_values[epoch] for t in trials
              if epoch in t.intermediate_values]
    leader = min((v for v in losses if math.isfinite(v)), default=None)
    return leader if leader is not None and leader > 0.0 else None


__all__ = ["LeaderGapPruner"]
