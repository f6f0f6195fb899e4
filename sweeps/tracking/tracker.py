"""MLflow tracking of a sweep: one parent run per study, one child run per trial.

With the other modules of :mod:`sweeps.tracking`, the only code that talks to MLflow.
The runner calls a :class:`Tracker` through named hooks; :class:`MlflowTracker` writes with an
explicit ``MlflowClient(tracking_uri)`` (never MLflow's global state, so several sweeps in one
process do not collide), and every write is idempotent: runs are found again by tags
(``gemini_sweep.sweep_id``, ``gemini_sweep.trial``) and only missing curve points are sent.
A child run's status mirrors its trial (pruned -> KILLED, failed -> FAILED) and is set last,
so a run that is not RUNNING is completely written.

Importing this module loads neither MLflow nor matplotlib (together about two seconds): the
runner calls :meth:`MlflowTracker.start_sweep` on its tracking thread, which imports them
there while the first jobs are already being submitted.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol

import optuna

from sweeps._crashpoints import crash_point
from sweeps.tracking import _writer as writer
from sweeps.tracking._prune_reason import prune_tags
from sweeps.trial_record import TrialOutcome

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric
    from mlflow.entities import Param
    from mlflow.entities import Run

    from sweeps.tracking.plots import Curve

logger = logging.getLogger(__name__)

_RUN_STATUS = {
    optuna.trial.TrialState.COMPLETE: "FINISHED",
    optuna.trial.TrialState.PRUNED: "KILLED",
    optuna.trial.TrialState.FAIL: "FAILED",
}
_MAX_TAG_CHARS = 5000
#: The held-out examples with the tuned model's answers, one row each.
EVAL_TABLE_FILE = "eval_examples.json"


@dataclass(frozen=True, slots=True)
class SweepInfo:
    """What identifies a sweep in MLflow and is written on every run of it."""

    name: str
    sweep_id: str
    backend: str
    base_model: str
    dataset_hash: str
    preamble: str = ""
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SweepSummary:
    """The end-of-sweep figures written on the parent run."""

    status: str  # FINISHED, FAILED or KILLED
    n_complete: int
    n_pruned: int
    n_failed: int
    spent_tokens: float
    committed_tokens: float
    spent_cost: float | None = None
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)  # to tune with (recommended)
    best_params_run: dict[str, Any] = field(default_factory=dict)  # what the trial ran


class Tracker(Protocol):
    """The hooks the runner calls. Errors raise :class:`sweeps.errors.TrackingError`."""

    def start_sweep(self, info: SweepInfo) -> None: ...

    def trial_started(self, number: int, knobs: dict[str, Any], key: str,
                      job_ref: dict[str, str] | None) -> str | None: ...

    def record_trial(self, outcome: TrialOutcome) -> str | None: ...

    def finish_sweep(self, study: optuna.Study, summary: SweepSummary) -> None: ...

    def close(self) -> None: ...


class NullTracker:
    """Records nothing (tests of the runner alone, or a sweep run without MLflow)."""

    def start_sweep(self, info: SweepInfo) -> None:
        return None

    def trial_started(self, number: int, knobs: dict[str, Any], key: str,
                      job_ref: dict[str, str] | None) -> str | None:
        return None

    def record_trial(self, outcome: TrialOutcome) -> str | None:
        return None

    def finish_sweep(self, study: optuna.Study, summary: SweepSummary) -> None:
        return None

    def close(self) -> None:
        return None


class MlflowTracker:
    """Writes a sweep to the MLflow store at ``tracking_uri``.

    Args:
        tracking_uri: e.g. ``sqlite:////abs/path/mlflow.db`` or ``http://127.0.0.1:5000``.
        artifact_root: where a new experiment keeps artifacts; default ``mlartifacts`` next
            to a SQLite store, the server's choice otherwise.
    """

    def __init__(self, tracking_uri: str, *, artifact_root: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self._artifact_root = artifact_root or writer.artifact_root_for(tracking_uri)
        self._client: MlflowClient | None = None
        self._lock = threading.Lock()  # one writer thread plus the runner's own calls
        self._info: SweepInfo | None = None
        self._experiment_id = ""
        self._parent_id = ""
        self._child_ids: dict[int, str] = {}
        self._curves: dict[int, Curve] = {}  # per-epoch curves written by this process

    @property
    def parent_run_id(self) -> str:
        return self._parent_id

    @property
    def experiment_id(self) -> str:
        return self._experiment_id

    def start_sweep(self, info: SweepInfo) -> None:
        """Find or create the experiment and the parent run; remember existing children."""
        with self._lock:
            self._info = info
            if self._client is None:  # outside the retries: a failure here is not transient
                writer.import_mlflow()  # before its log handlers are replaced
                writer.send_mlflow_logs_to_file(self.tracking_uri)
                from sweeps.tracking._store import ensure_mlflow_store

                ensure_mlflow_store(self.tracking_uri, artifact_root=self._artifact_root)
            writer.with_retries("opening the sweep's parent run", self._open_parent)

    def _open_parent(self) -> None:
        assert self._info is not None
        if self._client is None:
            from mlflow import MlflowClient

            writer.prepare_sqlite_store(self.tracking_uri)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        client, info = self._client, self._info
        self._experiment_id = writer.ensure_experiment(client, info.name,
                                                       artifact_root=self._artifact_root)
        tags = {writer.TAG_SWEEP_ID: info.sweep_id, writer.TAG_ROLE: "sweep"}
        parents = writer.find_runs(client, self._experiment_id, tags)
        if parents:
            parent = parents[0]
        else:
            parent = client.create_run(self._experiment_id, run_name=info.name, tags={
                **tags, "gemini_sweep.study": info.name, "gemini_sweep.backend": info.backend,
                "gemini_sweep.base_model": info.base_model})
        self._parent_id = parent.info.run_id
        writer.log_batch(client, self._parent_id, params=writer.missing_params(parent, {
            **info.settings, "backend": info.backend, "base_model": info.base_model,
            "dataset_hash": info.dataset_hash}))
        writer.set_status(client, parent, "RUNNING")
        children = writer.find_runs(client, self._experiment_id,
                                    {writer.TAG_SWEEP_ID: info.sweep_id,
                                     writer.TAG_ROLE: "trial"})
        self._child_ids = {int(run.data.tags[writer.TAG_TRIAL]): run.info.run_id
                           for run in children}

    def trial_started(self, number: int, knobs: dict[str, Any], key: str,
                      job_ref: dict[str, str] | None) -> str:
        """The trial's child run (created once), RUNNING, with its knobs and job."""
        with self._lock:
            return writer.with_retries(f"starting the run of trial {number}",
                                       lambda: self._start_child(number, knobs, key, job_ref))

    def _start_child(self, number: int, knobs: dict[str, Any], key: str,
                     job_ref: dict[str, str] | None) -> str:
        client, _ = self._require()
        run = self._child_run(number, key)
        writer.log_batch(client, run.info.run_id, params=self._child_params(run, knobs),
                         tags=_job_tags(job_ref))
        return run.info.run_id

    def _child_run(self, number: int, key: str) -> Run:
        """The trial's run: found by its tags (cached) or created with them."""
        client, info = self._require()
        run_id = self._child_ids.get(number)
        if run_id is not None:
            return client.get_run(run_id)
        # Another worker may have created it since start_sweep (a trial taken over).
        found = writer.find_runs(client, self._experiment_id, {
            writer.TAG_SWEEP_ID: info.sweep_id, writer.TAG_ROLE: "trial",
            writer.TAG_TRIAL: str(number)})
        if found:
            self._child_ids[number] = found[0].info.run_id
            return found[0]
        run = client.create_run(self._experiment_id, run_name=f"trial-{number}", tags={
            "mlflow.parentRunId": self._parent_id, writer.TAG_ROLE: "trial",
            writer.TAG_SWEEP_ID: info.sweep_id, writer.TAG_TRIAL: str(number),
            "gemini_sweep.study": info.name, "gemini_sweep.backend": info.backend,
            "gemini_sweep.base_model": info.base_model, "gemini_sweep.idempotency_key": key})
        self._child_ids[number] = run.info.run_id
        return run

    def _child_params(self, run: Run, knobs: dict[str, Any]) -> list[Param]:
        _, info = self._require()
        return writer.missing_params(run, {
            **knobs, "backend": info.backend, "base_model": info.base_model,
            "dataset_hash": info.dataset_hash, "preamble": info.preamble})

    def record_trial(self, outcome: TrialOutcome) -> str:
        """Write a finished trial completely (params, curves, summary, artifacts), then set
        its final status. Safe to repeat: only missing points are written."""
        with self._lock:
            return writer.with_retries(f"recording trial {outcome.number}",
                                       lambda: self._record(outcome))

    def _record(self, outcome: TrialOutcome) -> str:
        client, info = self._require()
        run = self._child_run(outcome.number, outcome.key)
        run_id = run.info.run_id
        tags = _job_tags(outcome.job_ref.to_dict() if outcome.job_ref else None)
        tags.update({f"gemini_sweep.flag.{flag}": str(bool(is_set)).lower()
                     for flag, is_set in outcome.flags.items()})
        if outcome.stopped_after_epoch is not None:
            tags["gemini_sweep.stopped_after_epoch"] = str(outcome.stopped_after_epoch)
        if outcome.state is optuna.trial.TrialState.PRUNED:
            tags.update(prune_tags(outcome, info.settings.get("pruner")))
        if outcome.fail_reason:
            tags["gemini_sweep.fail_reason"] = outcome.fail_reason[:_MAX_TAG_CHARS]
        if outcome.eval_error:
            tags["gemini_sweep.eval_error"] = outcome.eval_error[:_MAX_TAG_CHARS]
        writer.log_batch(client, run_id, metrics=_missing_metrics(client, run, outcome),
                         params=self._child_params(run, outcome.knobs), tags=tags)
        crash_point("mid_record")  # test-only fault hook: curve written, status not yet
        self._write_artifacts(client, run_id, outcome)
        self._curves[outcome.number] = (outcome.train_epoch_loss, outcome.eval_epoch_loss,
                                        outcome.plateau_epoch)
        writer.set_status(client, run, "KILLED" if outcome.cancelled_by_user
                          else _RUN_STATUS[outcome.state])
        return run_id

    def _write_artifacts(self, client: MlflowClient, run_id: str,
                         outcome: TrialOutcome) -> None:
        with tempfile.TemporaryDirectory(prefix="gemini-sweep-") as tmp:
            curve_path = Path(tmp) / "loss_curve.json"
            curve_path.write_text(json.dumps(_curve_json(outcome), indent=1), encoding="utf-8")
            client.log_artifact(run_id, str(curve_path))
            if outcome.train_epoch_loss:
                from sweeps.tracking._plots import write_loss_curve_png

                png_path = Path(tmp) / "loss_curve.png"
                write_loss_curve_png(outcome, png_path)
                client.log_artifact(run_id, str(png_path))
        if outcome.eval_rows:  # the MLflow UI's table view shows what the model got wrong
            client.log_table(run_id, data=_eval_table(outcome), artifact_file=EVAL_TABLE_FILE)

    def finish_sweep(self, study: optuna.Study, summary: SweepSummary) -> None:
        """Write the sweep's figures, best trial and plots on the parent run; close it."""
        with self._lock:
            writer.with_retries("finishing the sweep's parent run",
                                lambda: self._finish(study, summary))

    def _finish(self, study: optuna.Study, summary: SweepSummary) -> None:
        client, _ = self._require()
        step = summary.n_complete + summary.n_pruned + summary.n_failed
        metrics = {"n_complete": summary.n_complete, "n_pruned": summary.n_pruned,
                   "n_failed": summary.n_failed, "spent_training_tokens": summary.spent_tokens,
                   "committed_training_tokens": summary.committed_tokens}
        if summary.spent_cost is not None:
            metrics["spent_cost"] = summary.spent_cost
        if summary.best_value is not None:
            metrics["best_value"] = summary.best_value
        parent = client.get_run(self._parent_id)
        writer.log_batch(client, self._parent_id, metrics=[
            point for key, value in metrics.items()
            for point in writer.missing_points(client, parent, key, [(step, value)])])
        if summary.best_number is not None:
            client.set_tag(self._parent_id, "gemini_sweep.best_trial", str(summary.best_number))
            client.set_tag(self._parent_id, "gemini_sweep.best_params",
                           json.dumps(summary.best_params, sort_keys=True))
            client.set_tag(self._parent_id, "gemini_sweep.best_params_run",
                           json.dumps(summary.best_params_run, sort_keys=True))
            best_run = self._child_ids.get(summary.best_number)
            if best_run:
                client.set_tag(self._parent_id, "gemini_sweep.best_run_id", best_run)
        self._write_sweep_plots(client, study)
        writer.set_status(client, parent, summary.status)

    def _write_sweep_plots(self, client: MlflowClient, study: optuna.Study) -> None:
        from sweeps.tracking._plots import save_figure
        from sweeps.tracking._plots import sweep_figures

        curves = {number: self._curves.get(number) or _read_curve(client, run_id)
                  for number, run_id in sorted(self._child_ids.items())}
        with tempfile.TemporaryDirectory(prefix="gemini-sweep-") as tmp:
            for name, figure in sweep_figures(study, curves).items():
                path = Path(tmp) / f"{name}.png"
                save_figure(figure, path)
                client.log_artifact(self._parent_id, str(path), artifact_path="sweep_plots")

    def close(self) -> None:
        """Release the client (nothing to do for MLflow today; kept for the protocol)."""

    def _require(self) -> tuple[MlflowClient, SweepInfo]:
        if self._client is None or self._info is None:
            raise RuntimeError("MlflowTracker.start_sweep() must be called first")
        return self._client, self._info


