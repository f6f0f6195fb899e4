"""Tests written only against ``BaseBackend``: every backend subclasses ``BackendContract``.

A subclass provides three fixtures:

* ``backend``: a fresh backend object, ready to submit (fake services already running);
* ``make_request``: ``(key: str, *, epochs: int = 2) -> JobRequest`` for a small valid job;
* ``reopen``: ``() -> BaseBackend``, a *new* backend object over the same state (the same job
  directory or the same fake service), as a restarted sweep process would build it.

Jobs must finish within ``terminal_timeout_s`` of real time (fakes should run fast).
"""

from __future__ import annotations

import time

import pytest

from gemini_backend import BaseBackend
from gemini_backend import InvalidRequestError
from gemini_backend import JobNotFound
from gemini_backend import JobRef
from gemini_backend import JobState
from gemini_backend import JobStatus


def wait_terminal(backend: BaseBackend, ref: JobRef, timeout_s: float) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    status = backend.poll(ref)
    while not status.state.is_terminal():
        if time.monotonic() > deadline:
            raise AssertionError(f"job {ref.job_id} still {status.state} after {timeout_s}s")
        time.sleep(0.05)
        status = backend.poll(ref)
    return status


def wait_running(backend: BaseBackend, ref: JobRef, timeout_s: float) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    status = backend.poll(ref)
    while status.state is not JobState.RUNNING and not status.state.is_terminal():
        if time.monotonic() > deadline:
            raise AssertionError(f"job {ref.job_id} never started")
        time.sleep(0.02)
        status = backend.poll(ref)
    return status


class BackendContract:
    """The behaviour the runner relies on, checked for each backend."""

    terminal_timeout_s = 120.0

    def test_submit_then_find_returns_the_same_job(self, backend, make_request) -> None:
        ref = backend.submit(make_request("contract-find"))
        assert ref.idempotency_key == "contract-find"
        assert ref.backend == backend.kind
        assert backend.find("contract-find") == ref
        assert backend.find("contract-never-submitted") is None
        wait_terminal(backend, ref, self.terminal_timeout_s)

    def test_submitting_a_key_twice_creates_one_job(self, backend, make_request) -> None:
        first = backend.submit(make_request("contract-twice"))
        second = backend.submit(make_request("contract-twice"))
        assert second.job_id == first.job_id
        wait_terminal(backend, first, self.terminal_timeout_s)

    def test_job_succeeds_with_a_curve_for_every_epoch(self, backend, make_request) -> None:
        ref = backend.submit(make_request("contract-life", epochs=2))
        status = wait_terminal(backend, ref, self.terminal_timeout_s)
        assert status.state is JobState.SUCCEEDED, status.error_message
        assert status.epochs_completed == 2
        assert {s.epoch for s in status.snapshots} == {1, 2}
        steps = [s.step for s in status.snapshots]
        assert steps == sorted(steps)

    def test_a_new_backend_object_reattaches_by_key(self, backend, make_request, reopen) -> None:
        ref = backend.submit(make_request("contract-reattach"))
        again = reopen()
        assert again.find("contract-reattach") == ref
        assert wait_terminal(again, ref, self.terminal_timeout_s).state is JobState.SUCCEEDED

    def test_cancelling_a_finished_job_is_not_an_error(self, backend, make_request) -> None:
        ref = backend.submit(make_request("contract-cancel-done", epochs=1))
        wait_terminal(backend, ref, self.terminal_timeout_s)
        backend.cancel(ref)
        assert backend.poll(ref).state.is_terminal()

    @pytest.mark.parametrize(
        "change",
        [{"epochs": 0}, {"learning_rate_multiplier": -1.0}, {"train": ()}],
        ids=["zero-epochs", "negative-multiplier", "empty-dataset"],
    )
    def test_bad_requests_are_rejected_before_anything_starts(
        self, backend, make_request, change
    ) -> None:
        import dataclasses

        bad = dataclasses.replace(make_request("contract-bad"), **change)
        with pytest.raises(InvalidRequestError):
            backend.submit(bad)
        assert backend.find("contract-bad") is None

    def test_polling_an_unknown_job_raises_job_not_found(self, backend) -> None:
        ghost = JobRef(backend=backend.kind, job_id="no-such-job-0000", idempotency_key="ghost")
        with pytest.raises(JobNotFound):
            backend.poll(ghost)
