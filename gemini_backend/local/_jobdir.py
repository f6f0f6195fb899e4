"""One job's directory: the files a worker writes and any process can read back.

Layout of ``<job_root>/<job_id>/``::

    job.json       the request and the resolved training settings (written once, atomically)
    status.json    state, pid, step counts, checkpoints (atomically replaced, never half-written)
    curve.jsonl    one JSON line per training step (append-only; a torn last line is ignored)
    worker.lock    the worker holds an exclusive flock on it for its whole life
    worker.log     the worker's stdout and stderr
    cancel         present once a cancel was asked for (holds the time it was asked)
    weights/       ``epoch-N.pt`` (byte model) or ``epoch-N/`` (LoRA adapter) per epoch

Nothing here imports torch: the sweep process reads these files without it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemini_backend.base import Example
from gemini_backend.base import JobRequest
from gemini_backend.base import LossSnapshot

_SLUG_CHARS = re.compile(r"[^a-z0-9]+")
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,80}$")
_SLUG_MAX_CHARS = 40


def job_id_for(idempotency_key: str) -> str:
    """A directory name derived from the key: a readable slug plus a short hash, so ``find``
    is a lookup and two keys that slug alike still get different directories."""
    slug = _SLUG_CHARS.sub("-", idempotency_key.lower()).strip("-")[:_SLUG_MAX_CHARS] or "job"
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}"


def is_valid_job_id(job_id: str) -> bool:
    """Whether ``job_id`` could name a job directory (guards against path tricks)."""
    return bool(_JOB_ID.match(job_id))


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """Everything the worker needs besides the examples, resolved at submit time."""

    base_model: str
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    threads: int
    max_seq_len: int
    d_model: int
    n_layers: int
    n_heads: int
    lora_rank: int
    lora_alpha: int
    max_new_tokens: int

    @property
    def is_byte_model(self) -> bool:
        return self.base_model == BYTE_MODEL_NAME


#: ``base_model`` value that selects the project's own byte-level transformer.
BYTE_MODEL_NAME = "byte-transformer"


@dataclass(frozen=True, slots=True)
class JobDir:
    """Paths of one job's files."""

    path: Path

    @property
    def job_file(self) -> Path:
        return self.path / "job.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def curve_file(self) -> Path:
        return self.path / "curve.jsonl"

    @property
    def lock_file(self) -> Path:
        return self.path / "worker.lock"

    @property
    def log_file(self) -> Path:
        return self.path / "worker.log"

    @property
    def cancel_file(self) -> Path:
        return self.path / "cancel"

    @property
    def weights_dir(self) -> Path:
        return self.path / "weights"

    def read_job(self) -> tuple[JobRequest, TrainSettings]:
        data = json.loads(self.job_file.read_text(encoding="utf-8"))
        return request_from_dict(data["request"]), TrainSettings(**data["settings"])

    def read_status(self) -> dict[str, Any]:
        """The last status written; ``{}`` before the first write."""
        try:
            return dict(json.loads(self.status_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return {}

    def write_status(self, status: dict[str, Any]) -> None:
        atomic_write_json(self.status_file, status)

    def update_status(self, **changes: Any) -> dict[str, Any]:
        """Read, change and atomically replace the status (one writer at a time: the worker,
        or a poller that holds the worker lock)."""
        status = self.read_status()
        status.update(changes)
        self.write_status(status)
        return status

    def take_worker_lock(self) -> int | None:
        """The worker lock, held until the returned descriptor is closed (or handed to a
        worker); ``None`` while another process holds it."""
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def is_worker_alive(self) -> bool:
        """True while some process holds the worker lock (the worker, from birth to exit)."""
        try:
            fd = self.take_worker_lock()
        except FileNotFoundError:  # the job's folder is gone
            return False
        if fd is None:
            return True
        os.close(fd)  # closing drops the lock we took
        return False


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that readers see the old file or the new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CurveReader:
    """Reads ``curve.jsonl`` incrementally: each call parses only the lines added since the
    last one, and a line still being written (no newline yet) waits for the next call."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self.snapshots: list[LossSnapshot] = []
        self.tokens = 0
        self.step_times_s: list[float] = []

    def refresh(self) -> None:
        try:
            with open(self._path, "rb") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offset += len(complete)
        for line in complete.splitlines():
            row = json.loads(line)
            self.snapshots.append(
                LossSnapshot(step=row["step"], epoch=row["epoch"], loss=row["loss"],
                             eval_loss=row.get("eval_loss"))
            )
            self.tokens += int(row["tokens"])
            self.step_times_s.append(float(row["t"]))


def curve_line(snapshot: LossSnapshot, *, tokens: int, time_s: float) -> str:
    """One line of ``curve.jsonl`` (``tokens`` trained in this step, ``t`` wall time)."""
    row: dict[str, Any] = dataclasses.asdict(snapshot)
    if row["eval_loss"] is None:
        del row["eval_loss"]
    row.update(tokens=tokens, t=time_s)
    return json.dumps(row) + "\n"


def request_to_dict(request: JobRequest) -> dict[str, Any]:
    """The request as JSON-able data (the examples kept exactly)."""
    data = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
    data["train"] = [dataclasses.asdict(e) for e in request.train]
    data["validation"] = [dataclasses.asdict(e) for e in request.validation]
    data["extra_knobs"] = dict(request.extra_knobs)
    data["labels"] = dict(request.labels)
    return data


def request_from_dict(data: dict[str, Any]) -> JobRequest:
    fields = dict(data)
    fields["train"] = tuple(Example(**e) for e in data["train"])
    fields["validation"] = tuple(Example(**e) for e in data["validation"])
    return JobRequest(**fields)
