"""From knobs to a job request, and from a finished job to a :class:`TrialOutcome`.

Pure functions of their inputs (no Optuna storage, no backend calls), so the runner's loop
stays a handful of named steps and these rules are tested on their own.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import optuna

from gemini_backend import CANONICAL_KNOBS
from gemini_backend import Example
from gemini_backend import JobRequest
from gemini_backend import JobState
from sweeps.config.schema import LOSS_OBJECTIVES
from sweeps.config.schema import SweepConfig
from sweeps.engine import budget
from sweeps.plateau.analysis import epoch_means
from sweeps.plateau.analysis import find_plateau
from sweeps.plateau.analysis import objective_value
from sweeps.policy.fidelity import is_from_curve
from sweeps.trial_record import InFlight
from sweeps.trial_record import TrialOutcome

logger = logging.getLogger(__name__)

TrialState = optuna.trial.TrialState


@dataclass(frozen=True, slots=True)
class PreparedData:
    """The dataset as every job of the sweep is sent it (preamble applied, split once)."""

    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    tokens_per_epoch: int
    content_hash: str
    preamble: str


def build_request(
    config: SweepConfig, data: PreparedData, job: InFlight, *, sweep_id: str
) -> JobRequest:
    """The job request for a trial's knobs; the same request on every retry."""
    knobs = job.knobs
    extra = {k: v for k, v in knobs.items() if k not in CANONICAL_KNOBS}
    batch_size = knobs.get("batch_size")
    return JobRequest(
        train=data.train,
        validation=data.validation,
        epochs=int(knobs["epochs"]),
        learning_rate_multiplier=float(knobs["learning_rate_multiplier"]),
        batch_size=int(batch_size) if batch_size is not None else None,
        base_model=config.backend.base_model or "",
        display_name=f"{config.name} trial {job.number}",
        idempotency_key=job.key,
        extra_knobs=MappingProxyType(extra),
        labels=MappingProxyType({"gemini-sweep": sweep_id[:8], "trial": str(job.number)}),
        seed=config.dataset.seed,
    )


def outcome_of(config: SweepConfig, job: InFlight, *, final_state: JobState) -> TrialOutcome:
    """What a finished job means for its trial: its state, objective value and plateau.

    A job that succeeded but whose curve cannot be scored (no finite loss, no validation
    loss for ``objective: eval_loss``) fails its trial with the reason, so it is visible.
    """
    stopped_after = job.stopped_after_epoch
    last_ended = _last_ended_epoch(job, final_state)
    scored = (job.snapshots if last_ended is None
              else tuple(s for s in job.snapshots if s.epoch <= last_ended))
    train, evaluation = epoch_means(scored) if scored else ([], None)
    tokens = budget.actual_tokens(reported=job.training_tokens, estimate=job.estimate_tokens,
                                  epochs_completed=job.epochs_completed, epochs=job.epochs)
    base: dict[str, Any] = dict(
        number=job.number, knobs=dict(job.knobs), key=job.key, job_ref=job.ref,
        snapshots=job.snapshots, train_epoch_loss=tuple(train),
        eval_epoch_loss=tuple(evaluation) if evaluation else None, training_tokens=tokens,
        cost=budget.cost_of(tokens, config.budget), checkpoints=job.checkpoints,
    )
    if job.pruned:
        return TrialOutcome(state=TrialState.PRUNED, **base)
    if stopped_after is not None:
        base["stopped_after_epoch"] = stopped_after
    elif final_state is not JobState.SUCCEEDED:
        return TrialOutcome(state=TrialState.FAIL, fail_reason=_failure_reason(job, final_state),
                            cancelled_by_user=job.cancelled_by_user, **base)
    quality = config.objectives[0]
    try:
        plateau = find_plateau(train, evaluation, **config.plateau.model_dump())
        # eval_* objectives get their value from held-out evaluation (sweeps.evaluation.runner).
        value = (objective_value(quality, train, evaluation, plateau)
                 if quality in LOSS_OBJECTIVES else None)
    except ValueError as exc:
        return TrialOutcome(state=TrialState.FAIL,
                            fail_reason=f"the job succeeded but its curve cannot be scored: "
                            f"{exc}", **base)
    if value is not None and not math.isfinite(value):
        return TrialOutcome(state=TrialState.FAIL,
                            fail_reason=f"objective {quality} is not finite ({value})",
                            **base)
    flags = {"not_converged": plateau.not_converged, "overfitting": plateau.overfitting,
             "spike": plateau.spike, "flat": plateau.flat}
    # from_curve: the epoch is chosen from this curve, never beyond it (its checkpoint exists).
    recommended = (plateau.epoch if is_from_curve(config.search_space.epochs)
                   else plateau.recommended_epochs)
    return TrialOutcome(
        state=TrialState.COMPLETE, value=value, plateau_epoch=plateau.epoch,
        loss_at_plateau=plateau.loss, recommended_epochs=recommended,
        flags=flags, **base,
    )


def _last_ended_epoch(job: InFlight, final_state: JobState) -> int | None:
    """The last epoch a job is scored and recorded on, or None for every epoch it reported.

    A job stopped past its plateau, pruned, or ended by a failure or a cancel from outside
    stops inside an epoch that has no validation loss yet, which would void the whole
    validation curve; its trial keeps the epochs that had ended. The steps it ran until the
    end are still recorded.
    """
    if job.stopped_after_epoch is not None:
        return job.stopped_after_epoch
    if job.cancel_reason is not None and job.cancel_reason.epoch is not None:
        return job.cancel_reason.epoch
    if final_state is JobState.SUCCEEDED:
        return None
    # Only when that gives a whole validation curve: with no validation at all, or with gaps
    # (a service that does not evaluate every epoch), trimming would cost training epochs
    # and give no validation curve back.
    validated = {s.epoch for s in job.snapshots if s.eval_loss is not None}
    last = max(validated, default=None)
    return last if last is not None and validated == set(range(1, last + 1)) else None


def _failure_reason(job: InFlight, final_state: JobState) -> str:
    if job.cancel_reason is not None:
        return job.cancel_reason.message
    if job.error_message:
        return job.error_message
    if final_state is JobState.CANCELLED:
        return "the job was cancelled outside the sweep"
    return f"the job ended {final_state.value} without a message from the service"


def failed_outcome(job: InFlight, reason: str) -> TrialOutcome:
    """A trial whose job could not be submitted or vanished: FAIL with the reason."""
    return TrialOutcome(number=job.number, state=TrialState.FAIL, knobs=dict(job.knobs),
                        key=job.key, job_ref=job.ref, snapshots=job.snapshots,
                        fail_reason=reason, cancelled_by_user=job.cancelled_by_user)
