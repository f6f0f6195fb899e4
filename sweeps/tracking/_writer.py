"""Low-level MLflow writes that can be repeated safely: find-or-create, write-missing-only.

Every function here is idempotent, so a sweep that crashed in the middle of writing a run
repairs it on the next ``gemini-sweep run`` without duplicating anything: runs are found
again by tags before one is created, and metric points are compared by step with what the
store already holds before the missing ones are sent with ``log_batch``.

MLflow is imported inside the functions that call it, never at import time: importing it
takes about a second, and the runner imports this module before its first trial is
submitted. The tracking thread pays for it instead (:meth:`MlflowTracker.start_sweep`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import TypeVar
from urllib.parse import urlparse

from gemini_backend import Backoff
from gemini_backend import retry_call
from sweeps.errors import TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.entities import Param
    from mlflow.entities import Run

logger = logging.getLogger(__name__)

#: MLflow's per-call limits (mlflow/utils/validation.py).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE_CHARS = 6000

TAG_ROLE = "gemini_sweep.role"
TAG_SWEEP_ID = "gemini_sweep.sweep_id"
TAG_TRIAL = "gemini_sweep.trial"
#: The experiment tag the MLflow UI reads to choose its view (its ExperimentKind values).
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

T = TypeVar("T")


def import_mlflow() -> None:
    """Import MLflow, keeping the levels already set on its loggers (``-q``, ``-v``): its
    import resets them to INFO, and the tracking thread imports it after the CLI set them."""
    names = ("mlflow", "alembic")
    levels = {name: logging.getLogger(name).level for name in names}
    import mlflow  # noqa: F401

    for name, level in levels.items():
        if level != logging.NOTSET:
            logging.getLogger(name).setLevel(level)


def with_retries(
    what: str, action: Callable[[], T], *, attempts: int = 3, first_delay_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``action``; on an error retry with backoff, then raise :class:`TrackingError`."""
    backoff = Backoff(initial_s=first_delay_s, maximum_s=first_delay_s * 2 ** attempts,
                      max_attempts=attempts)
    try:
        # MLflow raises many types (SQL, HTTP, OS) for an outage: every error is retried.
        return retry_call(lambda _: action(), what=f"MLflow: {what}", backoff=backoff,
                          sleep=sleep, should_retry=lambda exc: True)
    except Exception as exc:
        raise TrackingError(f"MLflow: {what} failed after {attempts} attempts: "
                            f"{exc}") from exc


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifacts next to a local SQLite store (``<db folder>/mlartifacts``); a tracking
    server chooses its own location (None)."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    # sqlite:////abs/path.db -> /abs/path.db; sqlite:///rel.db is relative to the cwd.
    db_path = Path(tracking_uri.removeprefix("sqlite:///"))
    return (db_path.parent / "mlartifacts").resolve().as_uri()


def prepare_sqlite_store(tracking_uri: str) -> None:
    """Switch a local SQLite store to WAL (persistent in the file) before MLflow opens it:
    commits then append to a log instead of rewriting pages, and readers (the MLflow UI)
    do not block the sweep's writes."""
    if urlparse(tracking_uri).scheme != "sqlite":
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, timeout=60)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


