"""The runner's loop: ask -> submit -> poll -> record -> tell, for many jobs in one thread.

One pass over the jobs that are due replaces a thread per job, so one process holds hundreds
of remote jobs. Each job's poll interval starts at the backend's and grows x1.5 while nothing
changes, up to its cap. MLflow writes run on one writer thread, in order, starting with the
opening of the sweep's parent run: the first jobs are submitted while MLflow is still being
imported and opened. A trial is told to Optuna only after its run is written (invariant 2).
Ctrl-C or a crash never cancels a job: the next ``gemini-sweep run`` re-attaches from what is
stored on the trials (invariant 1).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from dataclasses import dataclass
from typing import Any

import optuna

from gemini_backend import BackendError
from gemini_backend import Backoff
from gemini_backend import BaseBackend
from gemini_backend import CreateUnsettled
from gemini_backend import JobNotFound
from gemini_backend import JobState
from gemini_backend import JobStatus
from gemini_backend import TransientError
from gemini_backend import retry_call
from sweeps import trial_record as ts
from sweeps._crashpoints import crash_point
from sweeps._user_cancel import USER_CANCEL
from sweeps._user_cancel import CancelWatch
from sweeps.config.schema import SweepConfig
from sweeps.engine._lease import StudyLeases
from sweeps.engine._outcome import PreparedData
from sweeps.engine._outcome import build_request
from sweeps.engine._outcome import failed_outcome
from sweeps.engine._outcome import outcome_of
from sweeps.engine._record_retries import RecordRetries
from sweeps.engine._state import SweepState
from sweeps.errors import ServiceUnavailable
from sweeps.evaluation.runner import EvaluationRunner
from sweeps.evaluation.runner import Evaluator
from sweeps.plateau.analysis import ended_epoch_losses
from sweeps.policy.fidelity import curve_patience
from sweeps.policy.fidelity import plateau_passed
from sweeps.tracking.tracker import Tracker
from sweeps.trial_record import InFlight
from sweeps.trial_record import TrialOutcome

logger = logging.getLogger(__name__)

TrialState = optuna.trial.TrialState
_BACKOFF = 1.5
_MAX_SUBMIT_ATTEMPTS = 8
_MAX_POLL_ERRORS = 10
_WRITE_WAIT_S = 0.05
_CANCEL_BACKOFF = Backoff(initial_s=0.5, maximum_s=2.0, max_attempts=3)
#: Polls of a job failing with retryable errors this long mean the service is down: the
#: sweep stops (exit 3); its jobs keep running and the next `gemini-sweep run` collects them.
_POLL_OUTAGE_S = 1800.0


@dataclass(frozen=True, slots=True)
class SweepContext:
    """What the loop works with; built once by :func:`sweeps.engine.runner.run_sweep`."""

    config: SweepConfig
    study: optuna.Study
    backend: BaseBackend
    tracker: Tracker
    data: PreparedData
    sweep_id: str
    worker_id: str
    leases: StudyLeases  # shares the study with other workers (one worker: nobody else)
    evaluator: Evaluator | None = None  # held-out evaluation after each success
    in_job_time: bool = False  # a simulated replay (sweeps._replay_clock): tell before asking


class SweepLoop:
    """Drives every trial of one process until the sweep is done or must stop."""

    def __init__(self, ctx: SweepContext, state: SweepState, *,
                 clock: Callable[[], float], sleep: Callable[[float], None]) -> None:
        self.ctx = ctx
        self.state = state
        self._clock = clock
        self._sleep = sleep
        caps = ctx.backend.capabilities
        self._base_interval_s = ctx.config.poll_interval_s or caps.poll_interval_s
        self._max_interval_s = max(caps.max_poll_interval_s, self._base_interval_s)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-tracking")
        self._recording: dict[int, tuple[TrialOutcome, Future[str | None]]] = {}
        self._starting: dict[int, Future[str | None]] = {}
        self._can_prune = not isinstance(ctx.study.pruner, optuna.pruners.NopPruner)
        self._retries = RecordRetries()  # records that failed, tried again later
        self._next_claim_s = clock() + ctx.leases.claim_interval_s
        self._evals = EvaluationRunner(ctx.evaluator, ctx.config) if ctx.evaluator else None
        # Optuna takes intermediate values only in single-objective studies; a maximized
        # (eval_*) study is reported -loss so its pruner still stops the high-loss trials.
        self._is_multi_objective = len(ctx.study.directions) > 1
        self._can_prune = self._can_prune and not self._is_multi_objective
        self._report_sign = (-1.0 if ctx.study.directions[0]
                             is optuna.study.StudyDirection.MAXIMIZE else 1.0)
        self._patience = curve_patience(ctx.config.search_space.epochs)
        # Pruners and patience read validation loss only from a backend that reports it;
        # otherwise (Gemini API) they read training loss, as the trial is scored.
        self._use_eval = bool(ctx.data.validation) and caps.has_validation_loss
        self._user_cancels = CancelWatch(ctx.study, clock=clock)  # `gemini-sweep cancel`
        self._tracking_start: Future[None] | None = None

    # --- the loop -----------------------------------------------------------------------------

    def run_until_done(self, on_pass: Callable[[], None],
                       start_tracking: Callable[[], None] | None = None) -> None:
        """Loop until every wanted trial is told (or the sweep stops); then wait for writes.

        ``start_tracking`` (open the sweep's parent run) is the writer thread's first task;
        if it fails, the loop stops with its error (jobs in flight keep running).
        """
        # Queued first (every other write needs the parent run), begun once the first
        # pass has submitted its jobs: importing MLflow holds the GIL for a second or more,
        # and would slow those first asks and submits to half speed.
        first_pass_done = threading.Event()
        is_leaving = False  # stopped (Ctrl-C, an error) before the first pass ended
        if start_tracking is not None:
            begin = start_tracking

            def start_after_first_pass() -> None:
                first_pass_done.wait()
                if not is_leaving:  # else nothing to record: exit without importing MLflow
                    begin()

            self._tracking_start = self._writer.submit(start_after_first_pass)
        self.ctx.leases.held = self.state.held_numbers()
        self.ctx.leases.start_heartbeats()
        try:
            while True:
                self._raise_if_tracking_failed()
                self._share_study()
                self._submit_ready_trials()
                first_pass_done.set()
                self._poll_due_jobs()
                self._apply_user_cancels()  # first: a job a user cancelled frees no slot
                if not self.ctx.in_job_time:  # (in job time the next ask waits for a tell)
                    self._submit_ready_trials()  # a slot a job just freed, filled at once
                self._finish_evaluated()
                self._record_finished()
                on_pass()
                if self._check_stop():
                    break
                self._sleep_until_next_poll()
            self._raise_if_tracking_failed(wait=True)  # a sweep with nothing to run too
        finally:
            is_leaving = not first_pass_done.is_set()
            first_pass_done.set()
            # Writes already started finish (a half-written run is repaired next time anyway).
            self._writer.shutdown(wait=True, cancel_futures=True)
            if self._evals is not None:
                self._evals.shutdown()

    def _raise_if_tracking_failed(self, *, wait: bool = False) -> None:
        """The error of the parent run's opening, once it is known."""
        start = self._tracking_start
        if start is None or not (wait or start.done()):
            return
        error = start.exception()
        if error is None:
            self._tracking_start = None
            return
        if self.state.in_flight:
            logger.error("%d jobs in flight keep running; run the same command again to "
                         "collect them", len(self.state.in_flight))
        raise error

    def _share_study(self) -> None:
        """With other workers: drop trials they took over, adopt trials whose lease is free."""
        leases = self.ctx.leases
        for number in leases.take_lost():
            is_held = number in self.state.held_numbers()  # not told since the renewal
            if not is_held or number in self._recording or number in self._retries:
                continue  # told, or being recorded: finish it (the record is idempotent)
            logger.warning("trial=%d was taken over by another worker (this one missed its "
                           "lease); dropping it here, its job keeps running", number)
            self.state.release(number)
        now = self._clock()
        if now >= self._next_claim_s:
            self._next_claim_s = now + leases.claim_interval_s
            self.state.adopt_running_trials(self.ctx, now)
        leases.held = self.state.held_numbers()

    def _n_writes(self) -> int:
        """Trials finished here whose record is being written or waits for a retry."""
        return len(self._recording) + len(self._retries)

    def _submit_ready_trials(self) -> None:
        if (self.ctx.config.concurrency == 1 or self.ctx.in_job_time) and self._recording:
            # A sequential sweep proposes each trial knowing every earlier result: the next
            # ask waits until the finished trial is written and told. Asking at once made the
            # proposal depend on how fast the writer thread was (a race seen in the cost
            # benchmark, where the same seed gave different sweeps).
            return
        while self.state.may_start_trial(self._n_writes()):
            job = self.state.next_trial(self.ctx, self._clock())
            if job is None:
                return
            self._submit(job)
        # Asking costs tens of ms of sampler and storage work: do it before the slot frees.
        if self.state.may_ask_ahead(self._n_writes()):
            self.state.ask_ahead(self.ctx, self._clock())

    def _poll_due_jobs(self) -> None:
        now = self._clock()
        for job in list(self.state.in_flight.values()):
            is_due = job.next_poll_s <= now
            if not is_due:
                continue
            if job.ref is None:
                self._submit(job)
                continue
            status = self._poll(job)
            if status is not None:
                self._update(job, status)

    def _record_finished(self) -> None:
        for outcome in self._retries.due(self._clock()):
            self._recording[outcome.number] = (
                outcome, self._writer.submit(self.ctx.tracker.record_trial, outcome))
        for number, (outcome, future) in list(self._recording.items()):
            if not future.done():
                continue
            del self._recording[number]
            error = future.exception()
            retry_in_s = (self._retries.schedule(outcome, self._clock())
                          if error is not None else None)
            if retry_in_s is not None:
                logger.warning("trial=%d not recorded in MLflow (%s); trying again in %.0fs",
                               number, error, retry_in_s)
                continue
            if error is not None:
                logger.error("trial=%d not recorded in MLflow (%s); it stays RUNNING in the "
                             "study and the next `gemini-sweep run` records it", number, error)
                self.state.unrecorded.add(number)
                continue
            self._retries.succeeded(number)
            crash_point("before_tell")
            self.state.tell(self.ctx.study, outcome, run_id=future.result())

    def _check_stop(self) -> bool:
        has_writes = self._n_writes() > 0
        has_jobs = bool(self.state.in_flight)
        if self.state.has_failed_too_often():
            # Jobs in flight keep running; the next `run` collects them.
            return not has_writes
        wants_more = self.state.may_start_trial(self._n_writes())
        # Stay while other workers hold trials: if one dies, this one takes its jobs over.
        has_others = self.ctx.leases.n_held_by_others > 0
        return not (has_jobs or has_writes or wants_more or has_others)

    def _sleep_until_next_poll(self) -> None:
        now = self._clock()
        wake_s = [j.next_poll_s for j in self.state.in_flight.values()]
        wake_s = wake_s or [now + self._base_interval_s]
        wake_s += [self._retries.next_due_s] if self._retries.next_due_s is not None else []
        wake_s += [self._next_claim_s]
        next_poll_s = min(wake_s)
        delay_s = max(0.0, next_poll_s - now)
        pending: list[Future[Any]] = [future for _, future in self._recording.values()]
        pending += self._evals.pending() if self._evals is not None else []
        if pending:
            # A finished write frees a slot: wake for it, but keep the fake clock in step.
            wait(pending, timeout=min(delay_s, _WRITE_WAIT_S), return_when=FIRST_COMPLETED)
            return
        if delay_s > 0:
            self._sleep(delay_s)

    # --- one job ------------------------------------------------------------------------------

    def _submit(self, job: InFlight) -> None:
        backend, request = self.ctx.backend, build_request(self.ctx.config, self.ctx.data, job,
                                                           sweep_id=self.ctx.sweep_id)
        try:
            # After an ambiguous failure (or a crash) look the key up before submitting again.
            ref = backend.find(job.key) if job.submit_attempts > 0 else None
            if ref is None:
                ref = backend.submit(request)
        except TransientError as exc:
            self._retry_submit_later(job, exc)
            return
        except BackendError as exc:
            logger.error("trial=%d submit rejected: %s", job.number, exc.message)
            self._finish(job, failed_outcome(job, f"submit rejected: {exc.message}"))
            return
        crash_point("after_submit")  # test-only fault hook; no-op unless its env var is set
        job.ref = ref
        job.trial.set_user_attr(ts.ATTR_JOB_REF, ref.to_dict())
        crash_point("after_job_ref")
        job.interval_s = self._base_interval_s
        job.next_poll_s = self._clock() + job.interval_s
        logger.info("trial=%d job=%s submitted: %s", job.number, ref.job_id,
                    ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in job.knobs.items()))
        started = self._writer.submit(self.ctx.tracker.trial_started, job.number, job.knobs,
                                      job.key, ref.to_dict())
        started.add_done_callback(_warn_if_failed)
        self._starting[job.number] = started

    def _retry_submit_later(self, job: InFlight, exc: TransientError) -> None:
        # A create still unsettled is not a failed attempt (after the first, which makes the
        # next try look the key up): failing the trial could orphan a job the service shows
        # later, paid for with no trial to collect it. The backend bounds that wait itself.
        if not (isinstance(exc, CreateUnsettled) and job.submit_attempts):
            job.submit_attempts += 1
        if job.submit_attempts >= _MAX_SUBMIT_ATTEMPTS:
            logger.error("trial=%d submit failed %d times: %s", job.number,
                         job.submit_attempts, exc.message)
            self._finish(job, failed_outcome(job, f"submit failed: {exc.message}"))
            return
        delay_s = exc.retry_after_s or min(self._max_interval_s,
                                           self._base_interval_s * 2 ** job.submit_attempts)
        job.next_poll_s = self._clock() + delay_s
        logger.warning("trial=%d submit failed (%s); retrying in %.1fs", job.number,
                       exc.message, delay_s)

    def _poll(self, job: InFlight) -> JobStatus | None:
        assert job.ref is not None
        try:
            status = self.ctx.backend.poll(job.ref)
        except JobNotFound as exc:
            self._finish(job, failed_outcome(job, f"job {job.ref.job_id} vanished: "
                                                  f"{exc.message}"))
            return None
        except BackendError as exc:
            job.poll_errors += 1
            now_s = self._clock()
            if job.poll_failing_since_s is None:
                job.poll_failing_since_s = now_s
            is_hopeless = not exc.retryable and job.poll_errors >= _MAX_POLL_ERRORS
            if is_hopeless:
                self._finish(job, failed_outcome(job, f"polling failed: {exc.message}"))
                return None
            if exc.retryable and now_s - job.poll_failing_since_s > _POLL_OUTAGE_S:
                raise ServiceUnavailable(
                    f"the {self.ctx.backend.kind} service has not answered a poll of job "
                    f"{job.ref.job_id} for {now_s - job.poll_failing_since_s:.0f}s "
                    f"({exc.message}); jobs in flight keep running: run the same command "
                    "again when it is back") from exc
            job.interval_s = min(self._max_interval_s, job.interval_s * 2)
            retry_after_s = getattr(exc, "retry_after_s", None)
            job.next_poll_s = self._clock() + (retry_after_s or job.interval_s)
            logger.warning("trial=%d job=%s poll failed (%s); next try in %.1fs", job.number,
                           job.ref.job_id, exc.message, job.next_poll_s - self._clock())
            return None
        job.poll_errors = 0
        job.poll_failing_since_s = None
        return status

    def _update(self, job: InFlight, status: JobStatus) -> None:
        has_news = (len(status.snapshots) != len(job.snapshots)
                    or status.state is not job.last_state)
        job.snapshots, job.last_state = status.snapshots, status.state
        job.training_tokens = status.training_tokens
        if not status.state.is_terminal():
            self.state.job_reported(job)
        job.error_message = status.error_message
        job.checkpoints = status.checkpoints
        job.interval_s = (self._base_interval_s if has_news
                          else min(self._max_interval_s, job.interval_s * _BACKOFF))
        job.next_poll_s = self._clock() + job.interval_s
        is_terminal = status.state.is_terminal()
        decided = self._report_epochs(job, is_terminal=is_terminal)
        if status.state is JobState.CANCELLED and job.cancel_reason is None:
            # Cancelled by another process that stored why first (a user's cancel command).
            job.cancel_reason = self._stored_cancel_reason(job)
            if job.cancelled_by_user:  # `cancel --all` stores its stop first: read it now,
                self._user_cancels.check_soon()  # before this free slot asks a new trial
        if is_terminal:
            # A cancel the sweep decided carries its stored reason (read back on resume, never
            # asked of the pruner again); a CANCELLED job without one was cancelled outside.
            self._finish_or_evaluate(job, outcome_of(self.ctx.config, job,
                                                     final_state=status.state))
        elif job.cancel_reason is not None:
            self._cancel_and_finish(job)  # decided before a restart: it may not have landed
        elif decided is not None:
            self._decide_cancel(job, decided)

    def _report_epochs(self, job: InFlight, *, is_terminal: bool) -> ts.CancelReason | None:
        """Report each newly ended epoch's loss in order, asking the pruner and from_curve
        patience at every epoch boundary; the first that says stop decides, at that epoch.

        However many epochs one poll reveals (a slow poll, a replay at any time scale), the
        decision is the one taken epoch by epoch: it does not depend on when polls happen.
        """
        losses = ended_epoch_losses(job.snapshots, is_terminal=is_terminal,
                                    use_eval=self._use_eval)
        for epoch in [e for e in sorted(losses) if e not in job.reported_epochs]:
            job.reported_epochs.add(epoch)
            if not self._is_multi_objective:  # Optuna takes no intermediate values then
                job.trial.report(self._report_sign * losses[epoch], epoch)
            if is_terminal:
                continue  # its outcome is decided by how it ended
            if self._can_prune and job.trial.should_prune():
                return ts.CancelReason(ts.CANCEL_PRUNED, epoch, f"pruned after epoch {epoch}")
            so_far = {e: loss for e, loss in losses.items() if e <= epoch}
            if plateau_passed(so_far, self._patience):
                # It completes on the epochs that had ended, not pruned: its best is known.
                return ts.CancelReason(ts.CANCEL_STOPPED, epoch, f"stopped after epoch "
                                       f"{epoch}: {self._patience} epochs without a new best")
        return None

    def _apply_user_cancels(self) -> None:
        """Cancel the trials a user cancelled (`gemini-sweep cancel`); on a stop, every job
        held here, and ask no new trial. The command cancels the jobs too: this covers the
        ones it could not see or reach (asked meanwhile, a submit in progress)."""
        requests = self._user_cancels.check(self.state.in_flight)
        if requests is None:
            return
        numbers = set(requests.trial_numbers)
        if requests.is_stop:
            for job in self.state.stop_by_user(USER_CANCEL.message):  # asked, never submitted
                job.cancel_reason = USER_CANCEL
                self._finish(job, failed_outcome(job, USER_CANCEL.message))
            numbers |= set(self.state.in_flight)
        for number in sorted(numbers):
            job = self.state.in_flight[number]
            if job.cancel_reason is None and not job.last_state.is_terminal():
                self._cancel_for_user(job)

    def _cancel_for_user(self, job: InFlight) -> None:
        try:
            if job.ref is None and job.submit_attempts > 0:  # a submit may have landed
                job.ref = self.ctx.backend.find(job.key)
            if job.ref is None:
                job.cancel_reason = USER_CANCEL
                job.trial.set_user_attr(ts.ATTR_CANCEL_REASON, USER_CANCEL.to_dict())
                self._finish(job, failed_outcome(job, USER_CANCEL.message))
                return
            self._decide_cancel(job, USER_CANCEL)
        except BackendError as exc:  # its reason is stored: the next check or run tries again
            logger.warning("trial=%d cancel failed (%s); trying again", job.number, exc.message)

    def _stored_cancel_reason(self, job: InFlight) -> ts.CancelReason | None:
        """The reason on the trial in storage now (this process's copy is a cache)."""
        running = self.ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        mine = [t for t in running if t.number == job.number]
        return ts.stored_cancel_reason(mine[0]) if mine else None

    def _decide_cancel(self, job: InFlight, reason: ts.CancelReason) -> None:
        """Store why the job is cancelled on its trial, then cancel it (invariant 1)."""
        job.cancel_reason = reason
        job.trial.set_user_attr(ts.ATTR_CANCEL_REASON, reason.to_dict())
        crash_point("after_cancel_reason")
        self._cancel_and_finish(job)

    def _cancel_and_finish(self, job: InFlight) -> None:
        assert job.ref is not None and job.cancel_reason is not None
        self._cancel(job)
        logger.info("trial=%d job=%s %s", job.number, job.ref.job_id, job.cancel_reason.message)
        self._finish(job, outcome_of(self.ctx.config, job, final_state=job.last_state))

    def _cancel(self, job: InFlight) -> None:
        """Cancel the job (a few tries) and keep the points it reported up to the cancel."""
        assert job.ref is not None
        ref = job.ref
        try:
            retry_call(lambda _: self.ctx.backend.cancel(ref), backoff=_CANCEL_BACKOFF,
                       what=f"trial={job.number} job={ref.job_id} cancel", sleep=self._sleep)
        except TransientError as exc:
            logger.warning("trial=%d job=%s cancel failed (%s); its reason is stored, so the "
                           "next `gemini-sweep run` cancels it", job.number, ref.job_id,
                           exc.message)
        except BackendError as exc:
            # A refusal, not an outage: a service refuses to cancel a job it counts as ended.
            logger.warning("trial=%d job=%s cancel refused (%s); the job may have ended "
                           "already", job.number, ref.job_id, exc.message)
        try:  # the points reported up to the cancel belong in the record too
            job.snapshots = self.ctx.backend.poll(job.ref).snapshots or job.snapshots
        except BackendError as exc:
            logger.debug("trial=%d final poll after cancel failed: %s", job.number, exc)

    def _finish(self, job: InFlight, outcome: TrialOutcome) -> None:
        self.state.job_finished(job, outcome)
        starting = self._starting.pop(job.number, None)
        if starting is not None:
            starting.cancel()  # still queued: the record creates the run anyway
        future = self._writer.submit(self.ctx.tracker.record_trial, outcome)
        self._recording[job.number] = (outcome, future)

    def _finish_or_evaluate(self, job: InFlight, outcome: TrialOutcome) -> None:
        """A completed trial is evaluated first (when configured), then finished."""
        is_evaluated = self._evals is not None and outcome.state is TrialState.COMPLETE
        if is_evaluated and self._evals is not None:
            self._evals.start(job, outcome)
        else:
            self._finish(job, outcome)

    def _finish_evaluated(self) -> None:
        if self._evals is not None:
            for job, outcome in self._evals.finished():
                self._finish(job, outcome)


def _warn_if_failed(future: Future[str | None]) -> None:
    """A run not created at submit is created when the trial is recorded: only warn."""
    error = None if future.cancelled() else future.exception()
    if error is not None:
        logger.warning("MLflow run not created at submit (%s); it is created when the trial "
                       "is recorded", error)
