"""A user's request to cancel trials or stop a sweep, as stored in the Optuna study.

`gemini-sweep cancel` and every `gemini-sweep run` worker meet only in the study storage
(SQLite, or PostgreSQL shared by several machines), so the request is written there:

- a cancelled trial carries ``cancel_reason = {"kind": "user", ...}`` (written before its job
  is cancelled, as every cancel of the sweep): the worker that drives it records it FAIL with
  that reason, and a resumed sweep does likewise; it is never submitted again;
- after the reasons, the command writes a fresh *request mark* on the study: a worker reads
  one study attribute per check and reads the running trials only when that mark moved
  (reading every running trial each second was most of a fast sweep's loop time);
- ``cancel --all`` also writes a *stop mark* on the study, a fresh id each time. A worker
  remembers the mark it found when it started and stops when the mark changes: it asks no
  new trial, cancels the jobs it still holds, records them and exits. A `run` started
  afterwards sees the new mark as its own starting point and continues the sweep with new
  trials, so nothing has to be cleared (and no worker can clear another's stop).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime

import optuna

from sweeps import trial_record as ts

#: Study user attribute: ``{"id": str, "at": ISO time}``, rewritten by each `cancel --all`.
STUDY_ATTR_STOP = "gemini_sweep.stop"
#: Study user attribute: ``{"id": str, "at": ISO time}``, rewritten by each `cancel` once the
#: trials' reasons are stored.
STUDY_ATTR_REQUESTS = "gemini_sweep.cancel_requests"
USER_CANCEL_MESSAGE = "cancelled by the user"
USER_CANCEL = ts.CancelReason(ts.CANCEL_USER, None, USER_CANCEL_MESSAGE)
#: How often (loop clock) a worker reads the study for cancel requests: one small query.
CHECK_INTERVAL_S = 1.0

TrialState = optuna.trial.TrialState


def is_user_cancel(reason: ts.CancelReason | None) -> bool:
    return reason is not None and reason.kind == ts.CANCEL_USER


def stop_mark(study: optuna.Study) -> str | None:
    """The id of the last `cancel --all` on this study, or None if there was none."""
    return _mark(study.user_attrs, STUDY_ATTR_STOP)


def _mark(attrs: dict[str, object], name: str) -> str | None:
    mark = attrs.get(name)
    return str(mark["id"]) if isinstance(mark, dict) and "id" in mark else None


def _write_mark(study: optuna.Study, name: str) -> str:
    mark_id = uuid.uuid4().hex
    study.set_user_attr(name, {"id": mark_id,
                               "at": datetime.now(UTC).isoformat(timespec="seconds")})
    return mark_id


def request_stop(study: optuna.Study) -> str:
    """Tell every running worker of the study to stop (a new mark id); returns the id."""
    return _write_mark(study, STUDY_ATTR_STOP)


def announce_cancels(study: optuna.Study) -> None:
    """Tell every running worker to read the trials' cancel reasons: call it once they are
    all stored (a worker that sees the new mark must find them)."""
    _write_mark(study, STUDY_ATTR_REQUESTS)


def mark_cancelled(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Store the user's cancel reason on a RUNNING trial (before its job is cancelled).

    A reason the sweep stored already (pruned, stopped past its plateau) is kept: that job is
    being cancelled for it, and its trial is recorded as the sweep decided.
    """
    if ts.stored_cancel_reason(trial) is None:
        optuna.trial.Trial(study, trial._trial_id).set_user_attr(ts.ATTR_CANCEL_REASON,
                                                                 USER_CANCEL.to_dict())


@dataclass(frozen=True, slots=True)
class CancelRequests:
    """What a worker found in the study: stop the sweep, and/or cancel these trials."""

    is_stop: bool
    trial_numbers: frozenset[int]


class CancelWatch:
    """Reads the study for cancel requests, at most every ``interval_s`` of the loop clock."""

    def __init__(self, study: optuna.Study, *, clock: Callable[[], float],
                 interval_s: float = CHECK_INTERVAL_S) -> None:
        self._study = study
        self._clock = clock
        self._interval_s = interval_s
        self._start_mark = stop_mark(study)  # a stop asked before this worker started
        self._requests_read: str | None = None
        self._has_read_trials = False
        self._next_check_s = clock()
        self.is_stopped = False

    def check_soon(self) -> None:
        """Make the next :meth:`check` read the study, however recent the last one."""
        self._next_check_s = float("-inf")

    def check(self, held: Iterable[int]) -> CancelRequests | None:
        """The requests concerning the trials ``held`` here; None when not due yet."""
        now = self._clock()
        if now < self._next_check_s:
            return None
        self._next_check_s = now + self._interval_s
        attrs = self._study.user_attrs
        self.is_stopped = self.is_stopped or _mark(attrs, STUDY_ATTR_STOP) != self._start_mark
        requests = _mark(attrs, STUDY_ATTR_REQUESTS)
        if self._has_read_trials and requests == self._requests_read:
            return CancelRequests(is_stop=self.is_stopped, trial_numbers=frozenset())
        # The first check reads them all: cancels stored before this worker started.
        self._requests_read, self._has_read_trials = requests, True
        held = set(held)
        running = self._study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        numbers = frozenset(t.number for t in running if t.number in held
                            and is_user_cancel(ts.stored_cancel_reason(t)))
        return CancelRequests(is_stop=self.is_stopped, trial_numbers=numbers)
