"""Cost policies: epochs from the curve, successive halving, warm start, and the
cheapest trial within a tolerance of the best.

The runner drives the in-memory fake backend on a fake clock, with real Optuna SQLite
studies; status and export run through the real CLI.
"""

from __future__ import annotations

import json
import math
import os
import runpy
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from gemini_backend import Capabilities
from gemini_backend import JobRequest
from gemini_backend import LossSnapshot
from gemini_backend.replay.backend import ReplayBackend
from sweeps import load_config
from sweeps import trial_record as ts
from sweeps.cli import app
from sweeps.config.schema import SweepConfig
from sweeps.engine.runner import open_study
from sweeps.engine.runner import run_sweep
from sweeps.errors import ConfigError
from sweeps.policy.fidelity import plateau_passed
from sweeps.policy.pruners import LeaderGapPruner
from sweeps.policy.search_space import make_pruner
from sweeps.policy.search_space import max_epochs
from sweeps.policy.search_space import min_epochs
from sweeps.policy.search_space import suggest_knobs
from sweeps.results.cost_frontier import cheapest_within
from sweeps.results.export import best_config
from sweeps.results.sweep_results import TrialRecord
from sweeps.results.sweep_results import config_results
from sweeps.tracking.tracker import NullTracker
from tests._warm_runs import run_warm
from tests.conftest import REPO_ROOT
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
    # Said once: a second note repeating the caveat is noise a user reads twice.
    assert sum("learning-rate schedule" in note for note in exported.recommendation.notes) == 1


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


# --- cancel only the jobs far behind the leader -------------------------------------------


def test_behind_leader_cancels_the_far_behind_and_keeps_the_slightly_behind(make_config, clock):
    # 8.0 trails the leader (1.0) several-fold from epoch 1; 1.1 trails by ~30%, as a late
    # learner does. Successive halving (keep the top half) cancels both; behind_leader keeps 1.1.
    outcomes = {}
    for name, pruner in [("sha", {"kind": "successive_halving", "reduction_factor": 2}),
                         ("gap", {"kind": "behind_leader", "ratio": 2.0, "min_epochs": 2})]:
        config = make_config(name=name, n_trials=3, concurrency=1, pruner=pruner,
                             search_space={**SPACE, "epochs": {"value": 5}})
        study = open_study(config)
        for multiplier in (1.0, 1.1, 8.0):
            study.enqueue_trial({"learning_rate_multiplier": multiplier})
        backend = FakeBackend(clock=clock)
        run(config, backend, clock)
        outcomes[name] = [(t.state, max(t.intermediate_values)) for t in open_study(config).trials]
    assert outcomes["sha"][1][0] is TrialState.PRUNED
    assert outcomes["gap"] == [(TrialState.COMPLETE, 5), (TrialState.COMPLETE, 5),
                               (TrialState.PRUNED, 2)]  # cancelled at min_epochs, not before


def test_behind_leader_compares_losses_in_a_maximized_study_too() -> None:
    pruner = LeaderGapPruner(ratio=1.5, min_epochs=1)
    study = optuna.create_study(direction="maximize", pruner=pruner)  # eval_* objective
    leader = study.ask()
    leader.report(-1.0, 1)  # the loop reports -loss when the objective is maximized
    study.tell(leader, 0.9)
    close, far = study.ask(), study.ask()
    close.report(-1.4, 1)
    far.report(-1.6, 1)
    assert not close.should_prune() and far.should_prune()
    with pytest.raises(ValueError, match="ratio"):
        LeaderGapPruner(ratio=1.0)


def _leader_study(pruner: LeaderGapPruner) -> optuna.Study:
    """A study whose finished leader learned fast: 1.0, 0.5, then flat."""
    study = optuna.create_study(pruner=pruner)
    leader = study.ask()
    for epoch, loss in enumerate((1.0, 0.5, 0.45, 0.44), start=1):
        leader.report(loss, epoch)
    study.tell(leader, 0.44)
    return study


def _behind_at_epoch_2(study: optuna.Study, first: float, second: float) -> bool:
    trial = study.ask()
    trial.report(first, 1)
    trial.report(second, 2)
    return trial.should_prune()


