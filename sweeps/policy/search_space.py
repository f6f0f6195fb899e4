"""The config's search space as Optuna sees it: suggestions, sampler and pruner factories.

A knob held at one value (``{value: 4}``) is not an Optuna parameter: it would add a constant
column to every plot and importance table. Its value comes from the config each time.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import optuna

from sweeps.config.schema import Choices
from sweeps.config.schema import Fixed
from sweeps.config.schema import FloatRange
from sweeps.config.schema import FromCurve
from sweeps.config.schema import HyperbandPrunerConfig
from sweeps.config.schema import IntRange
from sweeps.config.schema import KnobSpec
from sweeps.config.schema import LeaderGapPrunerConfig
from sweeps.config.schema import MedianPrunerConfig
from sweeps.config.schema import PatientPrunerConfig
from sweeps.config.schema import SamplerConfig
from sweeps.config.schema import SearchSpace
from sweeps.config.schema import SuccessiveHalvingPrunerConfig
from sweeps.config.schema import SweepConfig
from sweeps.errors import ConfigError
from sweeps.policy._per_trial_seed import PerTrialSeedCmaEsSampler
from sweeps.policy._per_trial_seed import PerTrialSeedGPSampler
from sweeps.policy._per_trial_seed import PerTrialSeedRandomSampler
from sweeps.policy._per_trial_seed import PerTrialSeedStratifiedTPESampler
from sweeps.policy._per_trial_seed import PerTrialSeedTPESampler
from sweeps.policy.pruners import LeaderGapPruner
from sweeps.policy.stratified_start import StratifiedStartTPESampler

logger = logging.getLogger(__name__)


def knob_names(space: SearchSpace) -> list[str]:
    """Every knob the sweep sends to the backend (searched or fixed)."""
    return list(space.knobs())


def suggest_knobs(trial: optuna.trial.BaseTrial, space: SearchSpace) -> dict[str, Any]:
    """The trial's value for every knob. Safe to call again on a resumed trial: Optuna
    returns the values already stored instead of sampling new ones."""
    knobs: dict[str, Any] = {}
    for name, spec in space.knobs().items():
        knobs[name] = _suggest(trial, name, spec)
    return knobs


def _suggest(trial: optuna.trial.BaseTrial, name: str, spec: KnobSpec) -> Any:
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, FromCurve):  # not searched: every trial runs max (sweeps.policy.fidelity)
        return spec.max
    if isinstance(spec, Choices):
        return trial.suggest_categorical(name, spec.choices)
    if isinstance(spec, IntRange):
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
    if isinstance(spec, FloatRange):
        return trial.suggest_float(name, spec.low, spec.high, log=spec.log)
    raise ConfigError(f"search_space.{name}: unsupported knob shape {type(spec).__name__}")


def epoch_bounds(space: SearchSpace) -> tuple[int, int]:
    """The fewest and the most epochs any trial can ask for (the cheapest possible trial, for
    the budget; Hyperband's maximum resource; the backend's epoch limit)."""
    spec = space.epochs
    if isinstance(spec, Fixed):
        return int(spec.value), int(spec.value)
    if isinstance(spec, FromCurve):
        return spec.max, spec.max
    if isinstance(spec, Choices):
        counts = [int(c) for c in spec.choices]
        return min(counts), max(counts)
    return int(spec.low), int(spec.high)


def min_epochs(space: SearchSpace) -> int:
    return epoch_bounds(space)[0]


def max_epochs(space: SearchSpace) -> int:
    return epoch_bounds(space)[1]


def make_sampler(config: SweepConfig) -> optuna.samplers.BaseSampler:
    """The sampler the config names, seeded when ``sampler.seed`` is set.

    A seeded TPE, random or GP sampler draws each trial from the seed and the trial's
    number (:mod:`sweeps.policy._per_trial_seed`): the sampler is rebuilt by every process of a
    sweep, and a seed applied once would repeat its draws after a restart or in a second
    worker. CMA-ES draws its random start that way; the grid keeps Optuna's own seeding (it
    skips points already taken).
    """
    sampler: SamplerConfig = config.sampler
    seed = sampler.seed
    if sampler.kind == "random":
        if seed is None:
            return optuna.samplers.RandomSampler()
        return PerTrialSeedRandomSampler(seed=seed)
    if sampler.kind == "grid":
        return _AskTellGridSampler(_grid(config.search_space), seed=seed)
    if sampler.kind == "gp":
        n_startup = sampler.n_startup_trials or 10
        if seed is None:
            return optuna.samplers.GPSampler(n_startup_trials=n_startup)
        return PerTrialSeedGPSampler(seed=seed, n_startup_trials=n_startup)
    if sampler.kind == "cmaes":
        n_startup = sampler.n_startup_trials or 1
        if seed is None:
            return optuna.samplers.CmaEsSampler(n_startup_trials=n_startup)
        return PerTrialSeedCmaEsSampler(seed=seed, n_startup_trials=n_startup)
    n_startup_trials = sampler.n_startup_trials or 10
    if sampler.start == "stratified":
        if seed is None:
            return StratifiedStartTPESampler(n_startup_trials=n_startup_trials)
        return PerTrialSeedStratifiedTPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if seed is None:
        return optuna.samplers.TPESampler(n_startup_trials=n_startup_trials)
    return PerTrialSeedTPESampler(seed=seed, n_startup_trials=n_startup_trials)


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler for ask-and-tell: Optuna's calls ``study.stop()`` once the grid is used
    up, which raises outside ``study.optimize``; the runner stops at the grid size itself."""

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        return None


