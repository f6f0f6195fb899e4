"""Read-only MLflow helpers for ``report`` (and anything else that only looks).

Part of the tracking family (the only modules that import mlflow). Nothing here writes: it
finds a sweep's experiment and child runs by the tags :mod:`sweeps.tracking.tracker` sets and reads
back the per-epoch curves it logged. An explicit ``MlflowClient(tracking_uri)`` is used, never
MLflow's global state.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import ViewType

from sweeps.errors import TrackingError
from sweeps.tracking import _writer as writer

logger = logging.getLogger(__name__)

_MAX_RESULTS = 1000


@dataclass(frozen=True, slots=True)
class TrialCurve:
    """One trial's logged curves: per-epoch training loss, validation loss (or None)."""

    number: int
    run_id: str
    status: str
    train: tuple[float, ...]
    evaluation: tuple[float, ...] | None


def experiment_id(tracking_uri: str, name: str) -> str | None:
    """The id of experiment ``name`` (a sweep's experiment is named after it), or None."""
    try:
        experiment = MlflowClient(tracking_uri=tracking_uri).get_experiment_by_name(name)
    except Exception as exc:  # MLflow raises SQL, HTTP and OS errors alike
        raise TrackingError(f"MLflow store {tracking_uri}: cannot be read ({exc})") from exc
    return experiment.experiment_id if experiment is not None else None


def trial_curves(tracking_uri: str, experiment_name: str, *,
                 sweep_id: str | None = None) -> dict[int, TrialCurve]:
    """Every trial run of the sweep with its curves, keyed by trial number.

    Runs of other sweeps in the same experiment (a study deleted and re-run under the same
    name gets a new ``sweep_id``) are left out when ``sweep_id`` is given.
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = experiment_id(tracking_uri, experiment_name)
    if exp_id is None:
        return {}
    conditions = [f"tags.`{writer.TAG_ROLE}` = 'trial'"]
    if sweep_id:
        conditions.append(f"tags.`{writer.TAG_SWEEP_ID}` = '{sweep_id}'")
    try:
        runs = client.search_runs([exp_id], filter_string=" and ".join(conditions),
                                  run_view_type=ViewType.ACTIVE_ONLY, max_results=_MAX_RESULTS)
        curves = {}
        for run in runs:
            number = int(run.data.tags[writer.TAG_TRIAL])
            evaluation = _history(client, run.info.run_id, "eval_loss_epoch")
            curves[number] = TrialCurve(
                number=number, run_id=run.info.run_id, status=run.info.status,
                train=_history(client, run.info.run_id, "train_loss_epoch"),
                evaluation=evaluation or None)
    except TrackingError:
        raise
    except Exception as exc:
        raise TrackingError(f"MLflow store {tracking_uri}: cannot read the runs of "
                            f"{experiment_name!r} ({exc})") from exc
    return dict(sorted(curves.items()))


def _history(client: MlflowClient, run_id: str, key: str) -> tuple[float, ...]:
    points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
    return tuple(m.value for m in points)


__all__ = ["TrialCurve", "experiment_id", "trial_curves"]