def test_behind_leader_spares_a_late_learner_that_is_closing_the_gap() -> None:
    # At epoch 2 both trail the leader (0.5) by 1.6x. The late learner went from 2.0x to
    # 1.6x behind in one epoch: at that pace it catches up well before epoch 8. The slow
    # one went from 1.0x to 1.6x behind: its gap grows, it is cancelled either way.
    sparing = LeaderGapPruner(ratio=1.3, min_epochs=2, spare_catching_up=True, max_epochs=8)
    plain = LeaderGapPruner(ratio=1.3, min_epochs=2)
    late, slow = (2.0, 0.8), (1.0, 0.8)
    assert not _behind_at_epoch_2(_leader_study(sparing), *late)
    assert _behind_at_epoch_2(_leader_study(plain), *late)
    assert _behind_at_epoch_2(_leader_study(sparing), *slow)


def test_behind_leader_cancels_a_late_learner_that_cannot_catch_up_in_its_epochs() -> None:
    # Closing the gap by a factor 1.25 an epoch, 1.6x behind needs about 2 more epochs:
    # a 3-epoch job has 1 left, an 8-epoch job has 6.
    short = LeaderGapPruner(ratio=1.3, min_epochs=2, spare_catching_up=True, max_epochs=3)
    long_ = LeaderGapPruner(ratio=1.3, min_epochs=2, spare_catching_up=True, max_epochs=8)
    assert _behind_at_epoch_2(_leader_study(short), 2.0, 0.8)
    assert not _behind_at_epoch_2(_leader_study(long_), 2.0, 0.8)
    with pytest.raises(ValueError, match="max_epochs"):
        LeaderGapPruner(spare_catching_up=True)


class NoValidationFake(FakeBackend):
    """A backend that reports training loss only, as the Gemini API does."""

    @property
    def capabilities(self) -> Capabilities:
        return replace(super().capabilities, has_validation_loss=False)

    def _snapshots(self, request: JobRequest, count: int) -> tuple[LossSnapshot, ...]:
        return tuple(replace(s, eval_loss=None) for s in super()._snapshots(request, count))


def test_behind_leader_cancels_on_training_loss_when_the_backend_reports_no_validation(
        make_config, clock) -> None:
    # A validation split is set, but the backend never reports a validation loss: the pruner
    # must read training loss (as the trial is scored), not wait for one that never comes.
    config = make_config(n_trials=2, concurrency=1, dataset={"path": "data.jsonl",
                                                             "validation_split": 0.25},
                         pruner={"kind": "behind_leader", "ratio": 2.0, "min_epochs": 2},
                         search_space={**SPACE, "epochs": {"value": 5}})
    study = open_study(config)
    for multiplier in (1.0, 8.0):
        study.enqueue_trial({"learning_rate_multiplier": multiplier})
    run(config, NoValidationFake(clock=clock), clock)

    states = [(t.state, max(t.intermediate_values)) for t in open_study(config).trials]
    assert states == [(TrialState.COMPLETE, 5), (TrialState.PRUNED, 2)]


# --- from_curve patience: stop a job once its plateau is behind it --------------------------


def _overfitting_record(multiplier: float, best_epoch: int, *, best: float, epochs: int = 8,
                        steps_per_epoch: int = 2) -> dict[str, Any]:
    """A recorded job whose validation loss is lowest at ``best_epoch`` and rises after."""
    curve = []
    for step in range(1, epochs * steps_per_epoch + 1):
        epoch = (step - 1) // steps_per_epoch + 1
        point: dict[str, Any] = {"step": step, "epoch": epoch, "loss": round(3.0 / step, 4)}
        if step % steps_per_epoch == 0:
            point["eval_loss"] = best + 0.1 * abs(epoch - best_epoch)
        curve.append(point)
    return {"params": {"epochs": epochs, "learning_rate_multiplier": multiplier},
            "curve": curve, "duration_s": float(epochs), "tokens_per_epoch": 1000}


