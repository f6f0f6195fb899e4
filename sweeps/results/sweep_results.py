"""A sweep's results read back from its Optuna study: one record per trial, the best one, spend.

What ``gemini-sweep status``, ``export`` and ``report`` show. Everything comes from the
trial user attributes the runner writes (:mod:`sweeps.trial_record`), so the results of a
sweep run on another machine (PostgreSQL storage) read the same. Nothing here talks to a
backend or to MLflow.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from sqlalchemy.engine import make_url

from sweeps import trial_record as ts
from sweeps.config.schema import BudgetConfig
from sweeps.config.schema import SweepConfig
from sweeps.engine.budget import token_limit
from sweeps.errors import ServiceUnavailable
from sweeps.errors import SweepError
from sweeps.policy.fidelity import ATTR_EPOCHS_MODE
from sweeps.results.cost_frontier import CheapestWithinTolerance
from sweeps.results.cost_frontier import cheapest_within
from sweeps.trial_record import ATTR_CHECKPOINTS
from sweeps.trial_record import ATTR_COST
from sweeps.trial_record import ATTR_EPOCHS_COMPLETED
from sweeps.trial_record import ATTR_FLAGS
from sweeps.trial_record import ATTR_LOSS_AT_PLATEAU
from sweeps.trial_record import ATTR_PLATEAU_EPOCH
from sweeps.trial_record import ATTR_RECOMMENDED_EPOCHS
from sweeps.trial_record import ATTR_TRAINING_TOKENS
from sweeps.trial_record import ATTR_WARM_START_FROM

logger = logging.getLogger(__name__)

TrialState = optuna.trial.TrialState



@dataclass(frozen=True, slots=True)
class TrialRecord:
    """One trial as the user sees it. ``state`` is Optuna's name (COMPLETE, PRUNED, ...)."""

    number: int
    state: str
    knobs: dict[str, Any]
    value: float | None = None
    job_id: str | None = None
    idempotency_key: str | None = None
    plateau_epoch: int | None = None
    recommended_epochs: int | None = None
    loss_at_plateau: float | None = None
    flags: dict[str, bool] = field(default_factory=dict)
    epochs_completed: int | None = None
    training_tokens: int | None = None
    estimated_tokens: int | None = None
    cost: float | None = None
    fail_reason: str | None = None
    mlflow_run_id: str | None = None
    checkpoints: tuple[dict[str, Any], ...] = ()
    warm_start_from: str | None = None  # "<source>#<trial>": run by an earlier sweep
    epochs_mode: str | None = None  # "from_curve": ran max epochs, epoch chosen from curve
    stopped_after_epoch: int | None = None  # from_curve patience cancelled the job here
    values: tuple[float, ...] = ()  # every objective (quality, cost) when multi-objective
    eval_scores: dict[str, float] = field(default_factory=dict)  # eval_chrf, eval_<custom>
    eval_tokens: int | None = None
    eval_error: str | None = None

    @property
    def is_complete(self) -> bool:
        return self.state == TrialState.COMPLETE.name

    @property
    def is_warm_start(self) -> bool:
        return self.warm_start_from is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["checkpoints"] = list(self.checkpoints)
        return data


