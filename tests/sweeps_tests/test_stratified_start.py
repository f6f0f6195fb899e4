"""``sampler.start: stratified``: TPE's random start spread over every knob's range."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from sweeps.config.schema import SweepConfig
from sweeps.policy.search_space import make_sampler
from sweeps.policy.search_space import suggest_knobs

STRATA = 6
SPACE = {"epochs": {"value": 4}, "batch_size": {"choices": [8, 16, 32]},
         "learning_rate_multiplier": {"low": 0.3, "high": 10.0, "log": True}}


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _config(make_config, **sampler: Any) -> SweepConfig:
    return make_config(search_space=SPACE,
                       sampler={"kind": "tpe", "n_startup_trials": STRATA, **sampler})


def _start(config: SweepConfig, *, tell: bool = True) -> list[dict[str, Any]]:
    """The knobs of the sweep's first STRATA trials, told in turn or all asked at once."""
    study = optuna.create_study(sampler=make_sampler(config))
    trials = []
    for _ in range(STRATA):
        trial = study.ask()
        trials.append((trial, suggest_knobs(trial, config.search_space)))
        if tell:
            study.tell(trial, 1.0)
    return [knobs for _, knobs in trials]


def _log_stratum(multiplier: float) -> int:
    span = math.log(10.0) - math.log(0.3)
    return int((math.log(multiplier) - math.log(0.3)) / span * STRATA)


@pytest.mark.parametrize("tell", [True, False], ids=["one-at-a-time", "asked-together"])
def test_the_start_takes_every_batch_size_equally_and_every_sixth_of_the_range_once(
        make_config, tell: bool) -> None:
    # Asked together is the concurrency > 1 case: no trial has finished, and still no two
    # trials take the same stratum.
    start = _start(_config(make_config, seed=0, start="stratified"), tell=tell)

    batch_sizes = sorted(knobs["batch_size"] for knobs in start)
    assert batch_sizes == [8, 8, 16, 16, 32, 32]
    strata = sorted(_log_stratum(knobs["learning_rate_multiplier"]) for knobs in start)
    assert strata == list(range(STRATA))
    assert all(0.3 <= knobs["learning_rate_multiplier"] <= 10.0 for knobs in start)


def test_plain_random_start_leaves_gaps_the_stratified_one_fills(make_config) -> None:
    # What the option is for: over many seeds, independent draws often miss a batch size or
    # a sixth of the multiplier range in the first six trials; the stratified start never does.
    def misses(start: list[dict[str, Any]]) -> bool:
        return (len({k["batch_size"] for k in start}) < 3
                or len({_log_stratum(k["learning_rate_multiplier"]) for k in start}) < STRATA)

    random_misses = sum(misses(_start(_config(make_config, seed=seed))) for seed in range(20))
    stratified_misses = sum(misses(_start(_config(make_config, seed=seed, start="stratified")))
                            for seed in range(20))

    assert stratified_misses == 0
    assert random_misses >= 10


def test_the_same_seed_proposes_the_same_start_and_another_seed_another(make_config) -> None:
    first = _start(_config(make_config, seed=7, start="stratified"))

    assert _start(_config(make_config, seed=7, start="stratified")) == first
    assert _start(_config(make_config, seed=8, start="stratified")) != first


def test_after_the_start_the_trials_are_tpes_own(make_config) -> None:
    # The stratified draw is only the start: TPE then concentrates near the best trial told.
    config = _config(make_config, seed=0, start="stratified")
    study = optuna.create_study(sampler=make_sampler(config))
    for _ in range(STRATA + 14):
        trial = study.ask()
        knobs = suggest_knobs(trial, config.search_space)
        distance = abs(math.log(knobs["learning_rate_multiplier"] / 3.0))
        study.tell(trial, distance + (knobs["batch_size"] != 8))
    later = [t.params for t in study.trials[STRATA:]]

    assert sum(p["batch_size"] == 8 for p in later) > len(later) / 2


def test_workers_of_one_distributed_sweep_share_the_start(make_config, tmp_path) -> None:
    # Each worker builds its own sampler; unseeded, they agree on the shuffle through the
    # study name, so trials asked by different workers still take different slices.
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    config = _config(make_config, start="stratified")
    optuna.create_study(study_name="shared", storage=storage)
    workers = [optuna.load_study(study_name="shared", storage=storage,
                                 sampler=make_sampler(config)) for _ in range(2)]
    start = []
    for number in range(STRATA):
        worker = workers[number % 2]
        trial = worker.ask()
        start.append(suggest_knobs(trial, config.search_space))
        worker.tell(trial, 1.0)

    assert sorted(_log_stratum(k["learning_rate_multiplier"]) for k in start) == list(
        range(STRATA))
    assert sorted(k["batch_size"] for k in start) == [8, 8, 16, 16, 32, 32]


def test_a_searched_epoch_count_spans_its_range_in_the_start(make_config) -> None:
    config = make_config(search_space={**SPACE, "epochs": {"low": 1, "high": 8}},
                         sampler={"kind": "tpe", "n_startup_trials": STRATA, "seed": 3,
                                  "start": "stratified"})
    epochs = [knobs["epochs"] for knobs in _start(config)]

    assert all(isinstance(e, int) and 1 <= e <= 8 for e in epochs)
    assert min(epochs) <= 2 and max(epochs) >= 7
