"""Seeded samplers that draw each trial from the sweep's seed *and the trial's number*.

Optuna seeds a sampler once, when it is built. A sweep rebuilds its sampler in every process
(each ``gemini-sweep run`` after a kill, each worker of a distributed sweep), so a seeded
sampler replayed the same random draws there: 30 kills of a 12-trial sweep trained only 5
distinct configurations, and two workers side by side proposed the same ones. Here the random
state is set again before each draw from ``(seed, trial number, knob)``. Trial numbers are
never reused within a study, so a restart or a second worker continues the sequence instead of
repeating it, and a sweep run again from scratch with the same seed proposes the same trials.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from sweeps.policy.stratified_start import StratifiedStartTPESampler

#: The attributes that hold a sampler's random state, or a sampler it delegates draws to.
_RANDOM_STATES = ("_rng",)
_INNER_SAMPLERS = ("_random_sampler", "_independent_sampler")


def reseed(sampler: optuna.samplers.BaseSampler, entropy: Sequence[int]) -> None:
    """Set the random state of ``sampler`` and of the samplers it delegates to."""
    for name in _RANDOM_STATES:
        state = getattr(sampler, name, None)
        if state is not None and hasattr(state, "rng"):
            state.rng.seed(list(entropy))
    for name in _INNER_SAMPLERS:
        inner = getattr(sampler, name, None)
        if isinstance(inner, optuna.samplers.BaseSampler):
            reseed(inner, entropy)


class PerTrialSeed(optuna.samplers.BaseSampler):
    """Mixin (first base) for a seeded Optuna sampler; see the module docstring."""

    def __init__(self, *args: Any, seed: int, **kwargs: Any) -> None:
        super().__init__(*args, seed=seed, **kwargs)  # type: ignore[call-arg]
        self._sweep_seed = seed
        self._draw_lock = threading.Lock()  # a reseed and its draw belong together

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        with self._draw_lock:
            reseed(self, (self._sweep_seed, trial.number))
            return super().sample_relative(  # type: ignore[safe-super]
                study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                           param_name: str, param_distribution: BaseDistribution) -> Any:
        with self._draw_lock:
            # crc32, not hash(): the same in every process.
            reseed(self, (self._sweep_seed, trial.number, zlib.crc32(param_name.encode())))
            return super().sample_independent(  # type: ignore[safe-super]
                study, trial, param_name, param_distribution)


class PerTrialSeedTPESampler(PerTrialSeed, optuna.samplers.TPESampler):
    pass


class PerTrialSeedStratifiedTPESampler(PerTrialSeed, StratifiedStartTPESampler):
    pass


class PerTrialSeedRandomSampler(PerTrialSeed, optuna.samplers.RandomSampler):
    pass


class PerTrialSeedGPSampler(PerTrialSeed, optuna.samplers.GPSampler):
    pass


class PerTrialSeedCmaEsSampler(PerTrialSeed, optuna.samplers.CmaEsSampler):
    """Only its random start (the independent sampler) is drawn per trial: CMA-ES keeps its
    own generator for the population, which it stores in the study."""


__all__ = ["PerTrialSeed", "PerTrialSeedCmaEsSampler", "PerTrialSeedGPSampler",
           "PerTrialSeedRandomSampler", "PerTrialSeedStratifiedTPESampler",
           "PerTrialSeedTPESampler", "reseed"]
