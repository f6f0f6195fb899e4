"""Creating job directories and worker processes, and reading their fate (no torch here).

A job directory is built under a temporary name, with the worker lock already held, and
renamed into place in one step: a directory named after a key is always complete, and a
concurrent submit of the same key loses the rename and returns the existing job.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import gemini_backend
from gemini_backend.base import JobRequest
from gemini_backend.base import JobState
from gemini_backend.errors import BackendError
from gemini_backend.errors import InvalidRequestError
from gemini_backend.local._jobdir import BYTE_MODEL_NAME
from gemini_backend.local._jobdir import JobDir
from gemini_backend.local._jobdir import TrainSettings
from gemini_backend.local._jobdir import atomic_write_json
from gemini_backend.local._jobdir import is_valid_job_id
from gemini_backend.local._jobdir import request_to_dict

if TYPE_CHECKING:
    from gemini_backend.local.backend import LocalBackendConfig

logger = logging.getLogger(__name__)

_LOG_TAIL_LINES = 8
_LOG_TAIL_CHARS = 2000
#: Starts of a job whose workers die before writing their pid, before it is reported FAILED.
_MAX_LAUNCHES = 3


def resolve_settings(
    request: JobRequest, config: LocalBackendConfig, *, base_dir: Path, threads: int
) -> TrainSettings:
    """The worker's settings; checks ``base_model`` so a bad one fails before any process.

    Raises:
        InvalidRequestError: ``base_model`` is neither the byte transformer nor a directory
            holding a Hugging Face model.
    """
    return TrainSettings(
        base_model=_resolve_base_model(request.base_model or config.base_model, base_dir),
        epochs=request.epochs,
        batch_size=request.batch_size or config.default_batch_size,
        learning_rate=config.base_learning_rate * request.learning_rate_multiplier,
        seed=request.seed, threads=threads, max_seq_len=config.max_seq_len,
        d_model=config.d_model, n_layers=config.n_layers, n_heads=config.n_heads,
        lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
        max_new_tokens=config.max_new_tokens,
    )


def _resolve_base_model(name: str, base_dir: Path) -> str:
    if name == BYTE_MODEL_NAME:
        return name
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not (path / "config.json").is_file():
        raise InvalidRequestError(
            f"base_model: {name!r} is neither {BYTE_MODEL_NAME!r} nor a directory holding a "
            f"Hugging Face model ({path / 'config.json'} not found); use {BYTE_MODEL_NAME!r} "
            "or the folder where you saved the model and its tokenizer"
        )
    return str(path.resolve())


def create_job(
    root: Path, job_id: str, request: JobRequest, settings: TrainSettings
) -> tuple[JobDir, int] | None:
    """Build ``root/job_id`` with its files; returns it with the descriptor that holds its
    worker lock (for :func:`start_worker`), or ``None`` when the job already exists."""
    if (root / job_id).exists():
        return None
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{job_id}-", dir=root))
    staged = JobDir(tmp)
    fd = os.open(staged.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        atomic_write_json(staged.job_file, {
            "request": request_to_dict(request),
            "settings": {f: getattr(settings, f) for f in settings.__dataclass_fields__},
        })
        staged.write_status({"state": JobState.QUEUED.value, "submitted_at_s": time.time()})
    except OSError:  # a full disk: leave no half-written staging folder behind
        os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, root / job_id)
    except OSError:  # another submit of the same key won the race
        os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return JobDir(root / job_id), fd


def start_worker(job: JobDir, lock_fd: int, *, threads: int) -> None:
    """Start the detached worker, handing it the held lock; reap it in a daemon thread so
    no zombie is left while this process lives (init reaps it if this process dies first).

    Raises:
        BackendError: the process could not be started (the job is marked FAILED if its
            status can still be written: on a full disk it cannot, and stays QUEUED).
    """
    package_parent = str(Path(gemini_backend.__file__).resolve().parent.parent)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    # Idle OpenMP threads sleep instead of spinning: with spinning, two threads on a busy
    # two-core machine trained 10-30x slower than one (measured); passive, about the same.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "gemini_backend.local._worker", str(job.path.resolve()),
            "--lock-fd", str(lock_fd)]
    try:
        job.update_status(launches=job.read_status().get("launches", 0) + 1)
        with open(job.log_file, "ab") as log:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=job.path, env=env, pass_fds=(lock_fd,), start_new_session=True,
            )
    except OSError as exc:
        with contextlib.suppress(OSError):  # a full disk is a common reason; still say why
            job.update_status(state=JobState.FAILED.value, error_message=f"cannot start: {exc}")
        raise BackendError(f"local job {job.path.name}: cannot start the worker "
                           f"({exc.strerror or exc}); if the disk of {job.path.parent} is "
                           "full, free some space and run the same command again") from exc
    finally:
        os.close(lock_fd)  # the worker's inherited copy keeps the lock
    threading.Thread(target=process.wait, name=f"reap-{job.path.name}", daemon=True).start()


def start_if_never_started(job: JobDir) -> bool:
    """Start the worker of a job whose submitter died between creating the job's folder and
    starting its process. Returns False when the job cannot be saved (its worker ran and
    died, or died as it started ``_MAX_LAUNCHES`` times); True means "read its status again".

    The folder tells a rerun that the job exists, so nothing would submit it again: without
    this, a job that never ran would be reported FAILED and its trial lost.

    Raises:
        BackendError: its worker cannot be started (a full disk, say): the poll fails in
            words; the runner polls again, backing off, and fails the trial with these
            words if the polls keep failing.
    """
    fd = job.take_worker_lock()
    if fd is None:  # another poller has just started it
        return True
    # Read again under the lock: a worker started by another poller may have run and ended.
    status = job.read_status()
    ended = JobState(status.get("state", "QUEUED")).is_terminal()
    if ended or status.get("pid") is not None or status.get("launches", 0) >= _MAX_LAUNCHES:
        os.close(fd)
        return ended
    logger.warning("job=%s has no worker (its submitter died before starting one); "
                   "starting it now", job.path.name)
    _, settings = job.read_job()
    start_worker(job, fd, threads=settings.threads)  # a BackendError fails this poll, in words
    return True


def job_dir(root: Path, job_id: str) -> JobDir | None:
    """The job's directory, or ``None`` for an unknown or malformed id."""
    if not is_valid_job_id(job_id) or not (root / job_id / "job.json").is_file():
        return None
    return JobDir(root / job_id)


