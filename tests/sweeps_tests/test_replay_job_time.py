"""A replay in simulated job time makes the same sweep at any time_scale.

configs/replay.yaml as shipped (the replay backend's default clock, ``simulated``; a seeded
sampler) is run at time_scale 0.1 and 1.0 with the real replay backend and a real Optuna
study: the trials, their knobs, how each ended (pruned at which epoch, stopped past its
plateau) and the tokens each was billed must be equal, and the sweep must prune and stop
trials, or the comparison would prove nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import yaml

from sweeps import load_config
from sweeps import trial_record as ts
from sweeps.engine.runner import open_study
from sweeps.engine.runner import run_sweep
from sweeps.tracking.tracker import NullTracker

TrialState = optuna.trial.TrialState


def replay_demo(folder: Path, repo_root: Path, *, time_scale: float) -> list:
    """Run configs/replay.yaml (with a pruner and patience) in ``folder`` at ``time_scale``:
    each trial's record."""
    shutil.copytree(repo_root / "configs" / "data", folder / "data")
    data = yaml.safe_load((repo_root / "configs" / "replay.yaml").read_text(encoding="utf-8"))
    data["backend"]["time_scale"] = time_scale
    # The shipped policy cancels nothing early; a pruner and patience give the sweep
    # decisions that a wall clock would make depend on when a poll lands.
    data["pruner"] = {"kind": "behind_leader", "ratio": 1.3, "min_epochs": 2}
    data["search_space"]["epochs"]["patience"] = 2
    (folder / "replay.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    config = load_config(folder / "replay.yaml")
    run_sweep(config, tracker=NullTracker())
    return [(t.number, t.state.name, t.params, t.user_attrs.get(ts.ATTR_TRAINING_TOKENS),
             t.user_attrs.get(ts.ATTR_CANCEL_REASON), t.values)
            for t in open_study(config).get_trials()]


def test_the_replay_demo_makes_the_same_sweep_at_any_time_scale(tmp_path, repo_root) -> None:
    # On the wall clock (clock: wall) the two differ from the first trial: at 0.1 it ran all
    # 8 epochs, at 1.0 patience stopped it after epoch 6.
    # The shipped config names no clock: job time is the replay backend's default.
    fast = replay_demo(tmp_path / "fast", repo_root, time_scale=0.1)
    slow = replay_demo(tmp_path / "slow", repo_root, time_scale=1.0)
    assert fast == slow
    kinds = [reason["kind"] for *_, reason, _ in fast if reason]
    assert ts.CANCEL_PRUNED in kinds and ts.CANCEL_STOPPED in kinds, fast
    assert {state for _, state, *_ in fast} >= {"COMPLETE", "PRUNED"}


def test_a_resumed_simulated_sweep_continues_from_its_job_time(tmp_path) -> None:
    """Job time runs ahead of the wall clock at time_scale < 1: a sweep killed and run again
    must not start from the wall clock, or its jobs would lose points they had shown."""
    from sweeps._replay_clock import SimulatedClock

    first = SimulatedClock(pace=0.0, start_s=1_000.0)
    first.keep_in(tmp_path / "simulated_clock")
    first.sleep(5_000.0)  # far ahead of the wall clock's 1_000 + a few seconds
    resumed = SimulatedClock(pace=0.0, start_s=1_010.0)
    resumed.keep_in(tmp_path / "simulated_clock")
    assert resumed.now() == 6_000.0
    later = SimulatedClock(pace=0.0, start_s=9_000.0)  # the wall clock passed it: go on
    later.keep_in(tmp_path / "simulated_clock")
    assert later.now() == 9_000.0