@dataclass(frozen=True, slots=True)
class SweepResults:
    """A sweep's trials, its best trial and its spend (committed = jobs still in flight)."""

    study_name: str
    storage: str
    sweep_id: str | None
    trials: tuple[TrialRecord, ...]
    best: TrialRecord | None
    spent_tokens: float
    committed_tokens: float
    token_limit: float | None = None
    spent_cost: float | None = None
    cheapest: CheapestWithinTolerance | None = None
    pareto_front: tuple[TrialRecord, ...] = ()  # multi-objective [quality, cost] only

    def counts(self) -> dict[str, int]:
        """How many trials are in each state, e.g. ``{"COMPLETE": 5, "PRUNED": 2}``; trials
        copied by warm start count as ``WARM_START``, not as this sweep's."""
        counts: dict[str, int] = {}
        for trial in self.trials:
            state = "WARM_START" if trial.is_warm_start else trial.state
            counts[state] = counts.get(state, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view for ``gemini-sweep status --json``."""
        return {
            "study_name": self.study_name,
            "storage": self.storage,
            "sweep_id": self.sweep_id,
            "counts": self.counts(),
            "best": self.best.to_dict() if self.best else None,
            # What to tune with (epochs from the curve); "best.knobs" is what the trial ran.
            "recommended_knobs": recommended_knobs(self.best) if self.best else None,
            "budget": {"spent_tokens": self.spent_tokens,
                       "committed_tokens": self.committed_tokens,
                       "token_limit": self.token_limit, "spent_cost": self.spent_cost},
            "trials": [trial.to_dict() for trial in self.trials],
            "cheapest_within_tolerance": self.cheapest.to_dict() if self.cheapest else None,
            "pareto_front": [trial.number for trial in self.pareto_front],
        }


def load_study(*, study_name: str, storage: str) -> optuna.Study:
    """Open an existing sweep's study read-only in spirit (nothing is written).

    Raises:
        SweepError: the storage cannot be opened or holds no study of that name; the
            message names both (password hidden) and the studies that do exist.
    """
    shown = redact_url(storage)
    db_file = Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:///") \
        else None
    if db_file is not None and not db_file.is_file():
        # Opening would create an empty database: say plainly that nothing ran here yet.
        raise SweepError(f"storage {shown}: no such file; run `gemini-sweep run CONFIG` first")
    try:
        # Opened once for both calls: each opening of a URL re-checks the schema version.
        opened = optuna.storages.get_storage(storage)
        names = [s.study_name for s in optuna.get_all_study_summaries(opened)]
    except sqlalchemy.exc.OperationalError as exc:  # a storage that does not answer
        first_line = str(exc.orig or exc).strip().splitlines()[0]
        raise ServiceUnavailable(f"storage {shown}: the database does not answer "
                                 f"({first_line}); try again when it is back") from None
    except Exception as exc:  # SQLAlchemy and Optuna raise many types for a bad URL
        raise SweepError(f"storage {shown}: cannot be opened ({exc})") from None
    if study_name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise SweepError(f"storage {shown}: no sweep named {study_name!r} (sweeps there: "
                         f"{known}); run `gemini-sweep run CONFIG` first")
    return optuna.load_study(study_name=study_name, storage=opened)


def load_config_study(config: SweepConfig) -> optuna.Study:
    """The study of a sweep config (``config.name`` on ``config.storage_url``)."""
    return load_study(study_name=config.name, storage=config.storage_url)


def trial_record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    """What the runner stored on ``trial``, as a :class:`TrialRecord`."""
    attrs = trial.user_attrs
    ref = ts.stored_job_ref(trial)
    flags = attrs.get(ATTR_FLAGS)
    checkpoints = attrs.get(ATTR_CHECKPOINTS)
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        knobs=dict(attrs.get(ts.ATTR_KNOBS) or trial.params),
        # values[0]: `trial.value` raises in a multi-objective study.
        value=trial.values[0] if trial.state is TrialState.COMPLETE and trial.values
        else None,
        values=tuple(trial.values or ()) if trial.state is TrialState.COMPLETE else (),
        eval_scores=_eval_scores(attrs.get(ts.ATTR_EVAL)),
        eval_tokens=_int_or_none(attrs.get(ts.ATTR_EVAL_TOKENS)),
        eval_error=attrs.get(ts.ATTR_EVAL_ERROR),
        job_id=ref.job_id if ref else None,
        idempotency_key=attrs.get(ts.ATTR_KEY),
        plateau_epoch=_int_or_none(attrs.get(ATTR_PLATEAU_EPOCH)),
        recommended_epochs=_int_or_none(attrs.get(ATTR_RECOMMENDED_EPOCHS)),
        loss_at_plateau=_float_or_none(attrs.get(ATTR_LOSS_AT_PLATEAU)),
        flags={str(k): bool(v) for k, v in flags.items()} if isinstance(flags, dict) else {},
        epochs_completed=_int_or_none(attrs.get(ATTR_EPOCHS_COMPLETED)),
        training_tokens=_int_or_none(attrs.get(ATTR_TRAINING_TOKENS)),
        estimated_tokens=_int_or_none(attrs.get(ts.ATTR_ESTIMATE)),
        cost=_float_or_none(attrs.get(ATTR_COST)),
        fail_reason=attrs.get(ts.ATTR_FAIL_REASON),
        mlflow_run_id=attrs.get(ts.ATTR_RUN_ID),
        checkpoints=tuple(c for c in checkpoints if isinstance(c, dict))
        if isinstance(checkpoints, list) else (),
        warm_start_from=attrs.get(ATTR_WARM_START_FROM),
        epochs_mode=attrs.get(ATTR_EPOCHS_MODE),
        stopped_after_epoch=_int_or_none(attrs.get(ts.ATTR_STOPPED_AFTER)),
    )


def pick_best(records: Iterable[TrialRecord], *, maximize: bool = False
              ) -> TrialRecord | None:
    """The best COMPLETE trial: lowest objective (highest with ``maximize``: eval scores),
    ties broken by fewer training tokens.

    Pruned, failed and running trials never count: a cancelled job's model quality is
    unpredictable (the tuning guide), and a failed one has no model. Nor do trials copied
    by warm start: another sweep ran them (maybe on another backend), so this sweep has no
    job or model of theirs to export.
    """
    complete = [r for r in records if r.is_complete and not r.is_warm_start
                and r.value is not None and math.isfinite(r.value)]
    if not complete:
        return None
    sign = -1.0 if maximize else 1.0
    return min(complete, key=lambda r: (sign * (r.value or 0.0), r.training_tokens or 0,
                                        r.number))


def recommended_epochs(trial: TrialRecord) -> int:
    """The epochs to tune with, from a trial's curve: its recommended epochs (the plateau
    epoch, more when the curve was still falling), else the epochs it ran.

    The one rule behind every place that names a configuration to use (the run summary,
    ``status``, the MLflow parent run, ``export``), so a user copying any of them trains the
    same number of epochs; each shows beside it what the trial ran.
    """
    ran = trial.knobs.get("epochs") or trial.epochs_completed or 1
    return int(trial.recommended_epochs or trial.plateau_epoch or ran)


def recommended_knobs(trial: TrialRecord) -> dict[str, Any]:
    """The trial's knobs with ``epochs`` as :func:`recommended_epochs` says."""
    return {**trial.knobs, "epochs": recommended_epochs(trial)}


