"""The runner's bookkeeping: which trials are in flight, counts, budget ledger, stop reason.

Everything here is rebuilt from the Optuna study when a sweep resumes: finished trials give
the counts and the spent budget, RUNNING trials are adopted with the job references stored on
them, so nothing depends on the memory of a process that may have been killed.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

import optuna

from sweeps import trial_record as ts
from sweeps.config.schema import SweepConfig
from sweeps.engine import budget
from sweeps.evaluation.runner import objective_values
from sweeps.policy.fidelity import ATTR_EPOCHS_MODE
from sweeps.policy.fidelity import FROM_CURVE
from sweeps.policy.fidelity import is_from_curve
from sweeps.policy.search_space import grid_size
from sweeps.policy.search_space import min_epochs
from sweeps.policy.search_space import suggest_knobs
from sweeps.results.sweep_results import TrialRecord
from sweeps.results.sweep_results import pick_best
from sweeps.results.sweep_results import trial_record
from sweeps.trial_record import InFlight
from sweeps.trial_record import TrialOutcome

if TYPE_CHECKING:
    from sweeps.engine._loop import SweepContext

logger = logging.getLogger(__name__)

TrialState = optuna.trial.TrialState
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True, slots=True)
class JobProgress:
    """One running job, as the progress view shows it."""

    number: int
    state: str
    epoch: int
    epochs: int
    knobs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SweepProgress:
    """A snapshot of the sweep for a progress view (taken once per loop pass)."""

    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    jobs: tuple[JobProgress, ...]
    best_number: int | None
    best_value: float | None
    spent_tokens: float
    committed_tokens: float
    stop_reason: str | None


class SweepState:
    """Counts and ledgers of one sweep, owned by the runner (never by a backend)."""

    def __init__(self, config: SweepConfig, study: optuna.Study, *, tokens_per_epoch: int):
        self.config = config
        self.tokens_per_epoch = tokens_per_epoch
        self.in_flight: dict[int, InFlight] = {}
        self.unrecorded: set[int] = set()
        self._trials: dict[int, optuna.trial.Trial] = {}
        finished = study.get_trials(deepcopy=False, states=FINISHED_STATES)
        # Trials copied by warm start were run by an earlier sweep: not counted, not paid.
        self.n_warm_start = sum(ts.is_warm_start(t) for t in finished)
        finished = [t for t in finished if not ts.is_warm_start(t)]
        self.n_complete = sum(t.state is TrialState.COMPLETE for t in finished)
        self.n_pruned = sum(t.state is TrialState.PRUNED for t in finished)
        self.n_failed = sum(t.state is TrialState.FAIL for t in finished)
        self.spent_tokens = float(sum(t.user_attrs.get("training_tokens", 0)
                                      + t.user_attrs.get(ts.ATTR_EVAL_TOKENS, 0)
                                      for t in finished))
        self.committed_tokens = 0.0
        self.max_trials = config.n_trials
        if config.sampler.kind == "grid":  # past the grid, Optuna would repeat (and re-pay)
            self.max_trials = min(config.n_trials, grid_size(config.search_space))
        self.consecutive_failures = 0
        self.last_failure = ""
        self.stop_reason: str | None = None
        self.is_failed = False
        self._no_more_trials = False
        self._ahead: deque[InFlight] = deque()
        # One rule with status and export (sweeps.results.sweep_results.pick_best).
        self._maximize = config.directions[0] == "maximize"
        self.best: TrialRecord | None = pick_best(
            (trial_record(t) for t in finished if t.state is TrialState.COMPLETE),
            maximize=self._maximize)

    @property
    def best_number(self) -> int | None:
        return self.best.number if self.best is not None else None

    @property
    def best_value(self) -> float | None:
        return self.best.value if self.best is not None else None

    @property
    def n_finished(self) -> int:
        return self.n_complete + self.n_pruned + self.n_failed

    # --- starting trials ----------------------------------------------------------------------

    def may_start_trial(self, n_recording: int) -> bool:
        """Is there a free slot and a trial still wanted?"""
        has_room = len(self.in_flight) < self.config.concurrency
        has_ahead = bool(self._ahead)  # asked already: it only waits for a slot
        if self.has_failed_too_often():
            return False
        return has_room and (has_ahead or self._is_wanted(n_recording))

    def may_ask_ahead(self, n_recording: int) -> bool:
        """Ask for the next trial before a slot frees, so the slot is filled at once?

        Only with concurrency > 1 (a sequential sweep should see each result before its
        next proposal), one trial at a time, while a job runs its last epoch (a slot frees
        soon). More than one ahead measured no faster: the asks then compete with polling.
        """
        is_full = len(self.in_flight) >= self.config.concurrency
        is_parallel = self.config.concurrency > 1
        n_ending = sum(1 for j in self.in_flight.values()
                       if j.ref is not None and j.epochs_completed >= j.epochs)
        has_room_ahead = not self._ahead and n_ending > 0
        return is_full and is_parallel and has_room_ahead and self._is_wanted(n_recording)

    def _is_wanted(self, n_recording: int) -> bool:
        n_ahead = len(self._ahead)
        n_started = (self.n_finished + len(self.in_flight) + n_recording
                     + len(self.unrecorded) + n_ahead)
        may_continue = not self._no_more_trials and not self.has_failed_too_often()
        return n_started < self.max_trials and may_continue

    def next_trial(self, ctx: SweepContext, now_s: float) -> InFlight | None:
        """The trial asked ahead, or a new one; None when the budget cannot pay for one."""
        job = self._ahead.popleft() if self._ahead else self._ask(ctx, now_s)
        if job is not None:
            job.next_poll_s = now_s
            self.in_flight[job.number] = job
        return job

    def ask_ahead(self, ctx: SweepContext, now_s: float) -> None:
        job = self._ask(ctx, now_s)
        if job is not None:
            self._ahead.append(job)

    def _ask(self, ctx: SweepContext, now_s: float) -> InFlight | None:
        """Ask Optuna for a trial the budget can pay for; store its key before any submit."""
        eval_estimate = ctx.evaluator.estimated_tokens if ctx.evaluator is not None else 0
        cheapest = self.tokens_per_epoch * min_epochs(self.config.search_space) + eval_estimate
        check = self._check_budget(cheapest)
        if not check.fits:
            if not self.in_flight:  # nothing will come back to free budget: stop here
                self._stop_asking(check.reason)
            return None
        trial = self._ask_study(ctx, now_s)
        if trial is None:
            return None
        knobs = suggest_knobs(trial, self.config.search_space)
        estimate = budget.estimate_tokens(self.tokens_per_epoch, int(knobs["epochs"]))
        check = self._check_budget(estimate + eval_estimate)
        if not check.fits:
            trial.set_user_attr(ts.ATTR_FAIL_REASON, check.reason)
            ctx.study.tell(trial, state=TrialState.FAIL)
            self.n_failed += 1
            self._stop_asking(check.reason)
            return None
        key = ts.idempotency_key(self.config.name, ctx.sweep_id, trial.number)
        trial.set_user_attr(ts.ATTR_KNOBS, knobs)
        trial.set_user_attr(ts.ATTR_ESTIMATE, estimate)
        trial.set_user_attr(ts.ATTR_WORKER, ctx.worker_id)
        trial.set_user_attr(ts.ATTR_DATASET_HASH, ctx.data.content_hash)  # for warm start
        if is_from_curve(self.config.search_space.epochs):
            trial.set_user_attr(ATTR_EPOCHS_MODE, FROM_CURVE)
        trial.set_user_attr(ts.ATTR_KEY, key)  # before submit: a restart finds the job by it
        return self._commit(InFlight(trial=trial, knobs=knobs, key=key,
                                     estimate_tokens=estimate, next_poll_s=now_s,
                                     eval_estimate_tokens=eval_estimate))

    def _ask_study(self, ctx: SweepContext, now_s: float) -> optuna.trial.Trial | None:
        """A new trial, within n_trials and study_concurrency counted over every worker."""
        # The leases count every trial of the study, warm-start copies too.
        asked = ctx.leases.ask(max_trials=self.max_trials + self.n_warm_start, now_s=now_s)
        if asked.is_exhausted:  # the other workers asked the rest: not an error
            self._no_more_trials = True
        return asked.trial

    def held_numbers(self) -> frozenset[int]:
        """Trials this worker holds a lease on: asked or adopted, not told, not given up."""
        return frozenset(self._trials) - self.unrecorded

    def release(self, number: int) -> None:
        """Forget a trial another worker took over; its job keeps running (not cancelled)."""
        dropped = [self.in_flight.pop(number)] if number in self.in_flight else []
        dropped += [j for j in self._ahead if j.number == number]
        self._ahead = deque(j for j in self._ahead if j.number != number)
        for job in dropped:
            self.committed_tokens -= job.committed_tokens
        self._trials.pop(number, None)

    def adopt_running_trials(self, ctx: SweepContext, now_s: float) -> int:
        """Take over the RUNNING trials no live worker holds (see :mod:`sweeps.engine._lease`)."""
        running = ctx.leases.claim_orphans(self.held_numbers())
        for frozen in running:
            self.unrecorded.discard(frozen.number)  # adopted again: recorded when it ends
            trial = optuna.trial.Trial(ctx.study, frozen._trial_id)
            knobs = frozen.user_attrs.get(ts.ATTR_KNOBS) or suggest_knobs(
                trial, self.config.search_space)
            key = frozen.user_attrs.get(ts.ATTR_KEY)
            ref = ts.stored_job_ref(frozen)
            if key is None:  # crashed before the key was written: nothing was submitted
                key = ts.idempotency_key(self.config.name, ctx.sweep_id, frozen.number)
                trial.set_user_attr(ts.ATTR_KNOBS, knobs)
                trial.set_user_attr(ts.ATTR_DATASET_HASH, ctx.data.content_hash)
                trial.set_user_attr(ts.ATTR_KEY, key)
            estimate = int(frozen.user_attrs.get(ts.ATTR_ESTIMATE) or budget.estimate_tokens(
                self.tokens_per_epoch, int(knobs["epochs"])))
            eval_estimate = ctx.evaluator.estimated_tokens if ctx.evaluator is not None else 0
            trial.set_user_attr(ts.ATTR_WORKER, ctx.worker_id)
            # A key without a job ref: the submit may have happened, so look it up first.
            was_submitted = frozen.user_attrs.get(ts.ATTR_KEY) is not None and ref is None
            job = self._commit(InFlight(trial=trial, knobs=knobs, key=key,
                                        estimate_tokens=estimate, ref=ref, next_poll_s=now_s,
                                        eval_estimate_tokens=eval_estimate,
                                        submit_attempts=1 if was_submitted else 0,
                                        reported_epochs=set(frozen.intermediate_values),
                                        cancel_reason=ts.stored_cancel_reason(frozen)))
            self.in_flight[job.number] = job
            logger.info("trial=%d re-attached (job=%s)", frozen.number,
                        ref.job_id if ref else "looked up by key")
        return len(running)

    def _commit(self, job: InFlight) -> InFlight:
        """Count the job's estimate as committed budget (it is about to be submitted)."""
        self._trials[job.number] = job.trial
        self.committed_tokens += job.committed_tokens
        return job

    def job_reported(self, job: InFlight) -> None:
        """Correct the budget from what a running job reports it has been billed so far
        (or, on Vertex, for the whole job): its commitment never stays below that."""
        used = job.training_tokens
        if used is not None and used > job.estimate_tokens:
            self.committed_tokens += used - job.estimate_tokens
            job.estimate_tokens = used

    def _check_budget(self, estimate: int) -> budget.BudgetCheck:
        return budget.check_trial(self.config.budget, estimate=estimate,
                                  spent=self.spent_tokens, committed=self.committed_tokens)

    def stop_by_user(self, reason: str) -> list[InFlight]:
        """Ask no more trials; returns the trials asked ahead (never submitted) to finish."""
        self._stop_asking(reason)
        dropped = list(self._ahead)
        self._ahead.clear()
        return dropped

    def _stop_asking(self, reason: str) -> None:
        if not self._no_more_trials:
            logger.warning("no more trials: %s", reason)
        self._no_more_trials = True
        self.stop_reason = self.stop_reason or reason

    # --- finishing trials ---------------------------------------------------------------------

    def job_finished(self, job: InFlight, outcome: TrialOutcome) -> None:
        """The job is over (its run is being written); move its tokens to spent."""
        self.in_flight.pop(job.number, None)
        self.committed_tokens -= job.committed_tokens
        self.spent_tokens += outcome.training_tokens + outcome.eval_tokens
        # Counted now, not at tell, so no new job starts while the stop is decided.
        # A trial the user cancelled says nothing about the service or the config.
        if outcome.state is TrialState.FAIL and not job.cancelled_by_user:
            self.consecutive_failures += 1
            self.last_failure = outcome.fail_reason or "no reason given"
        elif outcome.state is not TrialState.FAIL:
            self.consecutive_failures = 0

    def tell(self, study: optuna.Study, outcome: TrialOutcome, *, run_id: str | None) -> None:
        """Tell Optuna, now that the trial's MLflow run is written."""
        trial = self._trials.pop(outcome.number)
        attrs = outcome.summary_attrs()
        if run_id:
            attrs[ts.ATTR_RUN_ID] = run_id
        try:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            # This worker missed its lease; the worker that took the trial over told it
            # first (its run is the same one: records are idempotent). Its count is theirs.
            logger.warning("trial=%d was told by the worker that took it over", outcome.number)
            return
        # skip_if_finished: another worker of the same study may have told it already.
        if outcome.state is TrialState.COMPLETE:
            values = objective_values(self.config, outcome)
            study.tell(trial, values, skip_if_finished=True)
            self._completed(outcome, values)
        else:
            study.tell(trial, state=outcome.state, skip_if_finished=True)
            self._not_completed(outcome)

    def _completed(self, outcome: TrialOutcome, values: list[float]) -> None:
        self.n_complete += 1
        record = TrialRecord(
            number=outcome.number, state=TrialState.COMPLETE.name, knobs=dict(outcome.knobs),
            value=values[0], values=tuple(values), plateau_epoch=outcome.plateau_epoch,
            recommended_epochs=outcome.recommended_epochs,
            training_tokens=outcome.training_tokens)
        candidates = [record] if self.best is None else [self.best, record]
        self.best = pick_best(candidates, maximize=self._maximize)
        logger.info("trial=%d job=%s finished: %s=%.4g, plateau at epoch %s", outcome.number,
                    outcome.job_ref.job_id if outcome.job_ref else "-", self.config.objective,
                    values[0], outcome.plateau_epoch)

    def _not_completed(self, outcome: TrialOutcome) -> None:
        if outcome.state is TrialState.PRUNED:
            self.n_pruned += 1
            logger.info("trial=%d pruned", outcome.number)
            return
        self.n_failed += 1
        logger.warning("trial=%d failed: %s", outcome.number, outcome.fail_reason)

    def has_failed_too_often(self) -> bool:
        limit = self.config.max_consecutive_failures
        if self.consecutive_failures < limit:
            return False
        if not self.is_failed:
            self.is_failed = True
            self.stop_reason = (f"failures: {self.consecutive_failures} trials failed in a row "
                                f"(max_consecutive_failures: {limit}); last: "
                                f"{self.last_failure}")
        return True

    def progress(self) -> SweepProgress:
        jobs = tuple(
            JobProgress(number=j.number, state=j.last_state.value, epoch=j.epochs_completed,
                        epochs=j.epochs, knobs=dict(j.knobs))
            for j in sorted(self.in_flight.values(), key=lambda j: j.number))
        return SweepProgress(
            n_trials=self.config.n_trials, n_complete=self.n_complete,
            n_pruned=self.n_pruned, n_failed=self.n_failed, jobs=jobs,
            best_number=self.best_number, best_value=self.best_value,
            spent_tokens=self.spent_tokens, committed_tokens=self.committed_tokens,
            stop_reason=self.stop_reason)
