"""Export a sweep's best trial as a configuration ready to submit.

The best trial is the best COMPLETE one (ties: fewer training tokens, see
:func:`~sweeps.results.sweep_results.pick_best`);
pruned, failed and cancelled trials are never exported,
because a cancelled job's model quality is unpredictable. ``epochs`` is set to the epoch the
loss curve plateaus at (or more, when the curve had not converged), and every note the user
needs to trust that number comes with it.

Formats: ``yaml``/``json`` (knobs, dataset hash and preamble, study and run ids, plateau and
flags, objective), ``gemini-api`` (the exact ``tunedModels`` create body), ``vertex`` (the
exact ``tuningJobs`` create body), ``python`` (a runnable requests + google-auth script) and
``curl``. The bodies come from the backends' own wire functions, so an export is what the
backend would send. No secret is ever written: keys are read from the environment by the
snippets, and storage passwords are hidden.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from types import MappingProxyType
from typing import Any
from typing import Literal

import yaml

from gemini_backend import BaseBackend
from gemini_backend import CreateCall
from gemini_backend import JobRequest
from gemini_backend import config_model
from gemini_backend import create_backend
from gemini_backend.gemini_api.backend import tuned_model_id
from sweeps.config.schema import SweepConfig
from sweeps.data.dataset import Dataset
from sweeps.data.dataset import load_dataset
from sweeps.errors import SweepError
from sweeps.policy.fidelity import FROM_CURVE
from sweeps.policy.fidelity import schedule_caveat
from sweeps.results import _export_snippets as snippets
from sweeps.results.cost_frontier import sweep_notes
from sweeps.results.sweep_results import SweepResults
from sweeps.results.sweep_results import TrialRecord
from sweeps.results.sweep_results import recommended_epochs

logger = logging.getLogger(__name__)

ExportFormat = Literal["yaml", "json", "gemini-api", "vertex", "python", "curl"]
EXPORT_FORMATS: tuple[str, ...] = ("yaml", "json", "gemini-api", "vertex", "python", "curl")
_GEMINI_TARGET_KINDS = ("gemini-api",)


@dataclass(frozen=True, slots=True)
class Recommendation:
    """How many epochs to tune for, and why (``notes`` are sentences for the user)."""

    epochs: int
    epochs_run: int
    plateau_epoch: int | None
    loss_at_plateau: float | None
    flags: dict[str, bool]
    checkpoint_id: str | None
    notes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BestConfig:
    """The best trial of a sweep, with the knobs to submit (``epochs`` as recommended)."""

    study_name: str
    sweep_id: str | None
    storage: str
    trial: TrialRecord
    knobs: dict[str, Any]
    objective: str
    backend_kind: str
    base_model: str | None
    dataset_path: str
    dataset_hash: str
    preamble: str
    validation_split: float
    seed: int
    recommendation: Recommendation
    extra: dict[str, Any] = field(default_factory=dict)
    pareto_front: tuple[TrialRecord, ...] = ()  # multi-objective [quality, cost] sweeps

    def to_dict(self) -> dict[str, Any]:
        """The ``yaml``/``json`` export: everything needed to reproduce and trust the pick."""
        rec = self.recommendation
        data: dict[str, Any] = {
            "knobs": dict(self.knobs),
            "knobs_run": dict(self.trial.knobs),
            "objective": {"name": self.objective, "value": self.trial.value},
            "evaluation": dict(self.trial.eval_scores) or None,
            "plateau": {"epoch": rec.plateau_epoch, "loss": rec.loss_at_plateau,
                        "recommended_epochs": rec.epochs, "epochs_run": rec.epochs_run,
                        "flags": dict(rec.flags), "checkpoint_id": rec.checkpoint_id},
            "notes": list(rec.notes),
            "dataset": {"path": self.dataset_path, "content_hash": self.dataset_hash,
                        "preamble": self.preamble, "validation_split": self.validation_split,
                        "seed": self.seed},
            "backend": {"kind": self.backend_kind, "base_model": self.base_model},
            "study": {"name": self.study_name, "sweep_id": self.sweep_id,
                      "storage": self.storage},
            "trial": {"number": self.trial.number, "mlflow_run_id": self.trial.mlflow_run_id,
                      "job_id": self.trial.job_id, "training_tokens": self.trial.training_tokens,
                      "cost": self.trial.cost},
        }
        if self.extra:  # e.g. cheapest_within_tolerance
            data.update(self.extra)
        if self.pareto_front:
            data["pareto_front"] = [
                {"trial": t.number, "knobs": dict(t.knobs), "objectives": list(t.values),
                 "evaluation": dict(t.eval_scores) or None} for t in self.pareto_front]
        return data


def recommend(trial: TrialRecord) -> Recommendation:
    """Epochs to set: the plateau epoch (more if the curve was still falling), with notes."""
    epochs_run = int(trial.knobs.get("epochs") or trial.epochs_completed or 1)
    plateau = trial.plateau_epoch
    epochs = recommended_epochs(trial)
    flags = dict(trial.flags)
    checkpoint = _checkpoint_of(trial, plateau)
    notes: list[str] = []
    if plateau is not None:
        loss = f" (smoothed loss {trial.loss_at_plateau:.4g})" if trial.loss_at_plateau \
            is not None else ""
        ran = (f"{trial.stopped_after_epoch} of its {epochs_run}"
               if trial.stopped_after_epoch is not None else str(epochs_run))
        notes.append(f"epochs = {epochs}: the loss curve of trial {trial.number} plateaus at "
                     f"epoch {plateau}{loss}; the trial ran {ran} epochs.")
    else:
        notes.append(f"epochs = {epochs}: no plateau was recorded; kept the epochs it ran.")
    if flags.get("not_converged"):
        notes.append(f"not converged: the loss was still falling at epoch {epochs_run}; "
                     f"use more epochs ({epochs} recommended) and check the curve again.")
    if flags.get("overfitting"):
        notes.append(f"overfitting: the validation loss rises after epoch {plateau}; do not "
                     "train longer than the plateau epoch.")
    if flags.get("spike"):
        notes.append("spike: the curve has a loss spike; check the data or lower the "
                     "learning_rate_multiplier.")
    if flags.get("flat"):
        notes.append("flat: the loss hardly moved; the model may already do this task, or "
                     "the learning rate is too low.")
    schedule_differs = plateau is not None and plateau != epochs_run
    if trial.epochs_mode == FROM_CURVE and plateau is not None:
        notes.append(f"epochs from the curve (search_space.epochs mode from_curve): "
                     f"{schedule_caveat(epochs=int(epochs), max_epochs=epochs_run)}")
    if trial.stopped_after_epoch is not None:
        notes.append(f"stopped early: the job was cancelled after epoch "
                     f"{trial.stopped_after_epoch}, past its plateau (search_space.epochs "
                     "patience). Deploy a kept checkpoint of that job if the service has one "
                     "(the local backend keeps them; whether Vertex keeps those of a cancelled "
                     f"job is not documented); otherwise tune again with epochs = {epochs}.")
    if schedule_differs:
        assert plateau is not None
        # from_curve's note above already gives the schedule caveat: add only the checkpoint.
        if trial.epochs_mode != FROM_CURVE:
            notes.append(_schedule_note(plateau, epochs_run, checkpoint))
        elif checkpoint:
            notes.append(_checkpoint_note(plateau, checkpoint))
        if checkpoint is None and trial.checkpoints:
            notes.append(_no_checkpoint_note(trial, plateau))
    return Recommendation(epochs=int(epochs), epochs_run=epochs_run, plateau_epoch=plateau,
                          loss_at_plateau=trial.loss_at_plateau, flags=flags,
                          checkpoint_id=checkpoint, notes=tuple(notes))


def _schedule_note(plateau: int, epochs_run: int, checkpoint: str | None) -> str:
    note = (f"the plateau epoch ({plateau}) differs from the epochs the job ran ({epochs_run}):"
            f" the service's learning-rate schedule may make epoch {plateau} of a "
            f"{epochs_run}-epoch job differ from a {plateau}-epoch job.")
    if checkpoint:
        return f"{note} {_checkpoint_note(plateau, checkpoint)}"
    return note + (" Where the service keeps per-epoch checkpoints (Vertex), deploying the "
                   "plateau epoch's checkpoint of the original job avoids that difference.")


def _checkpoint_note(plateau: int, checkpoint: str) -> str:
    return (f"The job kept checkpoint {checkpoint} at epoch {plateau}: deploy it instead of "
            "tuning again.")


def _no_checkpoint_note(trial: TrialRecord, epoch: int) -> str:
    """The plateau epoch has no checkpoint (Vertex keeps about ten, spread, past 10 epochs):
    say so, and name the nearest kept one (the earlier on a tie: before the plateau)."""
    kept = [c for c in trial.checkpoints if isinstance(c.get("epoch"), int)]
    nearest = min(kept, key=lambda c: (abs(int(c["epoch"]) - epoch), int(c["epoch"])))
    return (f"no checkpoint: the service kept none for epoch {epoch} (kept: epochs "
            f"{', '.join(str(c['epoch']) for c in kept)}); the nearest is epoch "
            f"{nearest['epoch']} (checkpoint {nearest.get('checkpoint_id')}). Deploy it, or "
            f"tune again with epochs = {epoch} for that exact epoch.")


def _checkpoint_of(trial: TrialRecord, epoch: int | None) -> str | None:
    for checkpoint in trial.checkpoints:
        if epoch is not None and checkpoint.get("epoch") == epoch:
            return str(checkpoint.get("checkpoint_id") or "") or None
    return None


def best_config(config: SweepConfig, results: SweepResults) -> BestConfig:
    """The best trial of the sweep, ready to export.

    Raises:
        SweepError: no trial has completed (pruned, failed and running ones do not count).
    """
    best = results.best
    if best is None:
        counts = ", ".join(f"{n} {state.lower()}" for state, n in results.counts().items())
        raise SweepError(f"sweep {results.study_name!r}: no trial has completed yet "
                         f"({counts or 'no trials'}); pruned, failed and cancelled trials are "
                         "never exported. Run `gemini-sweep run CONFIG` until one completes")
    rec = recommend(best)
    maximize = config.directions[0] == "maximize"
    rec = replace(rec, notes=rec.notes + sweep_notes(results, maximize=maximize))
    cheapest = ({"cheapest_within_tolerance": results.cheapest.to_dict()}
                if results.cheapest is not None else {})
    dataset = load_sweep_dataset(config)
    return BestConfig(
        study_name=results.study_name, sweep_id=results.sweep_id, storage=results.storage,
        trial=best, knobs={**best.knobs, "epochs": rec.epochs},
        objective=config.objectives[0], pareto_front=results.pareto_front,
        backend_kind=config.backend.kind, base_model=config.backend.base_model,
        dataset_path=str(config.dataset_path), dataset_hash=dataset.content_hash,
        preamble=dataset.preamble, validation_split=config.dataset.validation_split,
        seed=config.dataset.seed, recommendation=rec, extra=cheapest,
    )


def load_sweep_dataset(config: SweepConfig) -> Dataset:
    """The sweep's dataset, validated as the sweep did (against its backend's limits)."""
    return load_dataset(config.dataset_path, preamble=config.dataset.preamble,
                        backend=config.backend.kind)


def _request(config: SweepConfig, best: BestConfig, *, base_model: str) -> JobRequest:
    """The job request of the exported config: the sweep's training split, preamble applied."""
    dataset = load_sweep_dataset(config)
    train, validation = dataset.split(best.validation_split, best.seed)
    knobs = best.knobs
    batch_size = knobs.get("batch_size")
    extra = {k: v for k, v in knobs.items()
             if k not in ("epochs", "batch_size", "learning_rate_multiplier")}
    return JobRequest(
        train=dataset.prepared(train), validation=dataset.prepared(validation),
        epochs=int(knobs["epochs"]),
        learning_rate_multiplier=float(knobs.get("learning_rate_multiplier", 1.0)),
        batch_size=int(batch_size) if batch_size is not None else None,
        base_model=base_model, display_name=f"{best.study_name} best t{best.trial.number}",
        idempotency_key=export_key(best), extra_knobs=MappingProxyType(extra),
    )


