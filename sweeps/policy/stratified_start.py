"""TPE whose random start is a Latin hypercube instead of independent draws.

A sweep's first trials are random (TPE needs some history before it can model anything).
Independent draws clump: six of them leave out one of three batch sizes in a quarter of
sweeps (3 x (2/3)^6), and take one multiplier from each sixth of its range in 1.5% only
(6!/6^6); TPE then refines what it was shown, not having seen the rest. Here the
``n_startup_trials`` first trials split every searched knob's range into as many equal
strata (in log space for a log range) and each trial takes a different stratum of each
knob, in an order shuffled per knob, at a random point inside it. A categorical knob's
choices are shared out evenly the same way. After the start, it is Optuna's TPE unchanged.

The stratum a trial takes is fixed by its number in the study, so trials asked at the same
time (``concurrency`` > 1) take different strata; a trial past the start whose TPE model is
not ready yet (earlier ones still running) gets an independent draw, as TPE does. Trials
copied in by ``warm_start`` take the first numbers and count as start trials: with
``n_startup_trials`` of them, TPE models from the first new trial.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution


class StratifiedStartTPESampler(optuna.samplers.TPESampler):
    def __init__(self, *, seed: int | None = None, n_startup_trials: int = 10) -> None:
        super().__init__(seed=seed, n_startup_trials=n_startup_trials)
        self._seed = seed
        self._strata = n_startup_trials

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                           param_name: str, param_distribution: BaseDistribution) -> Any:
        # Numbers below n_startup_trials leave fewer trials than that before this one, so
        # TPE's own start rule (fewer finished than n_startup_trials) holds here too.
        if trial.number < self._strata:
            return self._stratified(study, trial.number, param_name, param_distribution)
        return super().sample_independent(study, trial, param_name, param_distribution)

    def _stratified(self, study: optuna.Study, number: int, name: str,
                    distribution: BaseDistribution) -> Any:
        # One shuffle per knob for the whole start, the same in every worker of a
        # distributed sweep: seeded by the sweep's seed (else its study name) and the knob's
        # name, through crc32 (Python's str hash differs per process).
        start = self._seed if self._seed is not None else zlib.crc32(study.study_name.encode())
        knob = zlib.crc32(name.encode())
        stratum = np.random.default_rng([start, knob]).permutation(self._strata)[number]
        inside = np.random.default_rng([start, knob, number]).random()
        unit = (stratum + inside) / self._strata  # in [0, 1): where in the knob's range
        return _at(unit, distribution)


def _at(unit: float, distribution: BaseDistribution) -> Any:
    """The value ``unit`` (in [0, 1)) of the way through the distribution's range."""
    if isinstance(distribution, CategoricalDistribution):
        return distribution.choices[int(unit * len(distribution.choices))]
    if isinstance(distribution, IntDistribution) and not distribution.log:
        # Each integer gets an equal share of the unit interval, ``high`` included.
        n_values = (distribution.high - distribution.low) // distribution.step + 1
        return distribution.low + distribution.step * int(unit * n_values)
    if not isinstance(distribution, (FloatDistribution, IntDistribution)):
        raise TypeError(f"no stratified start for {type(distribution).__name__}")
    low, high = distribution.low, distribution.high
    if distribution.log:
        value = math.exp(math.log(low) + unit * (math.log(high) - math.log(low)))
    else:
        value = low + unit * (high - low)
    if isinstance(distribution, IntDistribution):  # a log integer range
        return min(high, round(value))
    if distribution.step is not None:
        return min(high, low + distribution.step * round((value - low) / distribution.step))
    return value
