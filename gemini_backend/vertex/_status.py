"""A ``TuningJob`` plus its TensorBoard points, turned into our :class:`JobStatus`."""

from __future__ import annotations

from gemini_backend.base import Checkpoint
from gemini_backend.base import JobState
from gemini_backend.base import JobStatus
from gemini_backend.vertex._metrics import Curve
from gemini_backend.vertex._metrics import EpochMap
from gemini_backend.vertex._metrics import Points
from gemini_backend.vertex._wire import TuningJobPayload
from gemini_backend.vertex._wire import parse_int64


def job_status(job: TuningJobPayload, state: JobState, curve: Curve) -> JobStatus:
    """The status a poll reports: state, curve by epoch, checkpoints, tokens, errors.

    A job that succeeded but whose curve cannot be found is reported FAILED with what was
    looked for: it cannot be scored, and saying why beats a silent "no curve".
    """
    train, evals = curve.train, curve.evals
    checkpoints = job.tuned_model.checkpoints if job.tuned_model else []
    epoch_map = EpochMap.build(
        checkpoints=checkpoints, tuning_step_count=job.tuning_step_count,
        epochs=job.epoch_count, last_step=train[-1][0] if train else None,
        is_finished=state.is_terminal(),
    )
    error = _error_message(job, state)
    if curve.missing and state.is_terminal():
        reason = missing_curve_message(curve.missing)
        error = f"{error}; {reason}" if error else reason
        if state is JobState.SUCCEEDED:
            state = JobState.FAILED
    return JobStatus(
        state=state,
        snapshots=epoch_map.snapshots(train, evals),
        progress=_progress(state, train, job.tuning_step_count),
        error_message=error,
        tuned_model=job.tuned_model.model if job.tuned_model else None,
        checkpoints=tuple(
            Checkpoint(checkpoint_id=c.checkpoint_id, epoch=epoch, step=parse_int64(c.step))
            for c in checkpoints if (epoch := parse_int64(c.epoch)) is not None
        ),
        training_tokens=job.billable_tokens,
    )


def missing_curve_message(missing: str) -> str:
    return (f"the loss curve cannot be found: no {missing} (the job's experiment -> its "
            "ExperimentRun -> the -tb-run artifact -> the TensorBoard run)")


def _progress(state: JobState, train: Points, total_steps: int | None) -> float | None:
    """Steps done over ``tuningStepCount`` (all epochs), when both are known."""
    if state is JobState.SUCCEEDED:
        return 1.0
    if not total_steps or not train:
        return None
    return min(1.0, train[-1][0] / total_steps)


def _error_message(job: TuningJobPayload, state: JobState) -> str | None:
    if job.state == "JOB_STATE_PARTIALLY_SUCCEEDED":
        return "Vertex reports the job partially succeeded: some results may be missing"
    if state not in (JobState.FAILED, JobState.CANCELLED):
        return None
    remote = job.state or "JOB_STATE_UNSPECIFIED"
    if job.error and job.error.message:
        return f"{remote}: {job.error.message}"
    return remote
