"""The replay backend's job files: one JSON file per job, so jobs outlive the sweep process.

A job's file holds everything needed to replay it (its wall-clock start, the chosen curve with
each point's reveal time already scaled, ``cancelled_at``), so any process that opens the same
job root computes the same progress from the clock alone. Creation is exclusive (a hard link
of a fully written temporary file, which fails if the job exists), so two processes
submitting one key create one job; updates replace the file atomically. Every creation
appends one line to ``submissions.log`` (``O_APPEND`` + fsync) so tests can count them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import threading
from collections import Counter
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from pathlib import Path
from typing import Any

from gemini_backend.base import LossSnapshot
from gemini_backend.errors import BackendError

logger = logging.getLogger(__name__)

SUBMISSIONS_LOG_NAME = "submissions.log"
_SLUG_MAX_CHARS = 48
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_JOB_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_PARSED_JOBS_KEPT = 1024  # jobs in flight at once are far fewer


@dataclass(frozen=True, slots=True)
class ReplayJob:
    """One replayed job as stored on disk. Times are wall-clock seconds (``time.time``)."""

    job_id: str
    idempotency_key: str
    started_at: float
    snapshots: tuple[LossSnapshot, ...]
    reveal_after_s: tuple[float, ...]
    play_duration_s: float
    tokens_per_epoch: float | None = None
    record_index: int = 0
    record_params: dict[str, Any] = field(default_factory=dict)
    cancelled_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["snapshots"] = [asdict(s) for s in self.snapshots]
        data["reveal_after_s"] = list(self.reveal_after_s)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplayJob:
        return cls(
            job_id=str(data["job_id"]),
            idempotency_key=str(data["idempotency_key"]),
            started_at=float(data["started_at"]),
            snapshots=tuple(LossSnapshot(**s) for s in data["snapshots"]),
            reveal_after_s=tuple(float(t) for t in data["reveal_after_s"]),
            play_duration_s=float(data["play_duration_s"]),
            tokens_per_epoch=data.get("tokens_per_epoch"),
            record_index=int(data.get("record_index", 0)),
            record_params=dict(data.get("record_params", {})),
            cancelled_at=data.get("cancelled_at"),
        )

    def cancelled(self, at: float) -> ReplayJob:
        return replace(self, cancelled_at=at)

    def epochs_trained(self, shown: int) -> float:
        """Epochs trained once the first ``shown`` steps have played, counting the steps of
        an unfinished epoch as a fraction of it: the local backend, which recorded the
        curves, reports the tokens of the steps it trained, so a job cancelled a few steps
        into an epoch is not billed the whole epoch."""
        steps_in_epoch = Counter(s.epoch for s in self.snapshots)
        return sum(1 / steps_in_epoch[s.epoch] for s in self.snapshots[:shown])


def job_id_for(idempotency_key: str) -> str:
    """A file-safe job id from the key: a readable slug plus a short hash (keys may collide
    once slugged, the hash keeps them apart)."""
    slug = _UNSAFE_CHARS.sub("-", idempotency_key)[:_SLUG_MAX_CHARS].strip("-.") or "job"
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}"


class ReplayJobStore:
    """Job files under ``job_root``. Safe to share between threads and processes."""

    def __init__(self, job_root: Path) -> None:
        self.job_root = job_root
        # Parsed jobs by file identity: every poll reads every job in flight, and parsing a
        # long curve each time was most of a simulated sweep's time. A create or update
        # replaces the file (a new inode), so a changed job is never served from here.
        self._parsed: dict[Path, tuple[tuple[int, int, int], ReplayJob]] = {}
        self._parsed_lock = threading.Lock()

    def path_of(self, job_id: str) -> Path | None:
        """The job's file, or ``None`` for an id no job of ours can have (e.g. ``../x``)."""
        if not _JOB_ID.match(job_id):
            return None
        return self.job_root / f"{job_id}.json"

    def read(self, job_id: str) -> ReplayJob | None:
        """The stored job, or ``None`` when there is no such job.

        Raises:
            BackendError: the job file exists but is damaged (names the file).
        """
        path = self.path_of(job_id)
        if path is None:
            return None
        try:
            with path.open("rb") as file:
                stat = os.fstat(file.fileno())
                identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
                with self._parsed_lock:
                    cached = self._parsed.get(path)
                if cached is not None and cached[0] == identity:
                    return cached[1]
                data = file.read()
        except FileNotFoundError:
            return None
        try:
            job = ReplayJob.from_dict(json.loads(data.decode("utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"{path}: damaged replay job file ({exc}); delete it to forget the job"
            ) from exc
        with self._parsed_lock:
            self._parsed.pop(path, None)
            if len(self._parsed) >= _PARSED_JOBS_KEPT:  # the one parsed longest ago goes
                self._parsed.pop(next(iter(self._parsed)))
            self._parsed[path] = (identity, job)
        return job

    def create(self, job: ReplayJob) -> bool:
        """Store a new job; ``False`` (nothing written) when the job already exists."""
        self.job_root.mkdir(parents=True, exist_ok=True)
        final = self.job_root / f"{job.job_id}.json"
        tmp = self._write_tmp(job)
        try:
            os.link(tmp, final)  # atomic and exclusive: fails if another process won
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        self._log_submission(job)
        return True

    def update(self, job: ReplayJob) -> None:
        """Replace an existing job's file atomically."""
        tmp = self._write_tmp(job)
        os.replace(tmp, self.job_root / f"{job.job_id}.json")

    def _write_tmp(self, job: ReplayJob) -> Path:
        fd, name = tempfile.mkstemp(dir=self.job_root, prefix=f".{job.job_id}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(job.to_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        return Path(name)

    def _log_submission(self, job: ReplayJob) -> None:
        line = json.dumps(
            {"key": job.idempotency_key, "job_id": job.job_id, "time": job.started_at}
        )
        fd = os.open(
            self.job_root / SUBMISSIONS_LOG_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644
        )
        try:
            os.write(fd, (line + "\n").encode("utf-8"))  # one write: lines never interleave
            os.fsync(fd)
        finally:
            os.close(fd)


def read_submission_log(job_root: Path) -> list[dict[str, Any]]:
    """Every job creation recorded under ``job_root``, oldest first (``[]`` before any)."""
    try:
        text = (Path(job_root) / SUBMISSIONS_LOG_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
