"""Every number of a sweep config is refused with its key and line, or accepted and usable.

A property test writes random numbers (NaN, infinities, huge and tiny values, booleans,
numeric strings) at the config's numeric keys, through YAML as a user would, and checks that
``validate`` either refuses the file with exit 2 naming the key and its line, or accepts it
and the sweep's parts all work with it: the sampler proposes finite knobs within the caps,
the backend is built with finite poll intervals. Then the numbers the red team found are run
through ``validate`` and ``run`` as processes: both exit 2 with the line, and no job is made.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gemini_backend import create_backend
from sweeps import load_config
from sweeps.cli import app
from sweeps.config._numbers import MAX_BATCH_SIZE
from sweeps.config._numbers import MAX_EPOCHS
from sweeps.config._numbers import MAX_POLL_INTERVAL_S
from sweeps.engine.budget import cost_of
from sweeps.errors import ConfigError
from sweeps.policy.search_space import epoch_bounds
from sweeps.policy.search_space import make_pruner
from sweeps.policy.search_space import make_sampler
from sweeps.policy.search_space import suggest_knobs
from tests._warm_runs import run_warm
from tests.conftest import REPO_ROOT
from tests.sweeps_tests.conftest import write_curves
from tests.sweeps_tests.conftest import write_dataset

#: Where a number goes, as a key path, and the base config it is put into.
NUMERIC_KEYS = [
    ("n_trials",), ("concurrency",), ("poll_interval_s",), ("lease_s",),
    ("cost_tolerance",), ("max_consecutive_failures",), ("study_concurrency",),
    ("budget", "max_training_tokens"), ("budget", "price_per_million_tokens"),
    ("sampler", "seed"), ("sampler", "n_startup_trials"),
    ("dataset", "validation_split"), ("dataset", "seed"),
    ("search_space", "epochs", "value"), ("search_space", "epochs", "high"),
    ("search_space", "epochs", "low"),
    ("search_space", "batch_size", "choices", 0), ("search_space", "batch_size", "value"),
    ("search_space", "learning_rate_multiplier", "low"),
    ("search_space", "learning_rate_multiplier", "high"),
    ("search_space", "learning_rate_multiplier", "choices", 1),
    ("backend", "time_scale"), ("plateau", "smoothing"), ("plateau", "spike_threshold"),
    ("pruner", "min_resource"), ("pruner", "reduction_factor"),
    ("evaluation", "max_examples"),
]

_NUMBER_TEXT = st.sampled_from(["1e309", "-1e309", "nan", "inf", "1e-320", "0x10", "1_000",
                                "1e3", "5", "0.5", "-0", "1e-9", " 7 "])
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, 2, 4, 16, 100, 101, 1024, 1025, 10**9, 2**31, 2**63, 10**400,
                     1e-300, 1e300, 1e-9, 5e-324, -1, -0.0]),
    st.booleans(),
    _NUMBER_TEXT,
)


def _base(folder: Path, key: tuple[Any, ...]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "name": "numbers", "dataset": {"path": "data.jsonl"},
        "backend": {"kind": "replay", "curves": "curves.json"},
        "search_space": {"epochs": {"low": 1, "high": 4},
                         "batch_size": {"choices": [4, 8]},
                         "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
        "sampler": {"kind": "tpe", "seed": 0}, "n_trials": 4,
        "evaluation": {"enabled": False},
    }
    if key[:2] == ("search_space", "epochs") and key[2] == "value":
        config["search_space"]["epochs"] = {"value": 3}
    if key[:2] == ("search_space", "batch_size") and key[2] == "value":
        config["search_space"]["batch_size"] = {"value": 4}
    if key == ("search_space", "learning_rate_multiplier", "choices", 1):
        config["search_space"]["learning_rate_multiplier"] = {"choices": [1.0, 2.0]}
    if key[0] == "pruner":
        config["pruner"] = {"kind": "hyperband"}
    if key[0] == "budget":
        config["budget"] = {"max_training_tokens": 10**9}
    return config


def _set(config: dict[str, Any], key: tuple[Any, ...], value: Any) -> None:
    node: Any = config
    for part in key[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[key[-1]] = value


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("numbers")
    write_dataset(path)
    write_curves(path)
    return path


def _usable(config_path: Path) -> None:
    """The accepted config works: knobs proposed within the caps, the backend built."""
    config = load_config(config_path)
    study = optuna.create_study(directions=config.directions, sampler=make_sampler(config),
                                pruner=make_pruner(config))
    for _ in range(3):
        trial = study.ask()
        knobs = suggest_knobs(trial, config.search_space)
        assert isinstance(knobs["epochs"], int) and 1 <= knobs["epochs"] <= MAX_EPOCHS
        if "batch_size" in knobs:
            assert isinstance(knobs["batch_size"], int)
            assert 1 <= knobs["batch_size"] <= MAX_BATCH_SIZE
        assert math.isfinite(knobs["learning_rate_multiplier"])
        assert knobs["learning_rate_multiplier"] > 0
        study.tell(trial, 1.0)
    low, high = epoch_bounds(config.search_space)
    assert 1 <= low <= high <= MAX_EPOCHS
    cost_of(float(config.budget.max_training_tokens or 0), config.budget)
    if config.poll_interval_s is not None:
        assert 0 < config.poll_interval_s <= MAX_POLL_INTERVAL_S
    with create_backend(config.backend, base_dir=config.config_dir) as backend:
        capabilities = backend.capabilities
        assert 0 < capabilities.poll_interval_s <= MAX_POLL_INTERVAL_S


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(NUMERIC_KEYS), value=NUMBERS)
def test_a_number_is_refused_with_its_line_or_accepted_and_usable(
        folder: Path, key: tuple[Any, ...], value: Any) -> None:
    config = _base(folder, key)
    _set(config, key, value)
    config_path = folder / "sweep.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    result = CliRunner().invoke(app, ["validate", str(config_path)])
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in output
    assert result.exit_code in (0, 2), (result.exit_code, output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    try:
        load_config(config_path)
    except ConfigError as exc:
        assert result.exit_code == 2
        assert "(line " in str(exc), str(exc)
        return
    if result.exit_code == 2:  # a valid config whose split leaves the dataset too small
        assert "validation_split" in output and "data.jsonl" in output, output
        return
    _usable(config_path)


#: What a red team found passing ``validate`` and then crashing, hanging or costing money.
RED_TEAM_NUMBERS = [
    ("search_space:\n  learning_rate_multiplier: {low: 0.1, high: .inf, log: true}\n",
     "search_space.learning_rate_multiplier.high"),
    ("search_space:\n  learning_rate_multiplier: {low: .nan, high: 1.0}\n",
     "search_space.learning_rate_multiplier.low"),
    ('search_space:\n  batch_size: {choices: ["1e309"]}\n', "search_space.batch_size"),
    ("search_space:\n  batch_size: {choices: [1000000000]}\n", "search_space.batch_size"),
    ("search_space:\n  learning_rate_multiplier: {low: 1.0e-300, high: 1.0e300, log: true}\n",
     "search_space.learning_rate_multiplier"),
    ("search_space:\n  epochs: {low: 1, high: 1000000}\n", "search_space.epochs"),
    ("concurrency: 1000000000\n", "concurrency"),
    ("poll_interval_s: 1.0e-9\n", "poll_interval_s"),
    ("poll_interval_s: .inf\n", "poll_interval_s"),
    ("poll_interval_s: true\n", "poll_interval_s"),
]


@pytest.mark.parametrize(("text", "key"), RED_TEAM_NUMBERS, ids=[k for _, k in RED_TEAM_NUMBERS])
def test_validate_and_run_refuse_the_number_with_its_line_before_any_job(
        tmp_path: Path, text: str, key: str) -> None:
    write_dataset(tmp_path)
    write_curves(tmp_path)
    head = ("name: red-team\ndataset: {path: data.jsonl}\n"
            "backend: {kind: replay, curves: curves.json}\nn_trials: 2\n")
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text(head + text, encoding="utf-8")
    line = head.count("\n") + text.count("\n")  # the snippet's last line holds the key
    for command in ("validate", "run"):
        done = run_warm([command, str(config_path)], cwd=REPO_ROOT,
                        timeout_s=120)
        output = done.stdout + done.stderr
        assert done.returncode == 2, (command, output)
        assert "Traceback" not in output
        assert f"{key} (line {line})" in " ".join(output.split()), (command, output)
    assert not (tmp_path / ".gemini_sweep").exists()  # no study, no store, no job


def test_backend_poll_interval_is_checked_by_name(tmp_path: Path) -> None:
    write_dataset(tmp_path)
    for value in (".inf", "1e309", "true", "1.0e-9", "4000"):
        config_path = tmp_path / "sweep.yaml"
        config_path.write_text(
            "name: poll\ndataset: {path: data.jsonl}\nbackend:\n  kind: gemini-api\n"
            f"  poll_interval_s: {value}\n", encoding="utf-8")
        with pytest.raises(ConfigError, match=r"backend\.poll_interval_s \(line 5\)"):
            load_config(config_path)


def test_an_integer_too_long_for_python_is_a_yaml_error_with_its_line(tmp_path: Path) -> None:
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text("name: long\ndataset: {path: data.jsonl}\nbackend: {kind: local}\n"
                           f"n_trials: 1{'0' * 5000}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\(line 4, column 11\): not valid YAML: an integer "
                                          "too long"):
        load_config(config_path)


def test_a_backend_learning_rate_is_within_reason(tmp_path: Path) -> None:
    config_path = tmp_path / "sweep.yaml"
    config_path.write_text("name: lr\ndataset: {path: data.jsonl}\nbackend:\n"
                           "  kind: gemini-api\n  use_learning_rate: 1.0e+300\n",
                           encoding="utf-8")
    with pytest.raises(ConfigError, match=r"backend\.use_learning_rate \(line 5\): must be "
                                          "between 1e-07 and 1"):
        load_config(config_path)