def _read_curve(client: MlflowClient, run_id: str) -> Curve:
    """A run's per-epoch curves and plateau epoch, as an earlier process wrote them."""
    def history(key: str) -> list[float]:
        return [m.value for m in sorted(client.get_metric_history(run_id, key),
                                        key=lambda m: m.step)]
    plateau = history("plateau_epoch")
    has_plateau = bool(plateau) and plateau[-1] == plateau[-1]  # NaN for failed trials
    return (history("train_loss_epoch"), history("eval_loss_epoch") or None,
            int(plateau[-1]) if has_plateau else None)


def _job_tags(job_ref: dict[str, str] | None) -> dict[str, str]:
    return {"gemini_sweep.job_id": job_ref["job_id"]} if job_ref else {}


def _missing_metrics(client: MlflowClient, run: Run, outcome: TrialOutcome) -> list[Metric]:
    """Every curve point and summary figure of the trial that the run does not hold yet."""
    series: dict[str, list[tuple[int, float | None]]] = {
        "train_loss": [(s.step, s.loss) for s in outcome.snapshots],
        "train_loss_epoch": list(enumerate(outcome.train_epoch_loss, start=1)),
        "eval_loss_epoch": list(enumerate(outcome.eval_epoch_loss or (), start=1)),
    }
    final = outcome.eval_epoch_loss or outcome.train_epoch_loss
    summary: dict[str, float | None] = {
        "objective": outcome.value,
        "plateau_epoch": outcome.plateau_epoch,
        "recommended_epochs": outcome.recommended_epochs or outcome.plateau_epoch,
        "loss_at_plateau": outcome.loss_at_plateau,
        "final_loss": final[-1] if final else None,
        "training_tokens": outcome.training_tokens,
    }
    if outcome.cost is not None:
        summary["cost"] = outcome.cost
    summary.update(outcome.eval_scores)  # eval_exact_match, eval_chrf, eval_<custom>
    if outcome.eval_tokens:
        summary["eval_tokens"] = outcome.eval_tokens
    series.update({key: [(0, value)] for key, value in summary.items()})
    return [point for key, points in series.items() if points
            for point in writer.missing_points(client, run, key, points)]


def _eval_table(outcome: TrialOutcome) -> dict[str, list[str]]:
    rows = outcome.eval_rows
    return {"input": [r.input for r in rows], "expected": [r.expected for r in rows],
            "prediction": [r.prediction for r in rows]}


def _curve_json(outcome: TrialOutcome) -> dict[str, Any]:
    return {
        "trial": outcome.number,
        "state": outcome.state.name,
        "knobs": outcome.knobs,
        "plateau_epoch": outcome.plateau_epoch,
        "loss_at_plateau": outcome.loss_at_plateau,
        "train_loss_epoch": list(outcome.train_epoch_loss),
        "eval_loss_epoch": list(outcome.eval_epoch_loss or []) or None,
        "snapshots": [{"step": s.step, "epoch": s.epoch, "loss": s.loss,
                       "eval_loss": s.eval_loss} for s in outcome.snapshots],
    }
