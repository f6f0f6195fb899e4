"""Warm start: seed a sweep's sampler with the trials of earlier sweeps on the same dataset.

``warm_start: [other.yaml, old-study]`` names earlier sweeps: a PATH is another sweep config
(its storage and name), a bare name is a study in this config's storage. Before the first
trial, every COMPLETE trial of theirs that ran on the same dataset (same content hash) and
fits this search space is copied into the study with ``study.add_trial``, so TPE (or any
sampler) starts from what is already known: switching from the replay backend to a real one,
or re-running with a wider space, does not pay again for the same lessons.

Copied trials carry the user attribute ``warm_start_from`` (``"<source>#<trial>"``). They
do not count toward ``n_trials`` or the budget, are never re-run, and are never "the best
trial of this sweep": ``status`` lists them apart and ``export`` picks among this sweep's own
trials only (another sweep ran them, maybe on another backend, so there is no job or tuned
model here to export). Seeding is idempotent: a trial already copied is not copied again.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution

from sweeps import trial_record as ts
from sweeps.config.schema import Choices
from sweeps.config.schema import Fixed
from sweeps.config.schema import FloatRange
from sweeps.config.schema import FromCurve
from sweeps.config.schema import IntRange
from sweeps.config.schema import SweepConfig
from sweeps.config.schema import load_config
from sweeps.errors import ConfigError
from sweeps.policy.fidelity import ATTR_EPOCHS_MODE
from sweeps.results.sweep_results import load_study

logger = logging.getLogger(__name__)

TrialState = optuna.trial.TrialState
#: Summary attributes copied with a trial (not its job, run id or tokens: not ours).
_COPIED_ATTRS = (ts.ATTR_KNOBS, ts.ATTR_DATASET_HASH, "plateau_epoch", "recommended_epochs",
                 "loss_at_plateau", "flags", ATTR_EPOCHS_MODE)


@dataclass(frozen=True, slots=True)
class WarmStartReport:
    """What seeding did: trials copied per source, and why the others were skipped."""

    n_seeded: int = 0
    n_already_seeded: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count

    def describe(self) -> str:
        text = f"warm start: seeded {self.n_seeded} trials"
        if self.n_already_seeded:
            text += f" ({self.n_already_seeded} seeded by an earlier run)"
        if self.skipped:
            text += "; skipped " + ", ".join(f"{n} {reason}" for reason, n in
                                             sorted(self.skipped.items()))
        return text


@dataclass(frozen=True, slots=True)
class _Source:
    label: str
    study_name: str
    storage: str
    objectives: tuple[str, ...] | None  # known when the source is a config file


def seed_from_earlier_sweeps(config: SweepConfig, study: optuna.Study, *,
                             dataset_hash: str) -> WarmStartReport:
    """Copy the usable trials of every ``config.warm_start`` source into ``study``.

    Raises:
        ConfigError: a source config cannot be loaded, or its study does not exist; the
            message names the ``warm_start`` entry.
    """
    if not config.warm_start:
        return WarmStartReport()
    distributions = search_distributions(config)
    held = _held_knobs(config)
    done = {t.user_attrs[ts.ATTR_WARM_START_FROM] for t in study.get_trials(deepcopy=False)
            if ts.is_warm_start(t)}
    skipped: Counter[str] = Counter()
    n_seeded = n_already = 0
    for index, entry in enumerate(config.warm_start):
        source = _resolve(config, entry, index)
        if source.study_name == config.name and source.storage == config.storage_url:
            logger.warning("warm_start[%d] %r is this sweep itself; ignored", index, entry)
            continue
        if source.objectives is not None and list(source.objectives) != config.objectives:
            skipped[f"from {source.label} (objective {list(source.objectives)} is not "
                    f"{config.objectives})"] += 1
            continue
        for trial in _source_trials(source, index):
            origin = f"{source.label}#{trial.number}"
            if origin in done:
                n_already += 1
                continue
            reason = _unusable(trial, config, distributions, held, dataset_hash)
            if reason:
                skipped[reason] += 1
                continue
            study.add_trial(_copy(trial, distributions, origin))
            done.add(origin)
            n_seeded += 1
    report = WarmStartReport(n_seeded=n_seeded, n_already_seeded=n_already,
                             skipped=dict(skipped))
    logger.info("%s", report.describe())
    return report


def search_distributions(config: SweepConfig) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every searched knob, as :func:`suggest_knobs` samples it."""
    result: dict[str, BaseDistribution] = {}
    for name, spec in config.search_space.knobs().items():
        if isinstance(spec, Choices):
            result[name] = CategoricalDistribution(spec.choices)
        elif isinstance(spec, IntRange):
            result[name] = IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
        elif isinstance(spec, FloatRange):
            result[name] = FloatDistribution(spec.low, spec.high, log=spec.log)
    return result


