"""Exactly-once ``tuningJobs.create`` when the job list may lag behind creates.

``tuningJobs.create`` takes no request id, so a job is found again only by listing its
idempotency-key label. Nothing documents how soon a created job shows in ``tuningJobs.list``,
so the backend assumes the list lags. A create whose outcome is unknown (a timeout, a
dropped connection, a 5xx, or a crash between the POST and storing the job's name) is
therefore not repeated until the job has stayed absent from the list for a bounded window.

Every POST is written down first, in the bucket the datasets go to
(``{prefix}/{key label}/{n}.json`` holding the time it was sent), so the wait survives a
restarted sweep, and another worker, on any machine, continues the same wait rather than
starting a fresh one. Records are created once (``ifGenerationMatch=0``) and never
overwritten or deleted, so the object roles the docs name (create + read + list) suffice.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from gemini_backend.vertex._gcs import GcsUploader
from gemini_backend.vertex._wire import label_value

#: List checks of an unproven create, as fractions of the time until it is proven absent
#: (a lagging list usually catches up early; the last check proves absence).
CHECK_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
MIN_CHECK_DELAY_S = 0.5


@dataclass(frozen=True, slots=True)
class CreateAttempt:
    """The ``number``-th POST for a key, sent at ``posted_at`` (seconds since the epoch)."""

    number: int
    posted_at: float


class CreateLedger:
    """The POSTs sent for each idempotency key, kept in the bucket. Thread-safe.

    Args:
        uploader: the bucket's uploader (create-once writes, reads, lists).
        prefix: the folder of the records in the bucket.
        clock: wall-clock seconds, for a record that cannot be read.
    """

    def __init__(self, uploader: GcsUploader, *, prefix: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._uploader = uploader
        self._clock = clock
        self._prefix = prefix.strip("/")
        self._writer = uuid.uuid4().hex

    def _folder(self, key: str) -> str:
        return f"{self._prefix}/{label_value(key)}/"

    def last_attempt(self, key: str) -> CreateAttempt | None:
        """The latest POST recorded for ``key``, or ``None`` if none was ever sent."""
        folder = self._folder(key)
        numbers = [int(stem) for name in self._uploader.object_names(folder)
                   if (stem := name.removeprefix(folder).removesuffix(".json")).isdigit()]
        if not numbers:
            return None
        number = max(numbers)
        posted_at = self._read(f"{folder}{number}.json").get("posted_at")
        # An unreadable record counts as sent just now: the wait is then the longest.
        return CreateAttempt(number, float(posted_at) if isinstance(posted_at, (int, float))
                             else self._clock())

    def record(self, key: str, number: int, posted_at: float) -> bool:
        """Write down POST ``number`` before sending it; False when another writer did.

        A retried write that finds its own record (the first try landed) counts as written.
        """
        name = f"{self._folder(key)}{number}.json"
        body = json.dumps({"key": key, "number": number, "posted_at": posted_at,
                           "writer": self._writer}).encode()
        if self._uploader.create_object(name, body):
            return True
        return self._read(name).get("writer") == self._writer

    def _read(self, name: str) -> dict[str, object]:
        data = self._uploader.read_object(name)
        try:
            record = json.loads(data or b"{}")
        except ValueError:
            record = {}
        return record if isinstance(record, dict) else {}


def settle_time(attempt: CreateAttempt, *, request_timeout_s: float, window_s: float) -> float:
    """When the job of ``attempt``, had it been created, must show in the list.

    The POST may take up to the request timeout to land, then the list may lag ``window_s``.
    """
    return attempt.posted_at + request_timeout_s + window_s


def next_check_delay(attempt: CreateAttempt, now: float, *, request_timeout_s: float,
                     window_s: float) -> float:
    """Seconds until the next list check of an unproven create: at 1/8, 1/4, 1/2 and all of
    the time to :func:`settle_time` (a job that was created usually shows early)."""
    span = request_timeout_s + window_s
    for fraction in CHECK_FRACTIONS:
        due = attempt.posted_at + span * fraction
        if due > now:
            return max(MIN_CHECK_DELAY_S, due - now)
    return MIN_CHECK_DELAY_S