def _grid(space: SearchSpace) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for name, spec in space.knobs().items():
        if isinstance(spec, (Fixed, FromCurve)):
            continue
        if isinstance(spec, Choices):
            grid[name] = list(spec.choices)
        elif isinstance(spec, IntRange) and not spec.log:
            grid[name] = list(range(spec.low, spec.high + 1, spec.step))
        else:
            raise ConfigError(
                f"search_space.{name}: the grid sampler needs a finite set of values; "
                "give {choices: [...]} or a linear integer range"
            )
    return grid


def grid_size(space: SearchSpace) -> int:
    """How many distinct points a grid over ``space`` has."""
    return math.prod(len(values) for values in _grid(space).values())


def make_pruner(config: SweepConfig) -> optuna.pruners.BasePruner:
    """The pruner the config names. Steps are epochs (1-based)."""
    pruner = config.pruner
    if isinstance(pruner, MedianPrunerConfig):
        return optuna.pruners.MedianPruner(n_startup_trials=pruner.n_startup_trials,
                                           n_warmup_steps=pruner.n_warmup_steps)
    if isinstance(pruner, PatientPrunerConfig):
        return optuna.pruners.PatientPruner(None, patience=pruner.patience,
                                            min_delta=pruner.min_delta)
    if isinstance(pruner, HyperbandPrunerConfig):
        return optuna.pruners.HyperbandPruner(min_resource=pruner.min_resource,
                                              max_resource=max_epochs(config.search_space),
                                              reduction_factor=pruner.reduction_factor)
    if isinstance(pruner, SuccessiveHalvingPrunerConfig):
        # Asynchronous SHA decides at rungs min_epochs * rf^k from the epochs reported so
        # far; the loop cancels the job it prunes (stopping type: nothing is ever paused).
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_epochs, reduction_factor=pruner.reduction_factor,
            min_early_stopping_rate=pruner.min_early_stopping_rate)
    if isinstance(pruner, LeaderGapPrunerConfig):
        return LeaderGapPruner(ratio=pruner.ratio, min_epochs=pruner.min_epochs,
                               spare_catching_up=pruner.spare_catching_up,
                               max_epochs=max_epochs(config.search_space))
    return optuna.pruners.NopPruner()