def _patience_config(folder: Path, **overrides: Any) -> SweepConfig:
    folder.mkdir(parents=True, exist_ok=True)
    curves = [_overfitting_record(1.0, best_epoch=3, best=1.0),
              _overfitting_record(5.0, best_epoch=8, best=1.3)]
    (folder / "curves.json").write_text(json.dumps(curves), encoding="utf-8")
    data: dict[str, Any] = dict(
        name="patience", dataset={"path": "data.jsonl", "validation_split": 0.25},
        backend={"kind": "replay", "curves": "curves.json", "time_scale": 0.5},
        search_space={"epochs": {"mode": "from_curve", "max": 8, "patience": 2},
                      "learning_rate_multiplier": {"choices": [1.0, 5.0]}},
        sampler={"kind": "grid"}, n_trials=2, concurrency=1)
    data.update(overrides)
    return load_config(write_config(folder, **data))


def test_patience_stops_a_job_past_its_plateau_and_completes_its_trial(tmp_path) -> None:
    config = _patience_config(tmp_path)
    clock = FakeClock()
    backend = ReplayBackend(config.backend, base_dir=tmp_path, clock=clock)  # type: ignore[arg-type]
    result = run_sweep(config, backend=backend, tracker=NullTracker(), clock=clock,
                       sleep=clock.sleep)

    assert result.n_complete == 2 and result.n_pruned == 0
    by_multiplier = {t.params["learning_rate_multiplier"]: t for t in open_study(config).trials}
    early, late = by_multiplier[1.0], by_multiplier[5.0]
    assert early.user_attrs["stopped_after_epoch"] == 5  # best at 3, then 2 epochs worse
    # Cancelled when epoch 5's validation loss arrived, not a poll into epoch 6 (paid for).
    assert 5 * 1000 <= early.user_attrs["training_tokens"] < 5.5 * 1000
    assert early.user_attrs["plateau_epoch"] <= 3
    assert early.user_attrs["training_tokens"] < late.user_attrs["training_tokens"]
    assert "stopped_after_epoch" not in late.user_attrs and late.user_attrs["plateau_epoch"] == 8
    export = best_config(config, config_results(config))
    assert export.trial.number == early.number
    assert any("stopped early" in note and "epochs = " in note
               for note in export.recommendation.notes)
    status = CliRunner().invoke(app, ["status", str(tmp_path / "sweep.yaml"), "--json"])
    assert status.exit_code == 0, status.output
    stopped = {t["number"]: t["stopped_after_epoch"] for t in json.loads(status.output)["trials"]}
    assert stopped == {early.number: 5, late.number: None}


def test_patience_lets_a_slowly_improving_tail_run_and_stops_a_worsening_one() -> None:
    # 0.2% better each epoch is within the plateau rule's tolerance of epoch 3, but such
    # gains add up: a job is stopped only after `patience` epochs with no new best at all.
    creeping = {1: 3.0, 2: 2.0, 3: 1.5, 4: 1.497, 5: 1.494}
    assert not plateau_passed(creeping, 2)
    worsening = {1: 3.0, 2: 2.0, 3: 1.5, 4: 1.52, 5: 1.55}
    assert plateau_passed(worsening, 2)
    assert not plateau_passed({e: worsening[e] for e in (1, 2, 3, 4)}, 2)
    assert not plateau_passed(worsening, None)


def test_a_job_stopped_at_its_plateau_before_a_crash_completes_on_resume(tmp_path) -> None:
    # SIGKILL while the stopped trial's run is half written: the rerun finds the job
    # CANCELLED and completes the trial from its curve; it neither fails nor pays again.
    config = _patience_config(tmp_path, n_trials=1, sampler={"kind": "random", "seed": 0},
                              search_space={"epochs": {"mode": "from_curve", "max": 8,
                                                       "patience": 2},
                                            "learning_rate_multiplier": {"value": 1.0}})
    argv = ["run", str(tmp_path / "sweep.yaml"), "-q"]
    crashed = run_warm(argv, cwd=tmp_path, timeout_s=300,
                       env={**os.environ, "GEMINI_SWEEP_CRASH_AT": "mid_record:1"})
    assert crashed.returncode == -9, crashed.stdout[-2000:]
    resumed = run_warm(argv, cwd=tmp_path, timeout_s=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:]

    (trial,) = open_study(config).trials
    assert trial.state is TrialState.COMPLETE
    assert trial.user_attrs["stopped_after_epoch"] == 5
    jobs = ReplayBackend.submission_log(tmp_path / ".gemini_sweep" / "replay_jobs")
    assert len(jobs) == 1


