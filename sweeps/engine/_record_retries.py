"""Trials whose MLflow record failed, written again later by the same process.

The tracker already retries each write a few times within seconds (and MLflow's HTTP client
retries each request), which rides out a blip. A tracking server that is down for minutes
(restart, upgrade, network cut) needs more: the trial's record is tried again after 5 s,
10 s, 20 s ... up to ``max_delay_s``, for ``max_rounds`` rounds (about 6 minutes with the
defaults) while the sweep goes on with its other jobs. The trial is told to Optuna only once
its run is written (invariant 2), so meanwhile it stays RUNNING and keeps its lease; after
the last round it is left to the next ``gemini-sweep run`` (or a live worker) to record.
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeps.trial_record import TrialOutcome

FIRST_DELAY_S = 5.0
MAX_DELAY_S = 120.0
MAX_ROUNDS = 6


@dataclass(slots=True)
class _Pending:
    outcome: TrialOutcome
    due_s: float
    rounds: int


class RecordRetries:
    """Failed records waiting for their next try; time is the sweep loop's clock."""

    def __init__(self, *, first_delay_s: float = FIRST_DELAY_S,
                 max_delay_s: float = MAX_DELAY_S, max_rounds: int = MAX_ROUNDS) -> None:
        self.first_delay_s = first_delay_s
        self.max_delay_s = max_delay_s
        self.max_rounds = max_rounds
        self._pending: dict[int, _Pending] = {}
        self._rounds: dict[int, int] = {}

    def schedule(self, outcome: TrialOutcome, now_s: float) -> float | None:
        """Plan the next try; its delay in seconds, or None when the rounds are used up."""
        rounds = self._rounds.get(outcome.number, 0)
        if rounds >= self.max_rounds:
            self._rounds.pop(outcome.number, None)
            return None
        delay_s = min(self.max_delay_s, self.first_delay_s * 2 ** rounds)
        self._rounds[outcome.number] = rounds + 1
        self._pending[outcome.number] = _Pending(outcome, now_s + delay_s, rounds + 1)
        return delay_s

    def due(self, now_s: float) -> list[TrialOutcome]:
        """The records to try again now (removed from the waiting list)."""
        ready = [p.outcome for p in self._pending.values() if p.due_s <= now_s]
        for outcome in ready:
            del self._pending[outcome.number]
        return ready

    def succeeded(self, number: int) -> None:
        self._rounds.pop(number, None)

    @property
    def next_due_s(self) -> float | None:
        return min((p.due_s for p in self._pending.values()), default=None)

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, number: object) -> bool:
        return number in self._pending


__all__ = ["RecordRetries"]
