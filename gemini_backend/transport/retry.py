"""The one retry primitive: a backoff schedule, an overall deadline and an injectable sleep.

Every call the project retries (HTTP calls of the backends, generation for evaluation,
opening a study that other workers are creating, cancelling a job) goes through
:func:`retry_call`, so the schedule, the ``Retry-After`` rule and the deadline live here once.
Re-exported from :mod:`gemini_backend` for the sweep layer.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

from gemini_backend.errors import BackendError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth another attempt (reference/tuning_api.md section 4.6).
RETRYABLE_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Truncated exponential backoff with equal jitter: each wait is drawn from
    ``[ceiling / 2, ceiling]``, the ceiling doubling from ``initial_s`` up to ``maximum_s``
    (half of it random, so workers that failed together do not retry together, and never
    close to zero, so a service that is down is not hammered).

    Iterating :meth:`delays` yields the seconds to sleep before each further attempt,
    ``max_attempts - 1`` values in all. ``deadline_s`` bounds the whole call, waits
    included: no attempt starts after it.
    """

    initial_s: float = 1.0
    multiplier: float = 2.0
    maximum_s: float = 30.0
    max_attempts: int = 6
    deadline_s: float | None = None

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        rng = rng or random.Random()
        ceiling = min(self.initial_s, self.maximum_s)
        for _ in range(self.max_attempts - 1):
            yield rng.uniform(ceiling / 2, ceiling)
            ceiling = min(ceiling * self.multiplier, self.maximum_s)


def is_transient(error: BaseException) -> bool:
    """A backend error that may succeed if the same idempotent call is tried again."""
    return isinstance(error, BackendError) and error.retryable


def retry_call(
    call: Callable[[int], T],
    *,
    what: str,
    backoff: Backoff,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    should_retry: Callable[[BaseException], bool] = is_transient,
) -> T:
    """``call(attempt)`` (1-based), tried again on errors ``should_retry`` accepts.

    Waits follow ``backoff``, at least the error's ``retry_after_s`` when it sends one; the
    last error is raised when the attempts are spent or the next wait would end past
    ``backoff.deadline_s`` (counted from the first attempt).
    """
    started_s = clock()
    delays = backoff.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return call(attempt)
        except Exception as error:
            if not should_retry(error):
                raise
            delay_s = next(delays, None)
            if delay_s is None:
                raise
            retry_after_s = getattr(error, "retry_after_s", None)
            if retry_after_s is not None:
                delay_s = max(delay_s, float(retry_after_s))
            deadline_s = backoff.deadline_s
            if deadline_s is not None and clock() + delay_s - started_s > deadline_s:
                raise
            message = str(getattr(error, "message", None) or error)
            said = message if message.startswith(what) else f"{what}: {message}"
            logger.warning("%s; retrying in %.1fs (attempt %d)", said, delay_s, attempt)
            sleep(delay_s)
