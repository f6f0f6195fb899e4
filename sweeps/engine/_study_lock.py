"""A mutex shared by every worker of one study, and the clock its leases are measured with.

Workers of one study (``gemini-sweep run`` processes on any machines) hold it for a few
milliseconds around the steps that read the study and then write it on what they read:
asking a trial only while the study has fewer than ``n_trials`` (so two workers racing for
the last trial cannot make ``n_trials + 1``), claiming an orphaned trial (so two workers
cannot both take it over) and renewing a lease. Optuna has no compare-and-set, so the
storage's own locking does the job:

- PostgreSQL: a transaction-level advisory lock (``pg_advisory_xact_lock``) on its own
  connection. A worker that dies while holding it loses the connection, and the server
  releases the lock at once. The clock is the server's (``clock_timestamp()``), so every
  worker measures heartbeats on the same clock whatever the skew between machines.
- SQLite: ``flock`` on a file next to the database (SQLite is one machine: one clock).
- anything else: a lock inside this process only; a warning says to run one worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import sqlalchemy
from sqlalchemy.engine import make_url

from gemini_backend import Backoff
from gemini_backend import retry_call
from sweeps.errors import ServiceUnavailable

logger = logging.getLogger(__name__)

#: How long a worker waits for the lock before giving up with an error (a holder keeps it
#: for milliseconds; minutes mean something is wrong with the database).
LOCK_TIMEOUT_S = 120
_FIRST_USE_BACKOFF = Backoff(initial_s=0.7, multiplier=1.0, maximum_s=0.7, max_attempts=5)

T = TypeVar("T")


class StorageUnavailable(ServiceUnavailable):
    """The study's database stopped answering during a sweep (jobs in flight keep running)."""

    @classmethod
    def from_error(cls, storage_url: str, exc: Exception) -> StorageUnavailable:
        first_line = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        safe_url = make_url(storage_url).render_as_string(hide_password=True)
        return cls(f"storage {safe_url}: the database stopped answering ({first_line}); "
                   "jobs in flight keep running: run the same command again when it is back")


class StudyLock:
    """The mutex of one study (and purpose) on one storage; see the module docstring.

    ``hold()`` is a context manager yielding the lease clock in epoch seconds. Safe to use
    from several threads of one process.
    """

    def __init__(self, storage_url: str, lock_name: str) -> None:
        self.lock_name = lock_name
        self._thread_lock = threading.Lock()
        url = make_url(storage_url)
        self._engine: sqlalchemy.Engine | None = None
        self._lock_path: Path | None = None
        self.is_shared = True
        if url.get_backend_name() == "postgresql":
            self._engine = sqlalchemy.create_engine(url, pool_size=1, max_overflow=0,
                                                    pool_pre_ping=True)
        elif url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            suffix = hashlib.sha256(lock_name.encode()).hexdigest()[:8]
            self._lock_path = Path(f"{url.database}.{suffix}.lock")
        else:
            self.is_shared = False
            logger.warning("storage %s: gemini-sweep can coordinate workers only on "
                           "PostgreSQL or SQLite; run a single worker on this study",
                           url.get_backend_name())

    @contextlib.contextmanager
    def hold(self) -> Iterator[float]:
        """Hold the lock; yields the lease clock (epoch seconds) read while holding it."""
        with self._thread_lock:
            if self._engine is not None:
                with self._hold_advisory(self._engine) as now_s:
                    yield now_s
            elif self._lock_path is not None:
                with self._hold_file(self._lock_path):
                    yield time.time()
            else:
                yield time.time()

    @contextlib.contextmanager
    def _hold_advisory(self, engine: sqlalchemy.Engine) -> Iterator[float]:
        with engine.connect() as connection, connection.begin():
            connection.execute(sqlalchemy.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_S}s'"))
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": advisory_key(self.lock_name)})
            now_s = connection.execute(sqlalchemy.text(
                "SELECT extract(epoch FROM clock_timestamp())")).scalar_one()
            yield float(now_s)
        # Commit (or rollback on error) ended the transaction: the lock is released.

    @contextlib.contextmanager
    def _hold_file(self, path: Path) -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+b") as handle:  # one open file per hold: flock excludes them
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def retry_first_use(action: Callable[[], T]) -> T:
    """Run ``action`` (open the study), again if workers collided creating a fresh database.

    Optuna creates its tables on first use; workers started together on an empty PostgreSQL
    database race to create them, and the losers get a duplicate type or table error. The
    tables exist by then, so a second try succeeds.
    """
    collided = (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError)
    # Jittered waits: the workers do not collide again.
    return retry_call(lambda _: action(), what="opening the study (another worker is "
                      "creating its tables)", backoff=_FIRST_USE_BACKOFF,
                      should_retry=lambda exc: isinstance(exc, collided))


def advisory_key(lock_name: str) -> int:
    """A stable signed 64-bit key for ``pg_advisory_xact_lock`` from a readable name."""
    digest = hashlib.sha256(f"gemini-sweep:{lock_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


__all__ = ["StorageUnavailable", "StudyLock", "advisory_key", "retry_first_use"]