def export_key(best: BestConfig) -> str:
    """A stable key for the exported job, so a repeated create finds the first one."""
    return f"{best.study_name}-best-t{best.trial.number}"


def gemini_api_body(config: SweepConfig, best: BestConfig, *,
                    base_model: str | None = None) -> dict[str, Any]:
    """The exact ``tunedModels.create`` body of the best config (section 1.5), as the
    gemini-api backend renders it."""
    return _create_call(config, best, "gemini-api", base_model=base_model).body


@dataclass(frozen=True, slots=True)
class VertexExport:
    """A ``tuningJobs.create`` body and the JSONL files it names (upload them first)."""

    body: dict[str, Any]
    files: dict[str, bytes]  # gs:// URI -> file content
    notes: tuple[str, ...] = ()


def vertex_export(config: SweepConfig, best: BestConfig, *,
                  base_model: str | None = None) -> VertexExport:
    """The exact ``tuningJobs.create`` body (section 2.4), as the Vertex backend renders it,
    with content-addressed dataset URIs: the names it uploads to, so a sweep's files are
    reused."""
    call = _create_call(config, best, "vertex", base_model=base_model)
    return VertexExport(body=call.body, files=dict(call.files), notes=call.notes)


#: Settings of a backend the sweep did not run on: placeholders the user replaces.
_PLACEHOLDER_BACKENDS: dict[str, dict[str, Any]] = {
    "vertex": {"kind": "vertex", "project": "YOUR_PROJECT", "bucket": "YOUR_BUCKET"},
    "gemini-api": {"kind": "gemini-api"},
}


