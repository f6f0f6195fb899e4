"""An in-memory backend driven by an injected clock, for runner tests without sleeping.

A job's loss falls with the epoch and is worse the further ``learning_rate_multiplier`` is
from 1.0, so a pruner has a clearly bad configuration to stop. Failure modes are switched on
per test (a job that fails, transient errors on poll and submit).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import ClassVar

from gemini_backend import CANONICAL_KNOBS
from gemini_backend import BackendConfig
from gemini_backend import BaseBackend
from gemini_backend import Capabilities
from gemini_backend import CreateUnsettled
from gemini_backend import InvalidRequestError
from gemini_backend import JobNotFound
from gemini_backend import JobRef
from gemini_backend import JobRequest
from gemini_backend import JobState
from gemini_backend import JobStatus
from gemini_backend import LossSnapshot
from gemini_backend import TransientError
from gemini_backend import check_request

KIND = "tests.sweeps_tests.fake_backend:FakeBackend"


class FakeBackendConfig(BackendConfig):
    """For the CLI, which builds its backend from the config: real time, quick steps."""

    step_s: float = 0.01
    fail_message: str | None = None


class FakeClock:
    """A monotonic clock whose ``sleep`` advances time instead of waiting."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.slept_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.now_s += seconds
        self.slept_s += seconds


def loss_at(multiplier: float, epoch_fraction: float) -> float:
    """The fake's loss curve: decays with training, higher the further lr is from 1.0."""
    penalty = abs(math.log(multiplier))
    return 0.4 + 2.0 * penalty + 2.0 * math.exp(-1.2 * epoch_fraction)


@dataclass
class FakeJob:
    request: JobRequest
    started_s: float
    cancelled_s: float | None = None
    fail_message: str | None = None


@dataclass
class FakeBackend(BaseBackend):
    """Jobs advance one step every ``step_s`` of the clock; ``steps_per_epoch`` per epoch."""

    kind: ClassVar[str] = KIND
    config_model: ClassVar[type[BackendConfig]] = FakeBackendConfig

    clock: Callable[[], float]
    step_s: float = 1.0
    steps_per_epoch: int = 4
    poll_interval_s: float = 1.0
    fail_when: Callable[[JobRequest], str | None] = lambda request: None
    transient_polls: int = 0  # the next N polls raise TransientError
    transient_submits: int = 0
    unsettled_submits: int = 0  # the next N submits say a lost create is not settled yet
    cancel_refusal: str | None = None  # every cancel refused with this (a job that ended)
    jobs: dict[str, FakeJob] = field(default_factory=dict)
    submits: list[str] = field(default_factory=list)
    polls: int = 0
    cancels: list[str] = field(default_factory=list)

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(knobs=frozenset(CANONICAL_KNOBS), has_validation_loss=True,
                            poll_interval_s=self.poll_interval_s, max_poll_interval_s=8.0)

    def submit(self, request: JobRequest) -> JobRef:
        check_request(request, self.capabilities)
        if self.transient_submits:
            self.transient_submits -= 1
            raise TransientError("503 service unavailable", status_code=503)
        if self.unsettled_submits:
            self.unsettled_submits -= 1
            raise CreateUnsettled("an earlier create may have made a job the list does not "
                                  "show yet", retry_after_s=15.0)
        if request.idempotency_key not in self.jobs:
            self.submits.append(request.idempotency_key)
            self.jobs[request.idempotency_key] = FakeJob(request, self.clock(),
                                                         fail_message=self.fail_when(request))
        return self._ref(request.idempotency_key)

    def poll(self, ref: JobRef) -> JobStatus:
        self.polls += 1
        if self.transient_polls:
            self.transient_polls -= 1
            raise TransientError("connection reset")
        job = self.jobs.get(ref.job_id)
        if job is None:
            raise JobNotFound(f"no job {ref.job_id}")
        return self._status(job)

    def _status(self, job: FakeJob) -> JobStatus:
        request = job.request
        total = request.epochs * self.steps_per_epoch
        until = self.clock() if job.cancelled_s is None else job.cancelled_s
        done = min(total, int((until - job.started_s) / self.step_s))
        if job.fail_message and done >= self.steps_per_epoch:
            snaps = self._snapshots(request, self.steps_per_epoch)
            return JobStatus(JobState.FAILED, snaps, error_message=job.fail_message)
        snaps = self._snapshots(request, done)
        if done == total:
            return JobStatus(JobState.SUCCEEDED, snaps, progress=1.0,
                             training_tokens=None)
        state = JobState.CANCELLED if job.cancelled_s is not None else JobState.RUNNING
        return JobStatus(state, snaps, progress=done / total)

    def _snapshots(self, request: JobRequest, count: int) -> tuple[LossSnapshot, ...]:
        snaps = []
        for step in range(1, count + 1):
            epoch = (step - 1) // self.steps_per_epoch + 1
            loss = loss_at(request.learning_rate_multiplier, step / self.steps_per_epoch)
            is_epoch_end = step % self.steps_per_epoch == 0
            eval_loss = loss + 0.05 if is_epoch_end and request.validation else None
            snaps.append(LossSnapshot(step=step, epoch=epoch, loss=loss, eval_loss=eval_loss))
        return tuple(snaps)

    def cancel(self, ref: JobRef) -> None:
        job = self.jobs[ref.job_id]
        if self.cancel_refusal is not None:
            raise InvalidRequestError(self.cancel_refusal, status_code=400)
        self.cancels.append(ref.job_id)
        if job.cancelled_s is None:
            job.cancelled_s = self.clock()

    def find(self, idempotency_key: str) -> JobRef | None:
        return self._ref(idempotency_key) if idempotency_key in self.jobs else None

    def _ref(self, key: str) -> JobRef:
        return JobRef(backend="fake", job_id=key, idempotency_key=key)

    @classmethod
    def from_config(cls, config: BackendConfig, *, base_dir: Path) -> BaseBackend:
        assert isinstance(config, FakeBackendConfig)
        message = config.fail_message
        return cls(clock=time.monotonic, step_s=config.step_s, poll_interval_s=config.step_s,
                   fail_when=lambda request: message)