def request_cancel(job: JobDir) -> None:
    if not job.cancel_file.exists():
        atomic_write_json(job.cancel_file, {"requested_at_s": time.time()})


def kill_if_cancel_ignored(job: JobDir, status: dict[str, Any], *, grace_s: float) -> None:
    """SIGKILL a live worker that has not stopped ``grace_s`` after a cancel (e.g. stuck
    loading a large model); the next poll then reports CANCELLED."""
    try:
        asked_s = float(json.loads(job.cancel_file.read_text())["requested_at_s"])
    except (FileNotFoundError, ValueError, KeyError):
        return
    pid = status.get("pid")
    if pid is not None and time.time() - asked_s > grace_s:
        logger.warning("job=%s ignored a cancel for %.0f s; killing pid %s",
                       job.path.name, grace_s, pid)
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def death_reason(job: JobDir, status: dict[str, Any]) -> str:
    """Why a job whose worker is gone never finished, with the tail of its log."""
    pid = status.get("pid")
    if pid is None:
        head = f"the worker process died as it started, {status.get('launches', 0)} times"
    else:
        head = f"the worker process (pid {pid}) died before finishing (killed or crashed)"
    try:
        lines = job.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        lines = []
    tail = "\n".join(lines[-_LOG_TAIL_LINES:])[-_LOG_TAIL_CHARS:]
    return f"{head}; last lines of {job.log_file}:\n{tail}" if tail else head


def weights_path(job: JobDir, status: dict[str, Any], *, epoch: int | None) -> Path | None:
    """The tuned weights (``epoch=None``) or an epoch's checkpoint, if the job kept them.

    The status stores paths relative to the job directory, so a moved job root still works.
    """
    if epoch is None:
        relative = status.get("tuned_model")
    else:
        relative = next((c["path"] for c in status.get("checkpoints", [])
                         if c["epoch"] == epoch), None)
    return None if relative is None else job.path.resolve() / relative