def _create_call(config: SweepConfig, best: BestConfig, kind: str, *,
                 base_model: str | None) -> CreateCall:
    """Ask the ``kind`` backend for its create call: the sweep's own backend when it is of
    that kind (its bucket, system instruction, learning rate), else one with placeholders."""
    backend = _export_backend(config, kind)
    try:
        return backend.create_call(_request(config, best, base_model=base_model or ""))
    finally:
        backend.close()


def _export_backend(config: SweepConfig, kind: str) -> BaseBackend:
    settings = (config.backend if config.backend.kind == kind
                else config_model(kind).model_validate(_PLACEHOLDER_BACKENDS[kind]))
    return create_backend(settings, base_dir=config.config_dir)


def render(config: SweepConfig, best: BestConfig, fmt: str, *,
           base_model: str | None = None) -> str:
    """The export text in ``fmt`` (one of :data:`EXPORT_FORMATS`).

    Raises:
        SweepError: an unknown format.
    """
    if fmt == "yaml":
        return yaml.safe_dump(best.to_dict(), sort_keys=False, allow_unicode=True)
    if fmt == "json":
        return json.dumps(best.to_dict(), indent=2, ensure_ascii=False) + "\n"
    if fmt == "gemini-api":
        return _json(gemini_api_body(config, best, base_model=base_model))
    if fmt == "vertex":
        return _json(vertex_export(config, best, base_model=base_model).body)
    if fmt in ("python", "curl"):
        return _snippet(config, best, fmt, base_model=base_model)
    raise SweepError(f"--format {fmt!r}: unknown; choose one of {', '.join(EXPORT_FORMATS)}")