def test_a_job_pruned_mid_epoch_keeps_the_validation_loss_of_the_epochs_that_ended(
        tmp_path, seed_mlflow) -> None:
    # The pruner acts at a poll, when the next epoch has often begun; that epoch has no
    # validation loss yet, and must not cost the record the epochs that ended before it.
    config = _patience_config(
        tmp_path, search_space={"epochs": {"mode": "from_curve", "max": 8},
                                "learning_rate_multiplier": {"choices": [1.0, 5.0]}},
        pruner={"kind": "behind_leader", "ratio": 1.2, "min_epochs": 2},
        poll_interval_s=0.3)  # 0.5 s an epoch: polls land inside epochs
    curves = [_overfitting_record(m, best_epoch=8, best=best, steps_per_epoch=10)
              for m, best in ((1.0, 1.0), (5.0, 2.0))]
    (tmp_path / "curves.json").write_text(json.dumps(curves), encoding="utf-8")
    seed_mlflow(config)
    for multiplier in (1.0, 5.0):  # the leader first
        open_study(config).enqueue_trial({"learning_rate_multiplier": multiplier})
    clock = FakeClock()
    backend = ReplayBackend(config.backend, base_dir=tmp_path, clock=clock)  # type: ignore[arg-type]
    run_sweep(config, backend=backend, clock=clock, sleep=clock.sleep)

    pruned = next(t for t in open_study(config).trials if t.state is TrialState.PRUNED)
    assert pruned.params["learning_rate_multiplier"] == 5.0
    assert pruned.user_attrs["training_tokens"] > 1000 * max(pruned.intermediate_values)
    client = MlflowClient(tracking_uri=config.tracking_url)
    history = client.get_metric_history(pruned.user_attrs[ts.ATTR_RUN_ID], "eval_loss_epoch")
    assert {m.step: m.value for m in history} == pytest.approx(pruned.intermediate_values)


def _cancelled_outside_the_sweep(tmp_path: Path, seed_mlflow: Any, record: dict[str, Any], *,
                                 after_epochs: float) -> dict[str, list[tuple[int, float]]]:
    """Run one replay job that someone cancels in the console (or the service fails)
    ``after_epochs`` epochs in; return its MLflow run's per-epoch curves."""
    config = _patience_config(
        tmp_path, search_space={"epochs": {"mode": "from_curve", "max": 8},
                                "learning_rate_multiplier": {"value": 1.0}},
        sampler={"kind": "tpe"}, n_trials=1, poll_interval_s=0.3)
    (tmp_path / "curves.json").write_text(json.dumps([record]), encoding="utf-8")
    seed_mlflow(config)
    clock = FakeClock()
    backend = ReplayBackend(config.backend, base_dir=tmp_path, clock=clock)  # type: ignore[arg-type]
    submitted: list[Any] = []
    submit = backend.submit

    def submit_and_keep_the_ref(request: JobRequest) -> Any:
        submitted.append(submit(request))
        return submitted[-1]

    backend.submit = submit_and_keep_the_ref  # type: ignore[method-assign]
    started_s = clock()

    def sleep_then_cancel(seconds: float) -> None:
        clock.sleep(seconds)
        if clock() - started_s > after_epochs * 0.5:  # 0.5 s an epoch
            backend.cancel(submitted[0])

    run_sweep(config, backend=backend, clock=clock, sleep=sleep_then_cancel)

    [failed] = open_study(config).trials
    assert failed.state is TrialState.FAIL
    assert "cancelled outside the sweep" in failed.user_attrs["fail_reason"]
    client = MlflowClient(tracking_uri=config.tracking_url)
    run_id = failed.user_attrs[ts.ATTR_RUN_ID]
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
            for key in ("train_loss_epoch", "eval_loss_epoch")}


