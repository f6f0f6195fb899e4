"""Shared fixtures for sweep tests: a dataset, configs written as YAML, recorded curves."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from sweeps import SweepConfig
from sweeps import load_config
from tests.sweeps_tests.fake_backend import KIND
from tests.sweeps_tests.fake_backend import FakeClock


def write_dataset(folder: Path, n_examples: int = 24) -> Path:
    """A small valid JSONL dataset (above the 20-example minimum)."""
    path = folder / "data.jsonl"
    rows = [{"text_input": f"what is {i} plus {i}",
             "output": f"the answer is {2 * i}"} for i in range(n_examples)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_config(folder: Path, **overrides: Any) -> Path:
    """A sweep YAML in ``folder``; ``overrides`` replace top-level keys."""
    data: dict[str, Any] = {
        "name": "test-sweep",
        "dataset": {"path": "data.jsonl"},
        "backend": {"kind": KIND},
        "search_space": {"epochs": {"value": 3},
                         "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
        "sampler": {"kind": "random", "seed": 7},
        "n_trials": 4,
        "concurrency": 2,
    }
    data.update(overrides)
    if not (folder / "data.jsonl").exists():
        write_dataset(folder)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def replay_record(multiplier: float, *, epochs: int = 4, steps_per_epoch: int = 5,
                  duration_s: float = 2.0) -> dict[str, Any]:
    """A recorded trial whose loss is worse the further the multiplier is from 1."""
    penalty = abs(math.log(multiplier))
    curve = []
    total = epochs * steps_per_epoch
    for step in range(1, total + 1):
        epoch = (step - 1) // steps_per_epoch + 1
        loss = 0.4 + 2.0 * penalty + 2.0 * math.exp(-1.2 * step / steps_per_epoch)
        curve.append({"step": step, "epoch": epoch, "loss": round(loss, 6)})
    return {"params": {"epochs": epochs, "learning_rate_multiplier": multiplier},
            "curve": curve, "duration_s": duration_s, "tokens_per_epoch": 1000}


def write_curves(folder: Path, *, multipliers: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0),
                 **kwargs: Any) -> Path:
    path = folder / "curves.json"
    path.write_text(json.dumps([replay_record(m, **kwargs) for m in multipliers]),
                    encoding="utf-8")
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., SweepConfig]:
    def make(**overrides: Any) -> SweepConfig:
        return load_config(write_config(tmp_path, **overrides))
    return make


@pytest.fixture
def seed_mlflow(mlflow_template: Path) -> Callable[[SweepConfig], None]:
    """Copy the empty store to where ``config`` keeps its MLflow database."""
    def seed(config: SweepConfig) -> None:
        config.state_dir.mkdir(parents=True, exist_ok=True)
        target = config.state_dir / "mlflow.db"
        if not target.exists():
            shutil.copyfile(mlflow_template, target)
    return seed