class _QuietFileHandler(logging.FileHandler):
    """A log file that never prints its own failures (a full disk) on the terminal."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        return None


def send_mlflow_logs_to_file(tracking_uri: str) -> Path | None:
    """Move what MLflow and alembic log (tracebacks of a locked or broken store included)
    from the terminal to ``mlflow.log`` next to a SQLite store; the sweep's own messages say
    what happened. Their loggers print through their own handlers (``propagate`` off), so
    those handlers are replaced. A tracking server's store is left as it is (None)."""
    if urlparse(tracking_uri).scheme != "sqlite":
        return None
    log_path = (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlflow.log").resolve()
    for name in ("mlflow", "alembic"):
        mlflow_logger = logging.getLogger(name)
        if any(getattr(h, "baseFilename", None) == str(log_path)
               for h in mlflow_logger.handlers):
            continue
        for handler in list(mlflow_logger.handlers):
            if not isinstance(handler, logging.FileHandler):
                mlflow_logger.removeHandler(handler)
        file_handler = _QuietFileHandler(log_path, encoding="utf-8", delay=True)
        file_handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
        mlflow_logger.addHandler(file_handler)
    return log_path


def ensure_experiment(client: MlflowClient, name: str, *, artifact_root: str | None) -> str:
    """The id of experiment ``name``, created (with its artifact folder and kind) or restored.

    The kind tag makes the MLflow UI open the sweep in its model-training view (runs, metrics,
    charts) instead of the GenAI view, which lists runs as "evaluation runs". An experiment
    made without it (an earlier version) gets it too; a kind a user chose is kept.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = f"{artifact_root}/{name}" if artifact_root else None
        return client.create_experiment(name, artifact_location=location,
                                        tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
    if experiment.lifecycle_stage == "deleted":
        logger.warning("MLflow experiment %r was deleted; restoring it for this sweep", name)
        client.restore_experiment(experiment.experiment_id)
    if TAG_EXPERIMENT_KIND not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, TAG_EXPERIMENT_KIND,
                                  EXPERIMENT_KIND)
    return experiment.experiment_id


def find_runs(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> list[Run]:
    """Every active run of the experiment carrying all ``tags`` (all pages)."""
    conditions = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    runs: list[Run] = []
    page_token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=" and ".join(conditions),
                                  max_results=1000, page_token=page_token,
                                  order_by=["attributes.start_time ASC"])
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def missing_params(run: Run, params: Mapping[str, object]) -> list[Param]:
    """The params the run does not have yet (MLflow params cannot change once written)."""
    from mlflow.entities import Param

    present = run.data.params
    missing = []
    for key, value in params.items():
        text = str(value)[:MAX_PARAM_VALUE_CHARS]
        if key not in present:
            missing.append(Param(key, text))
        elif present[key] != text:
            logger.warning("MLflow run %s: param %s is %r but the sweep now says %r; "
                           "params cannot change, keeping the first", run.info.run_id, key,
                           present[key], text)
    return missing


def missing_points(
    client: MlflowClient, run: Run, key: str, points: Iterable[tuple[int, float | None]]
) -> list[Metric]:
    """The (step, value) points of ``key`` the run does not hold yet.

    Comparing by step makes a repeated write (after a crash mid-way) add only what is
    missing, never a duplicate point. The history is read only when the run has the key.
    """
    from mlflow.entities import Metric

    present: set[int] = set()
    if key in run.data.metrics:
        present = {metric.step for metric in client.get_metric_history(run.info.run_id, key)}
    now_ms = int(time.time() * 1000)
    return [Metric(key, _finite_or_nan(value), now_ms, step)
            for step, value in points if step not in present]


def log_batch(
    client: MlflowClient,
    run_id: str,
    *,
    metrics: Sequence[Metric] = (),
    params: Sequence[Param] = (),
    tags: Mapping[str, str] | None = None,
) -> None:
    """One ``log_batch`` call per MLflow limit's worth (1,000 metrics, 100 params/tags)."""
    from mlflow.entities import Param
    from mlflow.entities import RunTag

    tag_list = [RunTag(k, v) for k, v in (tags or {}).items()]
    small = [*params, *tag_list]
    n_calls = max(math.ceil(len(metrics) / MAX_METRICS_PER_BATCH),
                  math.ceil(len(small) / MAX_PARAMS_PER_BATCH))
    for call in range(n_calls):
        chunk = metrics[call * MAX_METRICS_PER_BATCH:(call + 1) * MAX_METRICS_PER_BATCH]
        extra = small[call * MAX_PARAMS_PER_BATCH:(call + 1) * MAX_PARAMS_PER_BATCH]
        client.log_batch(run_id, metrics=chunk,
                         params=[e for e in extra if isinstance(e, Param)],
                         tags=[e for e in extra if isinstance(e, RunTag)])


def _finite_or_nan(value: float | None) -> float:
    # A failed trial's metric is NaN, never None (optuna #863): MLflow rejects None.
    return float("nan") if value is None else float(value)


def set_status(client: MlflowClient, run: Run, status: str) -> None:
    """Move the run to ``status`` (RUNNING, FINISHED, KILLED, FAILED) if it is not there."""
    if run.info.status == status:
        return
    if status == "RUNNING":
        client.update_run(run.info.run_id, status=status)
    else:
        client.set_terminated(run.info.run_id, status=status)