def test_a_job_cancelled_outside_the_sweep_mid_epoch_keeps_its_validation_curve(
        tmp_path, seed_mlflow) -> None:
    # Cancelled inside epoch 3: the record still shows the validation loss of epochs 1 and
    # 2, which is what the user opens the failed trial's run to look at.
    record = _overfitting_record(1.0, best_epoch=8, best=1.0, steps_per_epoch=10)
    curves = _cancelled_outside_the_sweep(tmp_path, seed_mlflow, record, after_epochs=2.4)
    assert dict(curves["eval_loss_epoch"]) == pytest.approx({1: 1.7, 2: 1.6})
    assert [epoch for epoch, _ in curves["train_loss_epoch"]] == [1, 2]


def test_a_job_validated_every_other_epoch_keeps_every_training_epoch_when_cancelled(
        tmp_path, seed_mlflow) -> None:
    # A service that does not evaluate every epoch gives no per-epoch validation curve;
    # the epochs after the last evaluation are not dropped to make one.
    record = _overfitting_record(1.0, best_epoch=8, best=1.0, steps_per_epoch=10)
    for point in record["curve"]:
        if point["epoch"] % 2:
            point.pop("eval_loss", None)
    curves = _cancelled_outside_the_sweep(tmp_path, seed_mlflow, record, after_epochs=4.6)
    assert curves["eval_loss_epoch"] == []
    assert [epoch for epoch, _ in curves["train_loss_epoch"]] == [1, 2, 3, 4, 5]


def test_patience_with_evaluation_is_refused_naming_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="patience"):
        _patience_config(tmp_path, evaluation={"enabled": True, "metrics": ["exact_match"]},
                         objective="eval_exact_match")


# --- the shipped default is the policy the benchmark measured -------------------------------


def _cost_benchmark() -> dict[str, Any]:
    return runpy.run_path(str(REPO_ROOT / "benchmarks" / "cost_efficiency.py"),
                          run_name="cost_efficiency")


@pytest.mark.parametrize("name", ["quickstart.yaml", "vertex.yaml", "replay.yaml"])
def test_shipped_configs_use_the_policy_the_cost_benchmark_measures(name: str) -> None:
    # The README quotes benchmarks/cost_efficiency.py's "policy" row as what the shipped
    # configs do: epochs from the curve, patience, the pruner and TPE's stratified start.
    bench = _cost_benchmark()
    policy = bench["METHODS"]["policy"]
    shipped = yaml.safe_load((REPO_ROOT / "configs" / name).read_text(encoding="utf-8"))

    assert shipped["search_space"]["epochs"] == policy["epochs"]
    assert shipped["pruner"] == policy["pruner"]
    chosen = bench["CANDIDATES"]["no-pruner/no-patience/start6"]  # chosen on every set
    assert policy["sampler"] == chosen["sampler"] and "pruner" not in chosen
    assert policy["epochs"] == {**chosen["epochs"], "max": 8}
    assert shipped["sampler"]["kind"] == policy["sampler"].get("kind", "tpe")
    assert shipped["sampler"]["n_startup_trials"] == policy["sampler"]["n_startup_trials"]
    assert shipped["sampler"]["start"] == policy["sampler"]["start"]


def test_the_benchmark_summary_makes_a_method_that_misses_a_cell_infinite() -> None:
    # The default is chosen by the benchmark's geometric mean over every cell: a policy
    # that never reaches the target on one dataset must not look cheap because of the others.
    bench = _cost_benchmark()
    geomean = bench["_geomean"]

    assert geomean([0.25, 1.0]) == pytest.approx(0.5)
    assert geomean([0.25, float("inf")]) == float("inf")
    assert bench["_fmt_ratio"](geomean([0.25, float("inf")])) == "inf (a cell not reached)"
    assert bench["_fmt_ratio"](geomean([0.25, float("nan")])) == "n/a"


def test_the_benchmark_bills_jobs_still_running_when_a_trial_finishes() -> None:
    # With concurrency > 1 a sweep that stops at its first near-best trial still pays for
    # what the other jobs in flight trained: the benchmark must count it for every method.
    bench = _cost_benchmark()

    def pruned(number: int, tokens: int, started_s: float, finished_s: float):
        outcome = ts.TrialOutcome(number=number, state=optuna.trial.TrialState.PRUNED,
                                  knobs={}, key=f"k{number}", job_ref=None, snapshots=(),
                                  training_tokens=tokens)
        return bench["FinishedTrial"](outcome, started_s, finished_s)

    first, second = pruned(0, 1000, 0.0, 10.0), pruned(1, 3000, 5.0, 20.0)
    trace = bench["trace_of"]([first, second], truth=None)

    # At t=10 the second job has run 5 of its 15 s: a third of its 3000 tokens.
    assert [tokens for tokens, _ in trace.points] == [pytest.approx(2000.0), 4000.0]
    assert trace.n_pruned == 2


