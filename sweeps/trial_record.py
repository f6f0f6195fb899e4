"""What the runner stores on an Optuna trial, and what it keeps about a job in flight.

The Optuna storage is the single source of truth for a sweep: everything a restarted
``gemini-sweep run`` needs to re-attach to a job (its idempotency key, its job reference) is a
trial user attribute, written before (key) and right after (job reference) the submit.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Any

import optuna

from gemini_backend import Checkpoint
from gemini_backend import JobRef
from gemini_backend import JobState
from gemini_backend import LossSnapshot

# User attribute names (the trial's record; `export` and `status` read them too).
ATTR_KEY = "idempotency_key"
ATTR_JOB_REF = "job_ref"
ATTR_KNOBS = "knobs"
ATTR_ESTIMATE = "estimated_training_tokens"
ATTR_WORKER = "worker"
ATTR_HEARTBEAT = "heartbeat"
ATTR_FAIL_REASON = "fail_reason"
ATTR_RUN_ID = "mlflow_run_id"
#: The sweep's dataset content hash, so warm start copies only same-dataset trials.
ATTR_DATASET_HASH = "dataset_hash"
#: Set on trials copied from an earlier sweep ("<source>#<trial number>"): not run here.
ATTR_WARM_START_FROM = "warm_start_from"
ATTR_EVAL = "eval"  # {"eval_exact_match": 0.75, ...}: held-out evaluation scores
ATTR_EVAL_TOKENS = "eval_tokens"  # generation tokens billed for the evaluation
ATTR_EVAL_ERROR = "eval_error"
# Written when a trial is told (``TrialOutcome.summary_attrs``); status and export read them.
ATTR_TRAINING_TOKENS = "training_tokens"
ATTR_EPOCHS_COMPLETED = "epochs_completed"
ATTR_PLATEAU_EPOCH = "plateau_epoch"
ATTR_RECOMMENDED_EPOCHS = "recommended_epochs"
ATTR_LOSS_AT_PLATEAU = "loss_at_plateau"
ATTR_FLAGS = "flags"
ATTR_COST = "cost"
#: A from_curve job cancelled ``patience`` epochs past its best (policy.fidelity): its epoch.
ATTR_STOPPED_AFTER = "stopped_after_epoch"
#: Checkpoints the service kept ``[{"checkpoint_id", "epoch", "step"}]`` (Vertex, local).
ATTR_CHECKPOINTS = "checkpoints"
#: Why the sweep cancelled the trial's job, written *before* the cancel call (invariant 1):
#: ``{"kind": "pruned" | "stopped" | "user" | "budget", "epoch": int | None, "message": str}``.
#: A resumed sweep reads it back instead of asking the pruner again.
ATTR_CANCEL_REASON = "cancel_reason"
CANCEL_PRUNED = "pruned"
CANCEL_STOPPED = "stopped"  # from_curve patience: past its plateau; the trial completes
CANCEL_USER = "user"
CANCEL_BUDGET = "budget"
#: Study user attribute: a random id that makes idempotency keys unique to this study.
STUDY_ATTR_SWEEP_ID = "gemini_sweep.sweep_id"


def is_warm_start(trial: optuna.trial.FrozenTrial) -> bool:
    """Was this trial copied from an earlier sweep (so not run, nor counted, by this one)?"""
    return ATTR_WARM_START_FROM in trial.user_attrs


def idempotency_key(study_name: str, sweep_id: str, trial_number: int) -> str:
    """The key a trial's job is submitted under: the same on every retry and restart."""
    return f"{study_name}-{sweep_id[:8]}-t{trial_number}"


def stored_job_ref(trial: optuna.trial.FrozenTrial) -> JobRef | None:
    data = trial.user_attrs.get(ATTR_JOB_REF)
    return JobRef.from_dict(data) if isinstance(data, dict) else None


@dataclass(frozen=True, slots=True)
class CancelReason:
    """Why the sweep cancelled a job: ``kind`` (``CANCEL_*``), the epoch that decided it
    (the last epoch the trial is scored on), and a line for the user."""

    kind: str
    epoch: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "epoch": self.epoch, "message": self.message}

    @classmethod
    def from_dict(cls, data: object) -> CancelReason | None:
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            return None
        epoch = data.get("epoch")
        return cls(kind=data["kind"], epoch=epoch if isinstance(epoch, int) else None,
                   message=str(data.get("message") or data["kind"]))


def stored_cancel_reason(trial: optuna.trial.FrozenTrial) -> CancelReason | None:
    """The cancel reason written on ``trial`` before its job was cancelled, if any."""
    return CancelReason.from_dict(trial.user_attrs.get(ATTR_CANCEL_REASON))