def targets_vertex(config: SweepConfig) -> bool:
    """Whether ``python``/``curl`` exports call Vertex (a vertex sweep) or the Gemini API."""
    return config.backend.kind == "vertex"


def _snippet(config: SweepConfig, best: BestConfig, fmt: str, *,
             base_model: str | None) -> str:
    header = snippets.Header(study=best.study_name, trial=best.trial.number,
                             notes=best.recommendation.notes)
    if targets_vertex(config):
        export = vertex_export(config, best, base_model=base_model)
        target = snippets.VertexTarget(
            project=getattr(config.backend, "project", _PLACEHOLDER_BACKENDS["vertex"]["project"]),
            location=getattr(config.backend, "location", "us-central1"),
            api_version=getattr(config.backend, "api_version", "v1"),
            files=tuple(export.files))
        make = snippets.vertex_python if fmt == "python" else snippets.vertex_curl
        return make(header, target, export.body)
    body = gemini_api_body(config, best, base_model=base_model)
    target_api = snippets.GeminiApiTarget(
        base_url=getattr(config.backend, "base_url", None) or snippets.GEMINI_API_URL,
        model_id=tuned_model_id(export_key(best)),
        key_envs=_key_envs(config))
    make_api = snippets.gemini_api_python if fmt == "python" else snippets.gemini_api_curl
    return make_api(header, target_api, body)


def _key_envs(config: SweepConfig) -> tuple[str, ...]:
    named = getattr(config.backend, "api_key_env", None)
    return (named,) if named else ("GEMINI_API_KEY", "GOOGLE_API_KEY")


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2, ensure_ascii=False) + "\n"


__all__ = [
    "EXPORT_FORMATS",
    "BestConfig",
    "ExportFormat",
    "Recommendation",
    "VertexExport",
    "best_config",
    "gemini_api_body",
    "recommend",
    "render",
    "targets_vertex",
    "vertex_export",
]
