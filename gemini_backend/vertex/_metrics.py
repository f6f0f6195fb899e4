"""Loss curves of a Vertex tuning job: TensorBoard time series, and steps mapped to epochs.

Vertex does not put the curve on the job. It writes ``/train_total_loss`` and (with a
validation file) ``/eval_total_loss`` into the Vertex AI Experiment named by
``TuningJob.experiment``. The reader follows only documented links, never a derived name:

1. ``GET metadataStores/default/contexts?filter=schema_title="system.ExperimentRun" AND
   parent_contexts:"{experiment}"`` -> the experiment's run context (the filter the official
   notebooks pass to ``Context.list``);
2. ``GET metadataStores/default/artifacts/{run context id}-tb-run`` -> its
   ``metadata.resourceName``, the TensorBoard run (how google-cloud-aiplatform's
   ``ExperimentRun`` finds its backing TensorBoard run);
3. ``GET {tensorboard run}/timeSeries`` -> the series by ``displayName``;
4. ``GET {timeSeries}:read?maxDataPoints=-1`` -> every point (without it the service returns
   a random sample of 1,000; ``-1`` is documented as "return all data").

Steps 1-2 are cached per experiment once found; 3-4 run on every poll so the curve grows
while the job runs. What could not be found is reported (:attr:`Curve.missing`), never
silently read as "no points yet".
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemini_backend.base import LossSnapshot
from gemini_backend.errors import JobNotFound
from gemini_backend.transport.http import RestClient
from gemini_backend.vertex._wire import CheckpointPayload
from gemini_backend.vertex._wire import parse_int64

logger = logging.getLogger(__name__)

TRAIN_LOSS_SERIES = "/train_total_loss"
EVAL_LOSS_SERIES = "/eval_total_loss"
#: ``maxDataPoints`` that returns every point of a series (tensorboard_service.proto).
ALL_DATA_POINTS = -1
#: The id suffix of the artifact linking an experiment run to its TensorBoard run
#: (google-cloud-aiplatform ``metadata/constants.py``: ``_TB_RUN_ARTIFACT_POST_FIX_ID``).
TB_RUN_ARTIFACT_SUFFIX = "-tb-run"
TB_RUN_RESOURCE_KEY = "resourceName"

Points = list[tuple[int, float]]


@dataclass(frozen=True, slots=True)
class Curve:
    """The points read so far, and what could not be found (``None`` when all was found)."""

    train: Points
    evals: Points
    missing: str | None = None


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

    def read(self, experiment: str) -> Curve:
        """The points so far, sorted by step, or what could not be found.

        Raises:
            TransientError, AuthError: as the service answered.
        """
        run, missing = self._tensorboard_run(experiment)
        if run is None:
            return Curve([], [], missing)
        try:
            series = {
                item.get("displayName"): item.get("name")
                for item in list_all(self._client, f"{self._api_version}/{run}/timeSeries",
                                     "tensorboardTimeSeries", what="list loss time series")
            }
            return Curve(self._points(series.get(TRAIN_LOSS_SERIES)),
                         self._points(series.get(EVAL_LOSS_SERIES)))
        except JobNotFound as error:
            with self._lock:
                self._runs.pop(experiment, None)  # look the link up again next time
            return Curve([], [], f"TensorBoard run {run} ({error.message})")

    def _tensorboard_run(self, experiment: str) -> tuple[str | None, str]:
        """The TensorBoard run of the experiment's run, or ``None`` and what was missing."""
        with self._lock:
            cached = self._runs.get(experiment)
        if cached:
            return cached, ""
        v = self._api_version
        store = experiment.rpartition("/contexts/")[0]
        query = f'schema_title="system.ExperimentRun" AND parent_contexts:"{experiment}"'
        try:
            runs = list(list_all(self._client, f"{v}/{store}/contexts", "contexts",
                                 what="list experiment runs", params={"filter": query}))
        except JobNotFound:
            runs = []
        if not runs:
            return None, f"ExperimentRun context under {experiment}"
        run_id = str(runs[0]["name"]).rsplit("/", 1)[-1]
        artifact = f"{store}/artifacts/{run_id}{TB_RUN_ARTIFACT_SUFFIX}"
        try:
            reply = self._client.request("GET", f"{v}/{artifact}",
                                         what="read TensorBoard run artifact")
        except JobNotFound:
            return None, f"TensorBoard run artifact {artifact}"
        resource = (reply.get("metadata") or {}).get(TB_RUN_RESOURCE_KEY)
        if not isinstance(resource, str) or not resource:
            return None, f"metadata.{TB_RUN_RESOURCE_KEY} on the artifact {artifact}"
        with self._lock:
            self._runs[experiment] = resource
        return resource, ""

    def _points(self, series_name: str | None) -> Points:
        if not series_name:
            return []
        data = self._client.request(
            "GET", f"{self._api_version}/{series_name}:read", what="read loss time series",
            params={"maxDataPoints": ALL_DATA_POINTS},
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

    1. checkpoints, each by its own ``epoch`` and ``step``: epoch ``e`` ends at the step of
       its checkpoint. Vertex keeps about one per epoch up to 10 epochs and about ten evenly
       spread (plus the last) beyond, so a 12-epoch job may have none for epochs 3 and 9:
       the steps between two checkpoints are shared evenly among the epochs they span;
    2. past the last checkpoint: ``tuningDataStats.tuningStepCount / epochCount`` steps per
       epoch (rounded up), else the last checkpoint's step / its epoch;
    3. once the job has ended: the last step seen / ``epochCount``.

    With none of these the epochs are unknown and :meth:`snapshots` holds the points back;
    they are reported, all of them, by a later poll (snapshots are cumulative).
    """

    def __init__(self, epoch_ends: Sequence[tuple[int, int]], steps_per_epoch: int | None,
                 epochs: int | None, *, is_finished: bool = False) -> None:
        self._ends = sorted(epoch_ends)  # (epoch, its last step)
        self._steps_per_epoch = steps_per_epoch
        self._epochs = epochs
        self._is_finished = is_finished

    @classmethod
    def build(cls, *, checkpoints: Sequence[CheckpointPayload], tuning_step_count: int | None,
              epochs: int | None, last_step: int | None, is_finished: bool) -> EpochMap:
        by_epoch: dict[int, int] = {}
        for checkpoint in checkpoints:
            epoch, step = parse_int64(checkpoint.epoch), parse_int64(checkpoint.step)
            if epoch is not None and epoch >= 1 and step is not None and step >= 1:
                by_epoch[epoch] = step
        ends = sorted(by_epoch.items())
        per_epoch: int | None = None
        if tuning_step_count and epochs:
            per_epoch = math.ceil(tuning_step_count / epochs)
        elif ends:
            per_epoch = math.ceil(ends[-1][1] / ends[-1][0])
        elif is_finished and last_step and epochs:
            per_epoch = math.ceil(last_step / epochs)
        return cls(ends, per_epoch if per_epoch and per_epoch > 0 else None, epochs,
                   is_finished=is_finished)

    @property
    def is_known(self) -> bool:
        return self._steps_per_epoch is not None or bool(self._ends)

    @property
    def checkpointed_epochs(self) -> frozenset[int]:
        return frozenset(epoch for epoch, _ in self._ends)

    def _has_ended(self, epoch: int, last_epoch: int) -> bool:
        """A later checkpoint is kept, a later epoch has started, or the job is over."""
        last_kept = self._ends[-1][0] if self._ends else 0
        return epoch <= last_kept or epoch < last_epoch or self._is_finished

    def epoch_of(self, step: int) -> int:
        previous_epoch, previous_step = 0, 0
        for epoch, end in self._ends:
            if step <= end:
                span = epoch - previous_epoch
                width = (end - previous_step) / span
                inside = math.ceil((step - previous_step) / width - 1e-9) if width > 0 else 1
                return previous_epoch + min(span, max(1, inside))
            previous_epoch, previous_step = epoch, end
        per_epoch = self._steps_per_epoch or max(1, previous_step // max(previous_epoch, 1))
        epoch = previous_epoch + max(1, math.ceil((step - previous_step) / per_epoch))
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
