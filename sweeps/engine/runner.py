"""Run a sweep: the one place that talks to both Optuna and a backend.

:func:`run_sweep` checks everything it can before spending anything (dataset, search space
against the backend, the backend's own preflight), creates or resumes the Optuna study,
re-attaches to jobs left in flight by an earlier process, and then drives trials with
ask -> submit -> poll -> record -> tell until ``n_trials`` trials have finished, the budget
is spent, or too many trials failed in a row. Killing it at any moment loses nothing and
pays for nothing twice: run it again.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import sqlite3
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from gemini_backend import BaseBackend
from gemini_backend import create_backend
from sweeps import trial_record as ts
from sweeps._embedded_stores import StoreError
from sweeps._embedded_stores import disk_full_in_words
from sweeps._embedded_stores import ensure_optuna_store
from sweeps._replay_clock import simulated_replay
from sweeps.config.schema import SweepConfig
from sweeps.data.dataset import load_dataset
from sweeps.engine._dataset_identity import check_dataset_unchanged
from sweeps.engine._lease import StudyLeases
from sweeps.engine._lease import new_worker_id
from sweeps.engine._loop import SweepContext
from sweeps.engine._loop import SweepLoop
from sweeps.engine._outcome import PreparedData
from sweeps.engine._state import JobProgress
from sweeps.engine._state import SweepProgress
from sweeps.engine._state import SweepState
from sweeps.engine._study_lock import StorageUnavailable
from sweeps.engine._study_lock import StudyLock
from sweeps.engine._study_lock import retry_first_use
from sweeps.engine.budget import cost_of
from sweeps.errors import ConfigError
from sweeps.errors import DatasetError
from sweeps.errors import TrackingError
from sweeps.evaluation.runner import Evaluator
from sweeps.evaluation.runner import build_evaluator
from sweeps.policy.search_space import knob_names
from sweeps.policy.search_space import make_pruner
from sweeps.policy.search_space import make_sampler
from sweeps.policy.search_space import max_epochs
from sweeps.policy.warm_start import seed_from_earlier_sweeps
from sweeps.results.sweep_results import recommended_knobs
from sweeps.results.sweep_results import redact_url
from sweeps.tracking.tracker import MlflowTracker
from sweeps.tracking.tracker import SweepInfo
from sweeps.tracking.tracker import SweepSummary
from sweeps.tracking.tracker import Tracker

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[SweepProgress], None]


@dataclass(frozen=True, slots=True)
class SweepResult:
    """How a sweep ended. ``is_failed`` means it stopped on consecutive failures."""

    study_name: str
    n_trials: int
    n_complete: int
    n_pruned: int
    n_failed: int
    n_in_flight: int
    n_unrecorded: int
    stop_reason: str
    is_failed: bool
    spent_tokens: float
    committed_tokens: float
    spent_cost: float | None = None
    best_number: int | None = None
    best_value: float | None = None
    #: The configuration to tune with: the best trial's knobs, ``epochs`` from its curve
    #: (sweeps.results.sweep_results.recommended_epochs); ``best_params_run``: what it ran.
    best_params: dict[str, Any] = field(default_factory=dict)
    best_params_run: dict[str, Any] = field(default_factory=dict)
    best_plateau_epoch: int | None = None
    best_run_id: str | None = None
    storage: str = ""
    tracking_uri: str | None = None


@disk_full_in_words
def run_sweep(
    config: SweepConfig,
    *,
    backend: BaseBackend | None = None,
    tracker: Tracker | None = None,
    progress: ProgressCallback | None = None,
    on_stopped: Callable[[SweepResult], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SweepResult:
    """Run (or resume) the sweep ``config`` describes until it is done.

    Args:
        config: the validated sweep config.
        backend: the backend to use; default the one ``config.backend`` names.
        tracker: where runs are recorded; default MLflow at ``config.tracking_url``.
        progress: called with a :class:`SweepProgress` after every pass of the loop.
        on_stopped: called with the result as soon as the last trial is told, before the
            parent run is finished (its figures written, its sweep plots drawn: a second
            or two), so a caller can show the result meanwhile.
        clock, sleep: injected by tests to run without real waiting.

    Raises:
        DatasetError, ConfigError, BackendError: bad input or a backend that cannot work,
            before any job is submitted.
        TrackingError, StoreError: MLflow cannot be opened: before any job on a backend
            that bills jobs; on a free one (local, replay) it is opened on the tracking
            thread while the first jobs are submitted (its import alone takes a second or
            two), so those jobs keep running and the next run collects them.
        KeyboardInterrupt: jobs in flight keep running; run again to collect them.
    """
    data = prepare_data(config)
    owns_backend = backend is None
    simulated = simulated_replay(config) if backend is None else None
    if simulated is not None:  # a replay in job time: its clock drives the loop too
        backend, clock, sleep = simulated.backend, simulated.clock.now, simulated.clock.sleep
    backend = backend or create_backend(config.backend, base_dir=config.config_dir)
    try:
        backend.check_search_space(knob_names(config.search_space))
        backend.check_epochs(max_epochs(config.search_space))
        backend.preflight()
        data = _billed_tokens_per_epoch(backend, data)
        _warn_missing_validation(config, backend, data)
        evaluator = build_evaluator(config, backend, data.validation)  # metrics checked here
        study = open_study(config)
        leases = StudyLeases(study, StudyLock(config.storage_url, config.name),
                             worker_id=new_worker_id(), lease_s=config.lease_s,
                             study_concurrency=config.study_concurrency)
        try:
            with leases.lock.hold():  # workers starting together must agree on one sweep id
                sweep_id = _sweep_id(study)
                check_dataset_unchanged(study, data, path=config.dataset_path,
                                        sweep_name=config.name)
                # Under the same lock, so two workers starting together seed only once.
                seed_from_earlier_sweeps(config, study, dataset_hash=data.content_hash)
            tracker = tracker or MlflowTracker(_tracking_uri(config))
            open_tracking = functools.partial(_start_tracking, config, tracker,
                                              _sweep_info(config, data, sweep_id))
            start_tracking: Callable[[], None] | None = open_tracking
            if backend.capabilities.bills_jobs:
                # A paid job is never submitted before MLflow answers: a wrong tracking URL
                # must cost nothing. Free jobs start while MLflow is imported and opened
                # on the loop's writer thread (a second or two).
                open_tracking()
                start_tracking = None
            try:
                return _drive(config, study, backend, tracker, data, sweep_id, leases,
                              progress=progress, clock=clock, sleep=sleep,
                              evaluator=evaluator, in_job_time=simulated is not None,
                              start_tracking=start_tracking, on_stopped=on_stopped)
            except sqlalchemy.exc.OperationalError as exc:
                raise StorageUnavailable.from_error(config.storage_url, exc) from None
            finally:
                tracker.close()
        finally:
            leases.close()
            leases.lock.close()
    finally:
        if owns_backend:
            backend.close()


def _drive(config: SweepConfig, study: optuna.Study, backend: BaseBackend, tracker: Tracker,
           data: PreparedData, sweep_id: str, leases: StudyLeases, *,
           progress: ProgressCallback | None, clock: Callable[[], float],
           sleep: Callable[[float], None], evaluator: Evaluator | None = None,
           in_job_time: bool = False, start_tracking: Callable[[], None] | None = None,
           on_stopped: Callable[[SweepResult], None] | None = None) -> SweepResult:
    ctx = SweepContext(config=config, study=study, backend=backend, tracker=tracker,
                       data=data, sweep_id=sweep_id, worker_id=leases.worker_id, leases=leases,
                       evaluator=evaluator, in_job_time=in_job_time)
    state = SweepState(config, study, tokens_per_epoch=data.tokens_per_epoch)
    adopted = state.adopt_running_trials(ctx, clock())
    if adopted:
        logger.info("resuming sweep %s: %d trials finished, %d re-attached", config.name,
                    state.n_finished, adopted)
    loop = SweepLoop(ctx, state, clock=clock, sleep=sleep)
    loop.run_until_done(on_pass=lambda: progress(state.progress()) if progress else None,
                        start_tracking=start_tracking)
    result = _result(config, study, _study_totals(state, study), tracker)
    if on_stopped is not None:
        on_stopped(result)
    try:
        tracker.finish_sweep(study, _summary(result))
    except TrackingError as exc:
        logger.error("the sweep's parent run could not be finished: %s", exc)
    # Debug only: the CLI's summary says it, and saying it twice reads as two events.
    logger.debug("sweep %s stopped: %s", config.name, result.stop_reason)
    return result


def _start_tracking(config: SweepConfig, tracker: Tracker, info: SweepInfo) -> None:
    """Find or create the parent run under a study-wide lock (its own, so a slow MLflow
    never blocks the other workers' asks and heartbeats): workers starting together then
    share one parent run instead of each creating one."""
    lock = StudyLock(config.storage_url, f"{config.name}:mlflow-parent")
    try:
        with lock.hold():
            tracker.start_sweep(info)
    finally:
        lock.close()


def _study_totals(state: SweepState, study: optuna.Study) -> SweepState:
    """The counts and best trial of the whole study (every worker's trials), with this
    worker's own in-flight jobs, ledger and stop reason."""
    totals = SweepState(state.config, study, tokens_per_epoch=state.tokens_per_epoch)
    totals.in_flight, totals.unrecorded = state.in_flight, state.unrecorded
    totals.committed_tokens = state.committed_tokens
    totals.stop_reason, totals.is_failed = state.stop_reason, state.is_failed
    return totals


def prepare_data(config: SweepConfig) -> PreparedData:
    """Load, validate and split the dataset once for every job of the sweep."""
    dataset = load_dataset(config.dataset_path, preamble=config.dataset.preamble,
                           backend=config.backend.kind)
    train, validation = dataset.split(config.dataset.validation_split, config.dataset.seed)
    if not train:
        raise DatasetError(f"{config.dataset_path}: no training examples left after the "
                           f"validation split of {config.dataset.validation_split}")
    return PreparedData(train=dataset.prepared(train), validation=dataset.prepared(validation),
                        tokens_per_epoch=dataset.tokens_per_epoch(train),
                        content_hash=dataset.content_hash, preamble=dataset.preamble)


def _billed_tokens_per_epoch(backend: BaseBackend, data: PreparedData) -> PreparedData:
    """``data`` with the tokens an epoch is billed for as the backend counts them (the
    dataset's estimate stays when the backend cannot count before a job runs)."""
    counted = backend.training_tokens_per_epoch(data.train)
    if counted is None or counted == data.tokens_per_epoch:
        return data
    logger.info("the %s backend counts %s training tokens an epoch (the dataset's estimate "
                "is %s); the budget uses its count", backend.kind, f"{counted:,}",
                f"{data.tokens_per_epoch:,}")
    return dataclasses.replace(data, tokens_per_epoch=counted)


def open_study(config: SweepConfig) -> optuna.Study:
    """Create the study named ``config.name`` on its storage, or load it to continue."""
    url = config.storage_url
    storage: str | optuna.storages.BaseStorage = url
    try:
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            path.parent.mkdir(parents=True, exist_ok=True)
            ensure_optuna_store(url)
            storage = optuna.storages.RDBStorage(
                url, engine_kwargs={"creator": functools.partial(connect_sqlite, path)})
        study = retry_first_use(lambda: optuna.create_study(
            study_name=config.name, storage=storage, load_if_exists=True,
            directions=[optuna.study.StudyDirection[d.upper()] for d in config.directions],
            sampler=make_sampler(config),
            pruner=make_pruner(config)))
        _check_directions(config, study)
        _name_metrics(config, study)
        return study
    except (ConfigError, StoreError):
        raise
    except sqlalchemy.exc.OperationalError as exc:  # a storage that does not answer
        raise StorageUnavailable.from_error(url, exc) from None
    except Exception as exc:  # SQLAlchemy / Optuna raise many types for a bad storage
        raise ConfigError(f"storage {redact_url(url)}: cannot open the Optuna study "
                          f"{config.name!r}: {exc}") from None


def _name_metrics(config: SweepConfig, study: optuna.Study) -> None:
    """Name the study's objectives (``plateau_loss``, ``[eval_chrf, cost]``): optuna-dashboard,
    the `optuna` CLI and Optuna's plots show these instead of "Objective 0"."""
    if study.metric_names == config.objectives:
        return
    with warnings.catch_warnings():  # experimental in Optuna since 3.2, stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry_first_use(lambda: study.set_metric_names(config.objectives))


def _check_directions(config: SweepConfig, study: optuna.Study) -> None:
    """An existing study keeps the directions it was created with: a changed objective
    (e.g. plateau_loss -> eval_chrf) would silently invert the best trial."""
    stored = [d.name.lower() for d in study.directions]
    if stored != config.directions:
        raise ConfigError(f"objective: sweep {config.name!r} was created to "
                          f"{'/'.join(stored)} but objective {config.objective} needs "
                          f"{'/'.join(config.directions)}; give the sweep a new name")


def connect_sqlite(path: Path) -> sqlite3.Connection:
    """A connection to an embedded SQLite store, tuned for many small commits.

    WAL with ``synchronous=NORMAL`` makes a commit cost no fsync (a sweep writes a few per
    trial), stays consistent if the process is killed at any point (only a power cut can
    lose the last commits), and lets readers (``gemini-sweep status``) run beside the
    writer. The 60 s busy timeout waits for a lock instead of failing (optuna #820).
    """
    connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _sweep_id(study: optuna.Study) -> str:
    """A random id stored on the study: keys and MLflow tags of this study use it."""
    sweep_id = study.user_attrs.get(ts.STUDY_ATTR_SWEEP_ID)
    if not isinstance(sweep_id, str):
        sweep_id = uuid.uuid4().hex
        study.set_user_attr(ts.STUDY_ATTR_SWEEP_ID, sweep_id)
    return sweep_id


def _tracking_uri(config: SweepConfig) -> str:
    uri = config.tracking_url
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def _warn_missing_validation(config: SweepConfig, backend: BaseBackend,
                             data: PreparedData) -> None:
    if data.validation and not backend.capabilities.has_validation_loss:
        logger.warning("dataset.validation_split is set but the %s backend reports no "
                       "validation loss; trials are scored on training loss", backend.kind)


def _sweep_info(config: SweepConfig, data: PreparedData, sweep_id: str) -> SweepInfo:
    dump = config.model_dump(mode="json", warnings=False)
    settings = {key: json.dumps(dump[key], sort_keys=True) if isinstance(dump[key], dict)
                else str(dump[key])
                for key in ("n_trials", "concurrency", "objective", "search_space", "sampler",
                            "pruner", "plateau", "budget", "max_consecutive_failures")}
    settings["validation_split"] = str(config.dataset.validation_split)
    settings["study_name"] = config.name
    return SweepInfo(name=config.name, sweep_id=sweep_id, backend=config.backend.kind,
                     base_model=config.backend.base_model or "", dataset_hash=data.content_hash,
                     preamble=data.preamble, settings=settings)


def _result(config: SweepConfig, study: optuna.Study, state: SweepState,
            tracker: Tracker) -> SweepResult:
    best = state.best
    best_params = recommended_knobs(best) if best is not None else {}
    best_params_run = dict(best.knobs) if best is not None else {}
    plateau_epoch = best.plateau_epoch if best is not None else None
    run_id = best.mlflow_run_id if best is not None else None
    stop_reason = state.stop_reason or f"n_trials: {state.n_finished} trials finished"
    return SweepResult(
        study_name=config.name, n_trials=config.n_trials, n_complete=state.n_complete,
        n_pruned=state.n_pruned, n_failed=state.n_failed, n_in_flight=len(state.in_flight),
        n_unrecorded=len(state.unrecorded), stop_reason=stop_reason,
        is_failed=state.is_failed, spent_tokens=state.spent_tokens,
        committed_tokens=state.committed_tokens,
        spent_cost=cost_of(state.spent_tokens, config.budget), best_number=state.best_number,
        best_value=state.best_value, best_params=best_params,
        best_params_run=best_params_run, best_plateau_epoch=plateau_epoch, best_run_id=run_id,
        storage=redact_url(config.storage_url), tracking_uri=tracker_uri(tracker))


def tracker_uri(tracker: Tracker) -> str | None:
    return getattr(tracker, "tracking_uri", None)


def _summary(result: SweepResult) -> SweepSummary:
    status = "FAILED" if result.is_failed else "FINISHED"
    return SweepSummary(status=status, n_complete=result.n_complete, n_pruned=result.n_pruned,
                        n_failed=result.n_failed, spent_tokens=result.spent_tokens,
                        committed_tokens=result.committed_tokens, spent_cost=result.spent_cost,
                        best_number=result.best_number, best_value=result.best_value,
                        best_params=result.best_params, best_params_run=result.best_params_run)


__all__ = ["JobProgress", "SweepProgress", "SweepResult", "open_study", "run_sweep"]
