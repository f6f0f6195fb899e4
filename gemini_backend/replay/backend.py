"""Replay backend: serves recorded loss curves so sweep policies can be tried at no cost.

A request gets the recorded trial nearest to its knobs (the learning-rate multiplier and the
batch size compared on a log scale), among those that ran at least the requested epochs; when
the file holds several recordings of those knobs (seeds), the trial's name and seed pick one,
so trials see run-to-run noise and a resubmitted trial sees the same run again. The
curve is truncated to the requested epochs and played out in wall-clock time, each point
revealed ``time_s x time_scale`` seconds after submit (``time_scale: 0`` = at once).

Jobs live in files under ``job_root`` (default ``<config folder>/.gemini_sweep/replay_jobs``),
so a restarted sweep, another process or a new backend object sees the same jobs and the same
progress. No network, no credentials, no extra dependencies. Config::

    backend: {kind: replay, curves: data/replay_demo_curves.json, time_scale: 1.0}

By default (``clock: simulated``) the sweep runs in job time (``sweeps._replay_clock``):
polls, prunes, patience stops and cancels happen at the same recorded second at any
``time_scale``, which then only paces the real waiting, so the same config and seed give the
same sweep. ``clock: wall`` plays jobs in real time, as remote jobs run while the sweep works:
for several workers sharing one study (each has its own job time otherwise) and for timing
the orchestration itself (benchmarks/orchestration.py).

The curves file format is described in :mod:`gemini_backend.replay._curves`.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import math
import time
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from typing import ClassVar
from typing import Literal

from pydantic import Field

from gemini_backend.base import CANONICAL_KNOBS
from gemini_backend.base import BackendConfig
from gemini_backend.base import BaseBackend
from gemini_backend.base import Capabilities
from gemini_backend.base import JobRef
from gemini_backend.base import JobRequest
from gemini_backend.base import JobState
from gemini_backend.base import JobStatus
from gemini_backend.base import LossSnapshot
from gemini_backend.base import check_request
from gemini_backend.errors import InvalidRequestError
from gemini_backend.errors import JobNotFound
from gemini_backend.replay._curves import ReplayPoint
from gemini_backend.replay._curves import ReplayRecord
from gemini_backend.replay._curves import load_curves
from gemini_backend.replay._curves import write_curves_file
from gemini_backend.replay._jobs import ReplayJob
from gemini_backend.replay._jobs import ReplayJobStore
from gemini_backend.replay._jobs import job_id_for
from gemini_backend.replay._jobs import read_submission_log

logger = logging.getLogger(__name__)

#: Knobs compared on a log scale (a multiplier of 0.3 is as far from 1 as 1 is from 3.3).
LOG_SCALE_KNOBS = frozenset({"learning_rate_multiplier", "batch_size"})
BASE_POLL_INTERVAL_S = 0.2
MIN_POLL_INTERVAL_S = 0.01
MAX_POLL_INTERVAL_S = 2.0


class ReplayBackendConfig(BackendConfig):
    """``backend:`` section for ``kind: replay``. Relative paths are relative to the config."""

    kind: Literal["replay"] = "replay"
    curves: Path
    time_scale: float = Field(default=1.0, ge=0.0, description="played seconds per recorded s")
    job_root: Path | None = None
    #: ``simulated`` (default): the sweep plays jobs in job time, so its decisions do not
    #: depend on the wall clock or the time scale (sweeps._replay_clock); ``wall``: in real
    #: time (several workers on one study, orchestration timings).
    clock: Literal["wall", "simulated"] = "simulated"


class ReplayBackend(BaseBackend):
    """Plays recorded loss curves back as if they were tuning jobs.

    Args:
        config: the validated ``backend:`` section.
        base_dir: the config's folder; relative ``curves`` and ``job_root`` resolve against it.
        clock: wall-clock time in seconds; injected by tests to play jobs without sleeping.

    Raises:
        InvalidRequestError: at construction when the curves file is missing or bad (naming
            the file, the record and the field; a local read, no network); from ``submit``
            when no record has the requested epochs.

    Example:
        >>> config = ReplayBackendConfig(curves=Path("curves.json"), time_scale=0)
        >>> backend = ReplayBackend(config, base_dir=Path("."))  # doctest: +SKIP
        >>> status = backend.poll(backend.submit(request))  # doctest: +SKIP
    """

    kind: ClassVar[str] = "replay"
    config_model: ClassVar[type[BackendConfig]] = ReplayBackendConfig

    def __init__(
        self,
        config: ReplayBackendConfig,
        *,
        base_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(config, ReplayBackendConfig):
            raise InvalidRequestError(f"backend: expected a replay config, got {config.kind!r}")
        self.curves_path = _resolve(config.curves, base_dir)
        self._records = tuple(load_curves(self.curves_path))
        job_root = config.job_root or Path(".gemini_sweep") / "replay_jobs"
        self._store = ReplayJobStore(_resolve(job_root, base_dir))
        self._time_scale = config.time_scale
        self._clock = clock
        self._capabilities = self._describe_capabilities()

    @classmethod
    def from_config(
        cls,
        config: BackendConfig,
        *,
        base_dir: Path,
        clock: Callable[[], float] = time.time,
    ) -> ReplayBackend:
        """Build from the config; ``clock`` lets tests (and the runner's) drive time."""
        return cls(config, base_dir=base_dir, clock=clock)  # type: ignore[arg-type]

    @property
    def job_root(self) -> Path:
        return self._store.job_root

    @staticmethod
    def submission_log(job_root: str | Path) -> list[dict[str, Any]]:
        """Every job created under ``job_root`` (``key``, ``job_id``, ``time``), oldest first."""
        return read_submission_log(Path(job_root))

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def _describe_capabilities(self) -> Capabilities:
        knobs = set(CANONICAL_KNOBS)
        for record in self._records:
            knobs.update(record.params)
        interval_s = BASE_POLL_INTERVAL_S * self._time_scale
        return Capabilities(
            knobs=frozenset(knobs),
            has_validation_loss=any(
                p.eval_loss is not None for r in self._records for p in r.curve
            ),
            poll_interval_s=min(MAX_POLL_INTERVAL_S, max(MIN_POLL_INTERVAL_S, interval_s)),
            max_poll_interval_s=MAX_POLL_INTERVAL_S,
            max_epochs=max(record.max_epochs for record in self._records),
        )

    # --- the BaseBackend interface ---------------------------------------------------------

    def submit(self, request: JobRequest) -> JobRef:
        check_request(request, self.capabilities)
        existing = self.find(request.idempotency_key)
        if existing is not None:
            return existing
        index = nearest_record(self._records, request.knobs(), epochs=request.epochs,
                               tie_break=_recording_choice(request))
        job = self._new_job(request, index)
        if self._store.create(job):
            logger.info(
                "replay job=%s key=%s plays record %d (%d points)",
                job.job_id, job.idempotency_key, index, len(job.snapshots),
            )
        return self._ref(job.job_id, request.idempotency_key)

    def poll(self, ref: JobRef) -> JobStatus:
        job = self._read(ref)
        return _status_at(job, now=self._clock())

    def cancel(self, ref: JobRef) -> None:
        job = self._read(ref)
        now = self._clock()
        if job.cancelled_at is not None or _status_at(job, now=now).state.is_terminal():
            return  # cancelling a finished (or already cancelled) job changes nothing
        self._store.update(job.cancelled(now))
        logger.info("replay job=%s cancelled", job.job_id)

    def find(self, idempotency_key: str) -> JobRef | None:
        job = self._store.read(job_id_for(idempotency_key))
        if job is None or job.idempotency_key != idempotency_key:
            return None
        return self._ref(job.job_id, idempotency_key)

    # --- helpers ---------------------------------------------------------------------------

    def _ref(self, job_id: str, idempotency_key: str) -> JobRef:
        return JobRef(backend=self.kind, job_id=job_id, idempotency_key=idempotency_key)

    def _read(self, ref: JobRef) -> ReplayJob:
        job = self._store.read(ref.job_id)
        if job is None:
            raise JobNotFound(f"replay job {ref.job_id!r} does not exist under {self.job_root}")
        return job

    def _new_job(self, request: JobRequest, index: int) -> ReplayJob:
        record = self._records[index]
        kept = [i for i, p in enumerate(record.curve) if p.epoch <= request.epochs]
        times_s = record.point_times_s()
        reveal_after_s = tuple(times_s[i] * self._time_scale for i in kept)
        return ReplayJob(
            job_id=job_id_for(request.idempotency_key),
            idempotency_key=request.idempotency_key,
            started_at=self._clock(),
            snapshots=tuple(_snapshot(record.curve[i]) for i in kept),
            reveal_after_s=reveal_after_s,
            play_duration_s=max(reveal_after_s, default=0.0),
            tokens_per_epoch=record.epoch_tokens(),
            record_index=index,
            record_params=dict(record.params),
        )


def nearest_record(
    records: tuple[ReplayRecord, ...] | list[ReplayRecord],
    knobs: Mapping[str, Any],
    *,
    epochs: int,
    tie_break: str | None = None,
) -> int:
    """The index of the record nearest to ``knobs`` among those with at least ``epochs``.

    Each knob's difference is divided by its spread over the file, so knobs on different
    scales weigh alike; the multiplier and batch size are compared as logarithms. Records
    equally near (recordings of the same knobs with other seeds) are chosen between by a
    hash of ``tie_break`` (the trial's name and dataset seed), else the earliest wins: either
    way the choice is repeatable.

    Raises:
        InvalidRequestError: no record reaches ``epochs``.
    """
    eligible = [i for i, r in enumerate(records) if r.max_epochs >= epochs]
    if not eligible:
        most = max(r.max_epochs for r in records)
        raise InvalidRequestError(
            f"epochs: the replay curves have at most {most} epochs per recorded trial, "
            f"{epochs} were requested; ask for at most {most} or record longer curves"
        )
    spreads = _spreads(records, knobs)
    distances = {i: _distance(records[i].params, knobs, spreads) for i in eligible}
    nearest = min(distances.values())
    tied = [i for i in eligible if distances[i] <= nearest]
    if tie_break is None or len(tied) == 1:
        return tied[0]
    digest = hashlib.sha256(tie_break.encode("utf-8")).digest()
    return tied[int.from_bytes(digest[:8], "big") % len(tied)]


def _scaled(name: str, value: Any) -> float | None:
    """The value as compared: a log for log-scale knobs, ``None`` if not a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if name in LOG_SCALE_KNOBS:
        return math.log(value) if value > 0 else None
    return float(value)


def _spreads(records: Any, knobs: Mapping[str, Any]) -> dict[str, float]:
    spreads = {}
    for name in knobs:
        values = [_scaled(name, r.params.get(name)) for r in records]
        numbers = [v for v in values if v is not None]
        spreads[name] = (max(numbers) - min(numbers)) if numbers else 0.0
    return spreads


def _distance(
    params: Mapping[str, Any], knobs: Mapping[str, Any], spreads: Mapping[str, float]
) -> float:
    total = 0.0
    for name, wanted in knobs.items():
        if name not in params:
            continue  # a knob the record did not set tells nothing either way
        mine, theirs = _scaled(name, wanted), _scaled(name, params[name])
        if mine is None or theirs is None:
            total += 0.0 if wanted == params[name] else 1.0
        elif spreads[name] > 0:
            total += ((mine - theirs) / spreads[name]) ** 2
    return total


def _status_at(job: ReplayJob, *, now: float) -> JobStatus:
    """What a poll at wall-clock ``now`` sees: the points whose reveal time has passed."""
    played_until = now if job.cancelled_at is None else min(now, job.cancelled_at)
    elapsed_s = max(0.0, played_until - job.started_at)
    shown = bisect.bisect_right(job.reveal_after_s, elapsed_s)
    snapshots = job.snapshots[:shown]
    is_complete = shown == len(job.snapshots)
    if is_complete:
        state = JobState.SUCCEEDED
    elif job.cancelled_at is not None:
        state = JobState.CANCELLED
    else:
        state = JobState.RUNNING
    progress = 1.0 if is_complete else min(1.0, elapsed_s / job.play_duration_s)
    tokens = (None if job.tokens_per_epoch is None
              else round(job.tokens_per_epoch * job.epochs_trained(shown)))
    return JobStatus(
        state=state,
        snapshots=snapshots,
        progress=progress,
        tuned_model=f"replay/{job.job_id}" if is_complete else None,
        training_tokens=tokens,
    )


def _recording_choice(request: JobRequest) -> str:
    """What picks among recordings of the same knobs: the trial's name and the dataset seed
    (fixed by the config), not its idempotency key, whose study id is random: the same
    config and seed then replay the same recordings in every new study."""
    return f"{request.display_name}/{request.seed}"


def _snapshot(point: ReplayPoint) -> LossSnapshot:
    return LossSnapshot(
        step=point.step, epoch=point.epoch, loss=point.loss, eval_loss=point.eval_loss
    )


def _resolve(path: Path, base_dir: Path) -> Path:
    path = path.expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


__all__ = [
    "ReplayBackend",
    "ReplayBackendConfig",
    "ReplayPoint",
    "ReplayRecord",
    "load_curves",
    "nearest_record",
    "write_curves_file",
]