def test_the_oracle_bound_cancels_every_trial_before_the_one_that_reaches_the_target() -> None:
    # --oracle-bound says whether better pruning alone could reach a ratio: it must charge
    # the earlier trials 2 epochs each, whatever they ran, and the reaching one its plateau.
    bench = _cost_benchmark()
    complete, pruned = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED

    def finished(number: int, state, epochs: int, tokens: int, *, value=None, plateau=None):
        outcome = ts.TrialOutcome(number=number, state=state, knobs={}, key=f"k{number}",
                                  job_ref=None, snapshots=(), eval_epoch_loss=(2.0,) * epochs,
                                  value=value, plateau_epoch=plateau, training_tokens=tokens)
        return bench["FinishedTrial"](outcome, float(number), float(number) + 1.0)

    class ValueIsQuality:  # stands in for the recorded curves: a trial is worth its value
        def quality(self, outcome, epoch):
            return outcome.value, outcome.value

    trace = bench["trace_of"]([
        finished(0, complete, 8, 8000, value=1.5, plateau=6),  # 1000 tokens an epoch
        finished(1, pruned, 2, 3400),  # cancelled 1.4 epochs after its second ended
        finished(2, complete, 6, 6000, value=1.0, plateau=4),
    ], truth=ValueIsQuality())

    assert trace.tokens_to(1.0, 0) == 17400  # what the sweep paid
    assert trace.oracle_bound_to(1.0, 0) == 2000 + 2000 + 4000
    assert trace.oracle_bound_to(1.5, 0) == 6000  # the first trial alone, to its plateau
    assert trace.oracle_bound_to(0.9, 0) == math.inf


def test_the_random_proposals_bound_charges_misses_two_epochs_and_the_hit_its_plateau() -> None:
    # The scale the oracle bound is read against: a search that knows nothing of the space,
    # with the same perfect pruner, credited only once its incumbent (best objective so far,
    # what export picks) is good enough, as trace_of credits a real sweep.
    bench = _cost_benchmark()
    cost, served = bench["perfect_pruner_cost"], bench["Served"]
    proposals = [served(1000, 6, objective=1.5, quality=(1.5,)),
                 served(1000, 3, objective=1.2, quality=(1.2,)),
                 served(1000, 5, objective=1.3, quality=(0.8,)),  # unlucky run of a good cell
                 served(500, 4, objective=1.0, quality=(1.0,))]

    assert cost(proposals, 1.5, 0) == 6000  # the first proposal, run to its plateau
    assert cost(proposals, 1.2, 0) == 2000 + 3000
    # The third never becomes the incumbent, so its quality of 0.8 is not credited.
    assert cost(proposals, 1.0, 0) == 2000 + 2000 + 2000 + 2000
    assert cost(proposals, 0.9, 0) == math.inf


def test_the_random_proposals_bound_serves_the_recorded_runs_at_their_plateau() -> None:
    bench = _cost_benchmark()
    bench["RANDOM_BOUND_SWEEPS"] = 15  # the function reads the module's global
    bound = bench["random_proposals_bound"]
    truth = bench["_truth"]("digit_sum")
    per_epoch = truth.records[0].tokens_per_epoch
    served = [truth.at_plateau(i) for i in range(len(truth.records))]
    epochs_at_plateau = {proposal.plateau_epoch for proposal in served}

    loosest = bound("all", "digit_sum", math.inf, 0, 40)  # the first proposal always hits
    best_recorded = min(proposal.quality[0] for proposal in served)
    hardest = bound("all", "digit_sum", best_recorded, 0, 40)

    assert loosest / per_epoch in epochs_at_plateau
    assert hardest > loosest  # one run of 72 reaches it: most sweeps pay for misses first
    assert bound("all", "digit_sum", best_recorded - 1e-6, 0, 40) == math.inf
