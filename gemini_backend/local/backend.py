"""Local backend: real supervised tuning on this machine, one detached OS process per job.

No account, network or money: the default base model is the project's byte-level
transformer (:mod:`gemini_backend.local.byte_model`); ``base_model`` may instead name a local
Hugging Face model directory, tuned with LoRA. Training needs the ``local`` extra
(``pip install 'gemini-sweep[local]'``); this module itself never imports torch, because the
sweep's config loader imports :class:`LocalBackendConfig`.

Each job lives in ``<job_root>/<job_id>/`` (see :mod:`gemini_backend.local._jobdir`); every
method reads that directory, so a restarted sweep re-attaches to its jobs by reference or by
idempotency key, a job whose submitter died before starting its worker is started by the
next poll, and a worker that died is reported ``FAILED`` with the tail of its log.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import Literal

from pydantic import Field
from pydantic import model_validator

from gemini_backend.base import BackendConfig
from gemini_backend.base import BaseBackend
from gemini_backend.base import Capabilities
from gemini_backend.base import Checkpoint
from gemini_backend.base import Example
from gemini_backend.base import JobRef
from gemini_backend.base import JobRequest
from gemini_backend.base import JobState
from gemini_backend.base import JobStatus
from gemini_backend.base import check_request
from gemini_backend.errors import BackendError
from gemini_backend.errors import JobNotFound
from gemini_backend.local import _spawn
from gemini_backend.local._jobdir import BYTE_MODEL_NAME
from gemini_backend.local._jobdir import CurveReader
from gemini_backend.local._jobdir import JobDir
from gemini_backend.local._jobdir import job_id_for

logger = logging.getLogger(__name__)

_CAPABILITIES = Capabilities(
    knobs=frozenset({"epochs", "batch_size", "learning_rate_multiplier"}),
    has_validation_loss=True,
    has_checkpoints=True,
    can_generate=True,
    poll_interval_s=0.5,
    max_poll_interval_s=5.0,
)


class LocalBackendConfig(BackendConfig):
    """``backend: {kind: local}`` is complete; every field has a default.

    Relative paths (``base_model`` directories, ``job_root``) resolve against the config's
    folder. Model-size fields apply to the byte transformer; ``lora_*`` to HF models.
    """

    kind: Literal["local"] = "local"
    base_model: str = BYTE_MODEL_NAME
    job_root: Path | None = None
    base_learning_rate: float = Field(default=0.001, gt=0)
    default_batch_size: int = Field(default=4, ge=1)
    threads_per_job: int | None = Field(default=None, ge=1)
    max_seq_len: int = Field(default=256, ge=8, le=8192)
    d_model: int = Field(default=64, ge=8)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=4, ge=1)
    lora_rank: int = Field(default=8, ge=1)
    lora_alpha: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=64, ge=1)
    cancel_grace_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> LocalBackendConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_heads "
                             f"({self.n_heads})")
        return self


class LocalBackend(BaseBackend):
    """Tunes on this machine; see the module docstring.

    Args:
        config: the validated ``backend:`` section.
        base_dir: the sweep config's folder; ``job_root`` defaults to
            ``base_dir/.gemini_sweep/jobs``.

    Raises:
        InvalidRequestError: from ``submit``, for a request no job could run (before any
            directory or process is created).
        JobNotFound: from ``poll``/``cancel``/``generate``, for a job id with no directory.

    Example:
        >>> backend = LocalBackend(LocalBackendConfig(), base_dir=Path("."))  # doctest: +SKIP
        >>> ref = backend.submit(request)                                   # doctest: +SKIP
    """

    kind = "local"
    config_model = LocalBackendConfig

    def __init__(self, config: LocalBackendConfig, *, base_dir: Path) -> None:
        self.config = config
        self.base_dir = Path(base_dir)
        root = config.job_root
        if root is None:
            root = Path(".gemini_sweep") / "jobs"
        root = root.expanduser()
        # Absolute, so the paths handed to workers and kept in statuses survive a chdir.
        self.job_root = (root if root.is_absolute() else self.base_dir / root).absolute()
        self._lock = threading.Lock()
        self._curves: dict[str, CurveReader] = {}
        self._loaded: tuple[tuple[str, str], Any] | None = None

    @property
    def capabilities(self) -> Capabilities:
        return _CAPABILITIES

    # --- submit / find ---------------------------------------------------------------------

    def submit(self, request: JobRequest) -> JobRef:
        check_request(request, self.capabilities)
        settings = _spawn.resolve_settings(
            request, self.config, base_dir=self.base_dir,
            threads=self.config.threads_per_job or self._default_threads(),
        )
        job_id = job_id_for(request.idempotency_key)
        ref = JobRef(backend=self.kind, job_id=job_id, idempotency_key=request.idempotency_key)
        try:
            created = _spawn.create_job(self.job_root, job_id, request, settings)
        except OSError as exc:  # read-only or full disk: say where and what to do
            raise BackendError(_unwritable(self.job_root, exc)) from exc
        if created is None:
            logger.info("job=%s exists for key %s; not submitting again", job_id,
                        request.idempotency_key)
            return ref
        job, lock_fd = created
        _spawn.start_worker(job, lock_fd, threads=settings.threads)
        logger.info("job=%s submitted: %d examples, %d epochs, threads=%d", job_id,
                    len(request.train), request.epochs, settings.threads)
        return ref

    def training_tokens_per_epoch(self, train: Sequence[Example]) -> int | None:
        """Tokens the worker trains on per epoch: each example encoded as the model encodes
        it (prompt, separator, output, end, cut to ``max_seq_len``), the count it reports."""
        if not train:
            return 0
        request = JobRequest(train=tuple(train), epochs=1, learning_rate_multiplier=1.0,
                             base_model=self.config.base_model, display_name="count",
                             idempotency_key="count")
        settings = _spawn.resolve_settings(request, self.config, base_dir=self.base_dir,
                                           threads=1)
        from gemini_backend.local import _models  # torch is imported only here

        model = _models.build_model(settings)
        return sum(len(model.encode(example).ids) for example in train)

    def preflight(self) -> None:
        """Fail before the first trial when the job root cannot hold job folders.

        Raises:
            BackendError: the job root cannot be created or written (read-only, full disk).
        """
        try:
            self.job_root.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.job_root) as probe:
                probe.write(b"gemini-sweep write check")
                probe.flush()
                os.fsync(probe.fileno())
        except OSError as exc:
            raise BackendError(_unwritable(self.job_root, exc)) from exc

    def find(self, idempotency_key: str) -> JobRef | None:
        job_id = job_id_for(idempotency_key)
        if not (self.job_root / job_id / "job.json").is_file():
            return None
        return JobRef(backend=self.kind, job_id=job_id, idempotency_key=idempotency_key)

    def _default_threads(self) -> int:
        """Share the cores among this root's running jobs, counting the new one."""
        running = sum(1 for job in self._jobs() if _is_active(job))
        return max(1, (os.cpu_count() or 1) // (running + 1))

    def _jobs(self) -> list[JobDir]:
        if not self.job_root.is_dir():
            return []
        return [JobDir(p) for p in self.job_root.iterdir()
                if p.is_dir() and not p.name.startswith(".")]

    # --- poll / cancel ---------------------------------------------------------------------

    def poll(self, ref: JobRef) -> JobStatus:
        job = self._job(ref)
        status = job.read_status()
        if not JobState(status.get("state", "QUEUED")).is_terminal():
            status = self._check_worker(job, status)
        with self._lock:
            reader = self._curves.setdefault(ref.job_id, CurveReader(job.curve_file))
            reader.refresh()
            snapshots = tuple(reader.snapshots)
            tokens = reader.tokens
        tuned = _spawn.weights_path(job, status, epoch=None)
        return _to_job_status(status, snapshots, tokens, tuned_model=tuned)

    def _check_worker(self, job: JobDir, status: dict[str, Any]) -> dict[str, Any]:
        """Report a dead worker's job as terminal; escalate a cancel the worker ignored."""
        if job.is_worker_alive():
            _spawn.kill_if_cancel_ignored(job, status, grace_s=self.config.cancel_grace_s)
            return status
        status = job.read_status()  # it may have written its last status as it exited
        if JobState(status.get("state", "QUEUED")).is_terminal():
            return status
        if job.cancel_file.exists():
            logger.info("job=%s cancelled before its worker wrote a final status", job.path.name)
            return job.update_status(state=JobState.CANCELLED.value)
        if _spawn.start_if_never_started(job):
            return job.read_status()
        reason = _spawn.death_reason(job, status)
        logger.warning("job=%s failed: %s", job.path.name, reason.splitlines()[0])
        failed = {"state": JobState.FAILED.value, "error_message": reason,
                  "finished_at_s": time.time()}
        try:
            return job.update_status(**failed)
        except OSError as exc:  # a full disk often is why the worker died: still report it
            logger.warning("job=%s: its FAILED status could not be saved (%s)",
                           job.path.name, exc.strerror or exc)
            return {**status, **failed}

    def cancel(self, ref: JobRef) -> None:
        job = self._job(ref)
        status = job.read_status()
        if JobState(status.get("state", "QUEUED")).is_terminal():
            return
        _spawn.request_cancel(job)
        pid = status.get("pid")
        if pid is not None and job.is_worker_alive():
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass  # exited meanwhile; poll reports what it wrote
        logger.info("job=%s cancel requested", ref.job_id)

    def _job(self, ref: JobRef) -> JobDir:
        job = _spawn.job_dir(self.job_root, ref.job_id)
        if job is None:
            raise JobNotFound(f"local job {ref.job_id!r} not found under {self.job_root}")
        return job

    # --- generate --------------------------------------------------------------------------

    def weights_path(self, ref: JobRef, *, epoch: int | None = None) -> Path:
        """Where the tuned weights (or epoch ``epoch``'s checkpoint) are: a ``.pt`` state dict
        for the byte transformer, a ``peft`` adapter directory for a Hugging Face model.

        Raises:
            BackendError: the job has no such weights (not succeeded, or no such epoch).
        """
        job = self._job(ref)
        status = job.read_status()
        weights = _spawn.weights_path(job, status, epoch=epoch)
        if weights is None:
            what = f"epoch {epoch}" if epoch is not None else "the job"
            raise BackendError(f"local job {ref.job_id}: no tuned weights for {what} "
                               f"(state {status.get('state')})")
        return weights

    def generate(
        self, ref: JobRef, prompts: Sequence[str], *, epoch: int | None = None
    ) -> list[str]:
        """Greedy answers of the tuned model (or of epoch ``epoch``'s checkpoint), without
        the prompt; ``prompts`` are text inputs with the dataset's preamble applied.

        Raises:
            BackendError: the job has no such weights (not succeeded, or no such epoch).
        """
        weights = self.weights_path(ref, epoch=epoch)
        job = self._job(ref)
        from gemini_backend.local import _models  # torch is imported only here

        with self._lock:
            key = (ref.job_id, str(weights))
            if self._loaded is None or self._loaded[0] != key:
                _, settings = job.read_job()
                self._loaded = (key, _models.load_tuned_model(settings, weights))
            model = self._loaded[1]
            return list(model.generate(list(prompts)))

    def close(self) -> None:
        with self._lock:
            self._loaded = None
            self._curves.clear()


def _is_active(job: JobDir) -> bool:
    state = job.read_status().get("state")
    return state in (JobState.QUEUED.value, JobState.RUNNING.value) and job.is_worker_alive()


def _to_job_status(
    status: dict[str, Any], snapshots: tuple[Any, ...], tokens: int, *, tuned_model: Path | None
) -> JobStatus:
    state = JobState(status.get("state", "QUEUED"))
    total = status.get("total_steps")
    progress = None
    if state is JobState.SUCCEEDED:
        progress = 1.0
    elif total:
        progress = min(1.0, (snapshots[-1].step if snapshots else 0) / total)
    checkpoints = tuple(
        Checkpoint(checkpoint_id=c["checkpoint_id"], epoch=c["epoch"], step=c["step"])
        for c in status.get("checkpoints", [])
    )
    return JobStatus(
        state=state, snapshots=snapshots, progress=progress,
        error_message=status.get("error_message"),
        tuned_model=None if tuned_model is None else str(tuned_model),
        checkpoints=checkpoints, training_tokens=tokens,
    )


def _unwritable(job_root: Path, exc: OSError) -> str:
    return (f"backend.job_root: cannot write job folders in {job_root} "
            f"({exc.strerror or exc}); free some space or make it writable, or set "
            "backend.job_root to a writable folder. The sweep's state is kept: run the "
            "same command again once it is fixed.")