@dataclass(slots=True)
class InFlight:
    """A trial the runner is driving, from submit to tell. Mutable: the runner's own state.

    ``ref`` is None while the submit has not succeeded yet (retrying a transient error).
    """

    trial: optuna.trial.Trial
    knobs: dict[str, Any]
    key: str
    estimate_tokens: int  # training tokens the job is billed for, corrected as it reports
    ref: JobRef | None = None
    eval_estimate_tokens: int = 0  # generation tokens of its evaluation, when billed
    next_poll_s: float = 0.0
    interval_s: float = 1.0
    submit_attempts: int = 0
    poll_errors: int = 0
    poll_failing_since_s: float | None = None  # loop clock of the first failed poll in a row
    last_state: JobState = JobState.QUEUED
    snapshots: tuple[LossSnapshot, ...] = ()
    training_tokens: int | None = None
    error_message: str | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    reported_epochs: set[int] = field(default_factory=set)
    # Why the sweep cancelled this job (stored on the trial first); None while it runs.
    cancel_reason: CancelReason | None = None

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def committed_tokens(self) -> int:
        """What the budget holds for this job until it is over: training and evaluation."""
        return self.estimate_tokens + self.eval_estimate_tokens

    @property
    def epochs(self) -> int:
        return int(self.knobs["epochs"])

    @property
    def epochs_completed(self) -> int:
        return max((s.epoch for s in self.snapshots), default=0)

    @property
    def pruned(self) -> bool:
        return self.cancel_reason is not None and self.cancel_reason.kind == CANCEL_PRUNED

    @property
    def cancelled_by_user(self) -> bool:
        return self.cancel_reason is not None and self.cancel_reason.kind == CANCEL_USER

    @property
    def stopped_after_epoch(self) -> int | None:
        """The last epoch of a job from_curve patience cancelled past its plateau."""
        reason = self.cancel_reason
        return reason.epoch if reason is not None and reason.kind == CANCEL_STOPPED else None


@dataclass(frozen=True, slots=True)
class EvalRow:
    """One held-out example as the tuned model answered it."""

    input: str
    expected: str
    prediction: str


@dataclass(frozen=True, slots=True)
class TrialOutcome:
    """A finished trial, as the tracker records it and the study is told."""

    number: int
    state: optuna.trial.TrialState
    knobs: dict[str, Any]
    key: str
    job_ref: JobRef | None
    snapshots: tuple[LossSnapshot, ...]
    train_epoch_loss: tuple[float, ...] = ()
    eval_epoch_loss: tuple[float, ...] | None = None
    value: float | None = None
    plateau_epoch: int | None = None
    loss_at_plateau: float | None = None
    recommended_epochs: int | None = None
    flags: dict[str, bool] = field(default_factory=dict)
    training_tokens: int = 0
    cost: float | None = None
    fail_reason: str | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    stopped_after_epoch: int | None = None  # from_curve patience cancelled the job here
    cancelled_by_user: bool = False  # FAIL, its MLflow run KILLED (`gemini-sweep cancel`)
    # Held-out evaluation (sweeps.evaluation.runner): mean score by metric key, e.g. eval_chrf.
    eval_scores: dict[str, float] = field(default_factory=dict)
    eval_rows: tuple[EvalRow, ...] = ()
    eval_tokens: int = 0
    eval_error: str | None = None

    def summary_attrs(self) -> dict[str, Any]:
        """What is stored on the Optuna trial when it is told."""
        attrs: dict[str, Any] = {
            ATTR_TRAINING_TOKENS: self.training_tokens,
            ATTR_EPOCHS_COMPLETED: max((s.epoch for s in self.snapshots), default=0),
        }
        if self.cost is not None:
            attrs[ATTR_COST] = self.cost
        if self.plateau_epoch is not None:
            attrs[ATTR_PLATEAU_EPOCH] = self.plateau_epoch
            attrs[ATTR_RECOMMENDED_EPOCHS] = self.recommended_epochs or self.plateau_epoch
            attrs[ATTR_LOSS_AT_PLATEAU] = self.loss_at_plateau
            attrs[ATTR_FLAGS] = dict(self.flags)
        if self.fail_reason:
            attrs[ATTR_FAIL_REASON] = self.fail_reason
        if self.stopped_after_epoch is not None:
            attrs[ATTR_STOPPED_AFTER] = self.stopped_after_epoch
        if self.eval_scores:
            attrs[ATTR_EVAL] = dict(self.eval_scores)
        if self.eval_tokens:
            attrs[ATTR_EVAL_TOKENS] = self.eval_tokens
        if self.eval_error:
            attrs[ATTR_EVAL_ERROR] = self.eval_error
        if self.checkpoints:
            attrs[ATTR_CHECKPOINTS] = [{"checkpoint_id": c.checkpoint_id, "epoch": c.epoch,
                                     "step": c.step} for c in self.checkpoints]
        return attrs
