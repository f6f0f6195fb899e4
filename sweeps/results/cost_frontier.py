"""The cheapest configuration whose objective is within a tolerance of the best.

A tuning job is billed by training tokens x epochs, so two configurations of nearly equal
quality can differ several-fold in price. ``status`` and ``export`` show, beside the best
trial, the trial that is cheapest to tune again while staying within ``cost_tolerance``
(a fraction of the best objective) of it: "cheapest within 2% of the best: trial 7, tokens
52,000 (vs best's 104,000)".

"Tokens" here is what tuning the configuration again costs: a job at the trial's
*recommended* epochs (``training tokens / epochs run x recommended epochs``). That is the
price the user pays for the exported config, and it makes trials comparable when every trial
ran the same epochs (``epochs: {mode: from_curve}``). Pure functions over
:class:`sweeps.results.sweep_results.TrialRecord`: no storage, no backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sweeps.results.sweep_results import SweepResults
    from sweeps.results.sweep_results import TrialRecord


@dataclass(frozen=True, slots=True)
class CheapestWithinTolerance:
    """The cheapest trial within ``tolerance`` of the best one (it may be the best itself)."""

    number: int
    tokens: int
    value: float
    best_number: int
    best_tokens: int
    best_value: float
    tolerance: float

    @property
    def is_best(self) -> bool:
        return self.number == self.best_number

    def describe(self) -> str:
        """One line for ``status`` and the export's notes."""
        return (f"cheapest within {self.tolerance:.0%} of the best: trial {self.number}, "
                f"tokens {self.tokens:,} (vs best's {self.best_tokens:,})"
                + (" - the best trial is also the cheapest" if self.is_best else
                   f", objective {self.value:.4g} vs {self.best_value:.4g}"))

    def to_dict(self) -> dict[str, object]:
        return {"trial": self.number, "tokens": self.tokens, "value": self.value,
                "best_trial": self.best_number, "best_tokens": self.best_tokens,
                "best_value": self.best_value, "tolerance": self.tolerance}


def deploy_tokens(record: TrialRecord) -> int | None:
    """Training tokens of a job at the trial's recommended epochs (None if not known)."""
    if record.training_tokens is None:
        return None
    epochs_run = record.epochs_completed or _int(record.knobs.get("epochs"))
    epochs = record.recommended_epochs or epochs_run
    if not epochs_run or not epochs:
        return record.training_tokens
    return round(record.training_tokens / epochs_run * epochs)


def cheapest_within(records: Iterable[TrialRecord], best: TrialRecord | None, *,
                    tolerance: float, maximize: bool = False) -> CheapestWithinTolerance | None:
    """The trial cheapest to tune again among those within ``tolerance`` of ``best``.

    ``tolerance`` is a fraction of the best objective's magnitude (0.02: within 2%). Only
    complete trials with a finite objective and known tokens qualify; ties go to the
    better objective, then the lower trial number. None when ``best`` is None or has no
    token count.
    """
    if best is None or best.value is None:
        return None
    best_tokens = deploy_tokens(best)
    if best_tokens is None:
        return None
    margin = abs(best.value) * tolerance
    limit = best.value - margin if maximize else best.value + margin
    candidates: list[tuple[int, float, int, TrialRecord]] = []
    for record in records:
        tokens = deploy_tokens(record)
        value = record.value
        is_scored = (record.is_complete and value is not None and math.isfinite(value)
                     and tokens is not None)
        if not is_scored or record.number != best.number and _is_outside(value, limit,
                                                                          maximize):
            continue
        ordering = -value if maximize else value  # type: ignore[operator]
        candidates.append((tokens, ordering, record.number, record))  # type: ignore[arg-type]
    if not candidates:  # ``best`` was not among ``records``
        return None
    tokens, _, _, pick = min(candidates, key=lambda c: c[:3])
    return CheapestWithinTolerance(
        number=pick.number, tokens=tokens, value=float(pick.value),  # type: ignore[arg-type]
        best_number=best.number, best_tokens=best_tokens, best_value=float(best.value),
        tolerance=tolerance)


def _is_outside(value: float | None, limit: float, maximize: bool) -> bool:
    if value is None:
        return True
    return value < limit if maximize else value > limit


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def sweep_notes(results: SweepResults, *, maximize: bool = False) -> tuple[str, ...]:
    """Export notes about cost and warm start: the cheapest near-best trial, and a
    warm-start trial that scored better than this sweep's best (it is never exported)."""
    notes: list[str] = []
    if results.cheapest is not None and not results.cheapest.is_best:
        notes.append(results.cheapest.describe() + ".")
    best = results.best
    sign = -1.0 if maximize else 1.0
    copies = [r for r in results.trials if r.is_warm_start and r.is_complete
              and r.value is not None and math.isfinite(r.value)]
    if best is None or best.value is None or not copies:
        return tuple(notes)
    top = min(copies, key=lambda r: sign * float(r.value))  # type: ignore[arg-type]
    if sign * float(top.value) < sign * best.value:  # type: ignore[arg-type]
        notes.append(
            f"warm start: trial {top.warm_start_from} of an earlier sweep scored "
            f"{top.value:.4g}, better than this sweep's best ({best.value:.4g}); it is not "
            "exported because this sweep has no job of it: export it from its own sweep, "
            "or run its knobs here.")
    return tuple(notes)