def collect_results(study: optuna.Study, *, storage: str = "",
                    budget: BudgetConfig | None = None,
                    cost_tolerance: float | None = None) -> SweepResults:
    """Every trial of ``study`` as a record, the best one and the tokens spent/committed;
    with ``cost_tolerance``, also the cheapest trial within that fraction of the best."""
    records = tuple(trial_record(t) for t in study.get_trials(deepcopy=False))
    maximize = study.directions[0] is optuna.study.StudyDirection.MAXIMIZE
    best = pick_best(records, maximize=maximize)
    own = [r for r in records if not r.is_warm_start]
    cheapest = (cheapest_within(own, best, tolerance=cost_tolerance, maximize=maximize)
                if cost_tolerance is not None else None)
    spent = float(sum((r.training_tokens or 0) + (r.eval_tokens or 0)
                      for r in records if r.state != "RUNNING"))
    committed = float(sum(r.estimated_tokens or 0 for r in records if r.state == "RUNNING"))
    costs = [r.cost for r in records if r.cost is not None]
    return SweepResults(
        study_name=study.study_name, storage=redact_url(storage) if storage else "",
        sweep_id=study.user_attrs.get(ts.STUDY_ATTR_SWEEP_ID), trials=records,
        best=best, spent_tokens=spent, committed_tokens=committed,
        token_limit=token_limit(budget) if budget else None,
        spent_cost=sum(costs) if costs else None, cheapest=cheapest,
        pareto_front=pareto_front(study, records),
    )


def pareto_front(study: optuna.Study, records: Iterable[TrialRecord]
                 ) -> tuple[TrialRecord, ...]:
    """A multi-objective sweep's ([quality, cost]) Pareto-optimal trials, cheapest first;
    empty for a single objective (``study.best_trial`` is undefined with several)."""
    if len(study.directions) < 2:
        return ()
    on_front = {t.number for t in study.best_trials}
    front = [r for r in records if r.number in on_front and not r.is_warm_start]
    return tuple(sorted(front, key=lambda r: (r.values[-1] if r.values else 0.0, r.number)))


def config_results(config: SweepConfig) -> SweepResults:
    """The results of the sweep a config describes.

    Raises:
        SweepError: the sweep has not been run yet (or its storage is unreachable).
    """
    study = load_config_study(config)
    return collect_results(study, storage=config.storage_url, budget=config.budget,
                           cost_tolerance=config.cost_tolerance)


def redact_url(url: str) -> str:
    """``url`` with any password hidden (PostgreSQL URLs may carry one)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: show only its scheme
        return url.split("://", 1)[0] + "://***"


def _eval_scores(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    scores = {str(k): _float_or_none(v) for k, v in value.items()}
    return {k: v for k, v in scores.items() if v is not None}


def _int_or_none(value: object) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _float_or_none(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


__all__ = [
    "SweepResults",
    "TrialRecord",
    "collect_results",
    "config_results",
    "load_config_study",
    "load_study",
    "pareto_front",
    "pick_best",
    "recommended_epochs",
    "recommended_knobs",
    "redact_url",
    "trial_record",
]