def _held_knobs(config: SweepConfig) -> dict[str, Any]:
    """Knobs this sweep sends at one value: fixed ones, and from_curve's max epochs."""
    held: dict[str, Any] = {}
    for name, spec in config.search_space.knobs().items():
        if isinstance(spec, Fixed):
            held[name] = spec.value
        elif isinstance(spec, FromCurve):
            held[name] = spec.max
    return held


def _resolve(config: SweepConfig, entry: str, index: int) -> _Source:
    """A config PATH (ends in .yaml/.yml or is a file) or a study name in this storage."""
    path = Path(entry).expanduser()
    path = path if path.is_absolute() else config.config_dir / path
    is_path = entry.endswith((".yaml", ".yml")) or path.is_file()
    if not is_path:
        return _Source(label=entry, study_name=entry, storage=config.storage_url,
                       objectives=None)
    try:
        other = load_config(path)
    except ConfigError as exc:
        raise ConfigError(f"warm_start[{index}] ({entry}): cannot load that sweep config: "
                          f"{exc}") from None
    return _Source(label=other.name, study_name=other.name, storage=other.storage_url,
                   objectives=tuple(other.objectives))


def _source_trials(source: _Source, index: int) -> list[optuna.trial.FrozenTrial]:
    try:
        study = load_study(study_name=source.study_name, storage=source.storage)
    except Exception as exc:  # SweepError names the storage and the studies it holds
        raise ConfigError(f"warm_start[{index}] ({source.label}): {exc}; give a sweep config "
                          "path or the name of a study in this config's storage") from None
    return study.get_trials(deepcopy=False)


def _unusable(trial: optuna.trial.FrozenTrial, config: SweepConfig,
              distributions: dict[str, BaseDistribution], held: dict[str, Any],
              dataset_hash: str) -> str | None:
    """Why ``trial`` cannot seed this sweep (a short reason for the report), or None."""
    if trial.state is not TrialState.COMPLETE:
        return f"not complete ({trial.state.name.lower()})"
    if ts.is_warm_start(trial):
        return "copies themselves (seed from their original sweep instead)"
    stored_hash = trial.user_attrs.get(ts.ATTR_DATASET_HASH)
    if stored_hash is None:
        return "without a stored dataset hash (run before hashes were stored)"
    if stored_hash != dataset_hash:
        return "on another dataset"
    if trial.values is None or len(trial.values) != len(config.objectives):
        return "with another number of objectives"
    knobs = trial.user_attrs.get(ts.ATTR_KNOBS) or trial.params
    for name, dist in distributions.items():
        if name not in knobs or not _contains(dist, knobs[name]):
            return f"outside this search space ({name})"
    for name, value in held.items():
        if name in knobs and knobs[name] != value:
            return f"run with another fixed {name}"
    return None


def _contains(dist: BaseDistribution, value: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def _copy(trial: optuna.trial.FrozenTrial, distributions: dict[str, BaseDistribution],
          origin: str) -> optuna.trial.FrozenTrial:
    knobs = trial.user_attrs.get(ts.ATTR_KNOBS) or trial.params
    attrs = {k: trial.user_attrs[k] for k in _COPIED_ATTRS if k in trial.user_attrs}
    attrs[ts.ATTR_WARM_START_FROM] = origin
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=list(trial.values),
        params={name: knobs[name] for name in distributions}, distributions=distributions,
        user_attrs=attrs, intermediate_values=dict(trial.intermediate_values))


__all__ = ["WarmStartReport", "search_distributions", "seed_from_earlier_sweeps"]
