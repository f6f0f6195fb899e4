"""Cost policies (issue #11): epochs from the curve, successive halving, warm start, and the
cheapest trial within a tolerance of the best.

The runner drives the in-memory fake backend on a fake clock, with real Optuna SQLite
studies; status and export run through the real CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from typer.testing import CliRunner

from sweeps import _trial_state as ts
from sweeps import load_config
from sweeps.cli import app
from sweeps.config import SweepConfig
from sweeps.cost_frontier import cheapest_within
from sweeps.errors import ConfigError
from sweeps.export import best_config
from sweeps.results import TrialRecord
from sweeps.results import config_results
from sweeps.runner import open_study
from sweeps.runner import run_sweep
from sweeps.search_space import make_pruner
from sweeps.search_space import max_epochs
from sweeps.search_space import min_epochs
from sweeps.search_space import suggest_knobs
from sweeps.tracking import NullTracker
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_dataset
from tests.sweeps_tests.fake_backend import FakeBackend
from tests.sweeps_tests.fake_backend import FakeClock

TrialState = optuna.trial.TrialState
SPACE = {"epochs": {"low": 1, "high": 4},
         "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}}


def run(config: SweepConfig, backend: FakeBackend, clock: FakeClock) -> Any:
    return run_sweep(config, backend=backend, tracker=NullTracker(), clock=clock,
                     sleep=clock.sleep)


def from_curve(max_epochs: int) -> dict[str, Any]:
    return {**SPACE, "epochs": {"mode": "from_curve", "max": max_epochs}}


# --- epochs from the curve -------------------------------------------------------------------


def test_from_curve_runs_max_epochs_and_recommends_the_plateau_epoch(make_config, clock):
    config = make_config(n_trials=3, concurrency=1, search_space=from_curve(8))
    backend = FakeBackend(clock=clock)
    result = run(config, backend, clock)

    assert result.n_complete == 3
    assert [job.request.epochs for job in backend.jobs.values()] == [8, 8, 8]
    for trial in open_study(config).get_trials():
        assert "epochs" not in trial.params  # not searched: no epochs column to learn from
        plateau = trial.user_attrs["plateau_epoch"]
        assert 1 <= plateau < 8  # the fake's curve flattens well before epoch 8
        assert trial.user_attrs["recommended_epochs"] == plateau
        assert trial.user_attrs["epochs_mode"] == "from_curve"
    exported = best_config(config, config_results(config))
    assert exported.knobs["epochs"] == exported.trial.plateau_epoch
    assert exported.recommendation.epochs_run == 8
    assert any("from_curve" in note and "learning-rate schedule" in note
               for note in exported.recommendation.notes)


def test_from_curve_sets_the_budget_and_grid_to_max_epochs(make_config) -> None:
    config = make_config(search_space=from_curve(6))
    assert min_epochs(config.search_space) == max_epochs(config.search_space) == 6
    knobs = suggest_knobs(optuna.trial.FixedTrial({"learning_rate_multiplier": 1.0}),
                          config.search_space)
    assert knobs == {"epochs": 6, "learning_rate_multiplier": 1.0}


# --- successive halving ----------------------------------------------------------------------


@pytest.mark.parametrize("min_epochs_before_cancel", [2, 3])
def test_successive_halving_cancels_a_hopeless_job_at_min_epochs_never_before(
        make_config, clock, min_epochs_before_cancel: int) -> None:
    config = make_config(n_trials=3, concurrency=1, search_space={
        "epochs": {"value": 6},
        "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
        pruner={"kind": "successive_halving", "min_epochs": min_epochs_before_cancel,
                "reduction_factor": 2})
    pruner = make_pruner(config)
    assert isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner)
    study = open_study(config)
    # 8.0 is far worse than 1.5 from its first epoch; 1.0 is better (SHA keeps the top half)
    for multiplier in (1.5, 8.0, 1.0):
        study.enqueue_trial({"learning_rate_multiplier": multiplier})
    backend = FakeBackend(clock=clock)
    result = run(config, backend, clock)

    trials = open_study(config).get_trials()
    hopeless = trials[1]
    assert hopeless.state is TrialState.PRUNED
    assert backend.cancels == [hopeless.user_attrs[ts.ATTR_KEY]]
    # Worse at every epoch, yet it ran exactly min_epochs before the cancel.
    assert max(hopeless.intermediate_values) == min_epochs_before_cancel
    assert hopeless.user_attrs["training_tokens"] < trials[0].user_attrs["training_tokens"]
    assert trials[0].state is TrialState.COMPLETE and trials[2].state is TrialState.COMPLETE
    assert result.n_pruned == 1


# --- warm start ------------------------------------------------------------------------------


def _sweep(folder: Path, **overrides: Any) -> SweepConfig:
    folder.mkdir(parents=True, exist_ok=True)
    return load_config(write_config(folder, **overrides))


def test_warm_start_seeds_only_same_dataset_trials_which_do_not_count(tmp_path, clock):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    base = {"search_space": SPACE, "concurrency": 1, "sampler": {"kind": "tpe", "seed": 1}}
    same = _sweep(tmp_path / "earlier", name="earlier", n_trials=3, **base)
    run(same, FakeBackend(clock=clock), clock)
    (tmp_path / "other").mkdir()
    write_dataset(tmp_path / "other", n_examples=30)  # another dataset: another hash
    other = _sweep(tmp_path / "other", name="other-data", n_trials=2, storage=shared, **base)
    run(other, FakeBackend(clock=clock), clock)

    config = _sweep(tmp_path / "now", name="now", n_trials=2, storage=shared,
                    warm_start=[str(tmp_path / "earlier" / "sweep.yaml"), "other-data"],
                    **base)
    backend = FakeBackend(clock=clock)
    result = run(config, backend, clock)

    trials = open_study(config).get_trials()
    copies = [t for t in trials if ts.is_warm_start(t)]
    assert sorted(t.user_attrs[ts.ATTR_WARM_START_FROM] for t in copies) == [
        "earlier#0", "earlier#1", "earlier#2"]
    assert len(backend.submits) == 2  # n_trials new jobs; the copies are never re-run
    assert result.n_complete == 2 and result.best_number not in {t.number for t in copies}
    results = config_results(config)
    assert results.counts() == {"WARM_START": 3, "COMPLETE": 2}
    assert results.best is not None and not results.best.is_warm_start

    again = run(config.model_copy(update={"n_trials": 3}), backend, clock)  # resume: +1
    assert len(backend.submits) == 3 and again.n_complete == 3
    assert sum(ts.is_warm_start(t) for t in open_study(config).get_trials()) == 3


def test_warm_start_from_an_unknown_study_is_a_config_error_naming_it(tmp_path, clock):
    config = _sweep(tmp_path / "now", name="now", warm_start=["no-such-sweep"])
    open_study(config)  # the storage exists, the named study does not
    backend = FakeBackend(clock=clock)
    with pytest.raises(ConfigError, match=r"warm_start\[0\] \(no-such-sweep\)"):
        run(config, backend, clock)
    assert backend.submits == []


# --- cheapest within tolerance ---------------------------------------------------------------


def _record(number: int, value: float, tokens: int, *, epochs: int = 4,
            recommended: int = 4) -> TrialRecord:
    return TrialRecord(number=number, state="COMPLETE", knobs={"epochs": epochs},
                       value=value, training_tokens=tokens, epochs_completed=epochs,
                       recommended_epochs=recommended)


def test_cheapest_within_tolerance_prices_the_recommended_epochs() -> None:
    best = _record(0, 1.00, 4000)
    near = _record(1, 1.015, 4000, recommended=2)  # 1.5% worse, half the epochs
    cheap_but_bad = _record(2, 1.10, 1000, epochs=1, recommended=1)
    pick = cheapest_within([best, near, cheap_but_bad], best, tolerance=0.02)
    assert pick is not None
    assert (pick.number, pick.tokens, pick.best_tokens) == (1, 2000, 4000)
    assert "cheapest within 2% of the best: trial 1, tokens 2,000 (vs best's 4,000)" \
        in pick.describe()
    only_best = cheapest_within([best, near], best, tolerance=0.01)
    assert only_best is not None and only_best.is_best


def test_status_and_export_show_the_cheapest_trial_within_tolerance(tmp_path, clock):
    config_path = write_config(tmp_path, n_trials=4, concurrency=1, cost_tolerance=0.5,
                               search_space=SPACE)
    config = load_config(config_path)
    study = open_study(config)
    for epochs, multiplier in ((4, 1.0), (2, 1.2), (1, 9.0), (3, 1.0)):
        study.enqueue_trial({"epochs": epochs, "learning_rate_multiplier": multiplier})
    run(config, FakeBackend(clock=clock), clock)
    results = config_results(config)
    assert results.cheapest is not None and results.best is not None
    records = {r.number: r for r in results.trials}
    within = [r for r in records.values()
              if r.value is not None and r.value <= results.best.value * 1.5]
    assert results.cheapest.tokens == min(
        r.training_tokens // r.epochs_completed * r.recommended_epochs for r in within)

    status = CliRunner().invoke(app, ["status", str(config_path)])
    assert status.exit_code == 0, status.output
    assert f"cheapest within 50% of the best: trial {results.cheapest.number}" \
        in " ".join(status.output.split())
    exported = CliRunner().invoke(app, ["export", str(config_path), "--format", "json"])
    assert exported.exit_code == 0, exported.output
    assert f'"trial": {results.cheapest.number}' in exported.output
    assert "cheapest_within_tolerance" in exported.output
