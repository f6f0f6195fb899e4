"""Loss curves of a Vertex tuning job: TensorBoard time series, and steps mapped to epochs.

Vertex does not put the curve on the job. It writes ``/train_total_loss`` and (with a
validation file) ``/eval_total_loss`` into the Vertex AI Experiment named by
``TuningJob.experiment``; reference/tuning_api.md section 2.8 gives the REST chain the official
notebooks use through the SDK:

1. ``GET {experiment}`` -> ``metadata.backing_tensorboard_resource``;
2. ``GET metadataStores/default/contexts?filter=schema_title="system.ExperimentRun" AND
   parent_contexts:"{experiment}"`` -> the run (its id, less the ``{experiment_id}-`` prefix);
3. ``GET {tensorboard}/experiments/{experiment_id}/runs/{run_id}/timeSeries``;
4. ``GET {timeSeries}:read`` -> ``values[{step (int64 string), scalar.value}]``.

Steps 1-2 are cached per experiment; 3-4 run on every poll so the curve grows while the job
runs.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from gemini_backend._http import RestClient
from gemini_backend._vertex_wire import CheckpointPayload
from gemini_backend._vertex_wire import parse_int64
from gemini_backend.base import LossSnapshot
from gemini_backend.errors import JobNotFound

logger = logging.getLogger(__name__)

TRAIN_LOSS_SERIES = "/train_total_loss"
EVAL_LOSS_SERIES = "/eval_total_loss"
TENSORBOARD_KEY = "backing_tensorboard_resource"
#: Enough for any real job; the service downsamples beyond what is asked for.
MAX_DATA_POINTS = 10_000

Points = list[tuple[int, float]]


def list_all(
    client: RestClient, path: str, key: str, *, what: str, params: Mapping[str, Any] | None = None
) -> Iterator[dict[str, Any]]:
    """Every item of a paginated ``list`` call (``nextPageToken`` followed to the end)."""
    query = dict(params or {})
    while True:
        page = client.request("GET", path, what=what, params=query)
        yield from page.get(key) or []
        token = page.get("nextPageToken")
        if not token:
            return
        query["pageToken"] = token


class TensorboardCurveReader:
    """Reads the train and eval loss series of a job's experiment. Thread-safe.

    Args:
        client: the Vertex AI REST client.
        api_version: the path prefix (``v1``).
    """

    def __init__(self, client: RestClient, *, api_version: str) -> None:
        self._client = client
        self._api_version = api_version
        self._runs: dict[str, str] = {}
        self._lock = threading.Lock()

    def read(self, experiment: str) -> tuple[Points, Points]:
        """``(train, eval)`` points so far, sorted by step; empty before any were written.

        Raises:
            TransientError, AuthError: as the service answered.
        """
        try:
            run = self._run_resource(experiment)
            if run is None:
                return [], []
            series = {
                item.get("displayName"): item.get("name")
                for item in list_all(self._client, f"{self._api_version}/{run}/timeSeries",
                                     "tensorboardTimeSeries", what="list loss time series")
            }
            return (self._points(series.get(TRAIN_LOSS_SERIES)),
                    self._points(series.get(EVAL_LOSS_SERIES)))
        except JobNotFound:
            # The experiment or its run is created a little after the job starts running.
            logger.debug("experiment %s has no loss series yet", experiment)
            return [], []

    def _run_resource(self, experiment: str) -> str | None:
        with self._lock:
            cached = self._runs.get(experiment)
        if cached:
            return cached
        v = self._api_version
        context = self._client.request("GET", f"{v}/{experiment}", what="read experiment")
        tensorboard = (context.get("metadata") or {}).get(TENSORBOARD_KEY)
        store, _, experiment_id = experiment.rpartition("/contexts/")
        query = f'schema_title="system.ExperimentRun" AND parent_contexts:"{experiment}"'
        runs = list(list_all(self._client, f"{v}/{store}/contexts", "contexts",
                             what="list experiment runs", params={"filter": query}))
        if not tensorboard or not runs:
            return None
        run_id = str(runs[0]["name"]).rsplit("/", 1)[-1].removeprefix(f"{experiment_id}-")
        resource = f"{tensorboard}/experiments/{experiment_id}/runs/{run_id}"
        with self._lock:
            self._runs[experiment] = resource
        return resource

    def _points(self, series_name: str | None) -> Points:
        if not series_name:
            return []
        data = self._client.request(
            "GET", f"{self._api_version}/{series_name}:read", what="read loss time series",
            params={"maxDataPoints": MAX_DATA_POINTS},
        )
        points: dict[int, float] = {}
        for value in (data.get("timeSeriesData") or {}).get("values") or []:
            step = parse_int64(value.get("step"))
            scalar = (value.get("scalar") or {}).get("value")
            if step is not None and isinstance(scalar, (int, float)) and math.isfinite(scalar):
                points[step] = float(scalar)
        return sorted(points.items())


class EpochMap:
    """Which epoch a step belongs to. The rule, most exact source first:

    1. checkpoints: epoch ``e`` ends at the step of its checkpoint (Vertex keeps one per
       epoch); steps after the last checkpoint continue at the last epoch's length;
    2. ``tuningDataStats.tuningStepCount / epochCount`` steps per epoch (rounded up);
    3. once the job has ended: the last step seen / ``epochCount``.

    With none of these the epochs are unknown and :meth:`snapshots` holds the points back;
    they are reported, all of them, by a later poll (snapshots are cumulative).
    """

    def __init__(self, epoch_ends: Sequence[int], steps_per_epoch: int | None,
                 epochs: int | None, *, is_finished: bool = False) -> None:
        self._ends = list(epoch_ends)
        self._steps_per_epoch = steps_per_epoch
        self._epochs = epochs
        self._is_finished = is_finished

    @classmethod
    def build(cls, *, checkpoints: Sequence[CheckpointPayload], tuning_step_count: int | None,
              epochs: int | None, last_step: int | None, is_finished: bool) -> EpochMap:
        by_epoch = sorted(
            (e, s) for c in checkpoints
            if (e := parse_int64(c.epoch)) is not None and (s := parse_int64(c.step)) is not None
        )
        ends = [step for _, step in by_epoch]
        per_epoch: int | None = None
        if len(ends) >= 2:
            per_epoch = ends[-1] - ends[-2]
        elif ends:
            per_epoch = math.ceil(ends[0] / max(by_epoch[0][0], 1))
        elif tuning_step_count and epochs:
            per_epoch = math.ceil(tuning_step_count / epochs)
        elif is_finished and last_step and epochs:
            per_epoch = math.ceil(last_step / epochs)
        return cls(ends, per_epoch if per_epoch and per_epoch > 0 else None, epochs,
                   is_finished=is_finished)

    @property
    def is_known(self) -> bool:
        return self._steps_per_epoch is not None

    def _has_ended(self, epoch: int, last_epoch: int) -> bool:
        """Its checkpoint is kept, a later epoch has started, or the job is over."""
        return epoch <= len(self._ends) or epoch < last_epoch or self._is_finished

    def epoch_of(self, step: int) -> int:
        for index, end in enumerate(self._ends):
            if step <= end:
                return index + 1
        per_epoch = self._steps_per_epoch or 1  # callers check is_known first
        done, base = len(self._ends), (self._ends[-1] if self._ends else 0)
        epoch = done + max(1, math.ceil((step - base) / per_epoch))
        return min(epoch, self._epochs) if self._epochs else epoch

    def snapshots(self, train: Points, evals: Points) -> tuple[LossSnapshot, ...]:
        """Train points as snapshots; each ended epoch's last eval point rides on its last
        one. An epoch still running gets none yet: the runner reads an eval loss as the
        epoch's end (LossSnapshot contract), and Vertex may evaluate mid-epoch."""
        if not self.is_known or not train:
            return ()
        epochs = [self.epoch_of(step) for step, _ in train]
        eval_by_epoch = {epoch: loss for step, loss in evals
                         if self._has_ended(epoch := self.epoch_of(step), epochs[-1])}
        last_index = {epoch: i for i, epoch in enumerate(epochs)}
        return tuple(
            LossSnapshot(
                step=step, epoch=epoch, loss=loss,
                eval_loss=eval_by_epoch.get(epoch) if last_index[epoch] == i else None,
            )
            for i, ((step, loss), epoch) in enumerate(zip(train, epochs, strict=True))
        )
