"""One backoff schedule and one retry classifier, shared by every HTTP backend."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from gemini_backend.errors import BackendError

#: HTTP statuses worth another attempt (reference/tuning_api.md section 4.6).
RETRYABLE_STATUS_CODES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Truncated exponential backoff with full jitter (api-core's schedule).

    Iterating yields the seconds to sleep before each further attempt, ``max_attempts - 1``
    values in all.
    """

    initial_s: float = 1.0
    multiplier: float = 2.0
    maximum_s: float = 30.0
    max_attempts: int = 6

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        rng = rng or random.Random()
        ceiling = min(self.initial_s, self.maximum_s)
        for _ in range(self.max_attempts - 1):
            yield rng.uniform(ceiling / 2, ceiling)
            ceiling = min(ceiling * self.multiplier, self.maximum_s)


def is_retryable(error: BaseException) -> bool:
    """Whether trying the same idempotent call again may succeed."""
    return isinstance(error, BackendError) and error.retryable
