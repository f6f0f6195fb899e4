"""The sweep config: what a valid file gives, and every error naming its key path and line."""

from __future__ import annotations

import textwrap
import warnings
from pathlib import Path

import pytest

from sweeps.config.schema import FloatRange
from sweeps.config.schema import IntRange
from sweeps.config.schema import SweepConfig
from sweeps.config.schema import load_config
from sweeps.errors import ConfigError

FAKE_KEY = "AIzaSyFAKE-0123456789-never-echo-me"

VALID = """\
name: next-number
dataset:
  path: data/next_number.jsonl
  validation_split: 0.2
  preamble: "Next: "
backend:
  kind: local
search_space:
  epochs: {low: 1, high: 8}
  batch_size: {choices: [2, 4, 8]}
  learning_rate_multiplier: {low: 0.1, high: 10, log: true}
n_trials: 6
"""


def write_config(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def marked_line(text: str) -> int:
    """The 1-based line carrying the ``# <-`` marker: where the error must point."""
    lines = textwrap.dedent(text).splitlines()
    (number,) = [i for i, line in enumerate(lines, start=1) if "# <-" in line]
    return number


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, text))
    return str(caught.value)


# --- a valid config ------------------------------------------------------------------------


def test_valid_config_resolves_paths_against_its_folder(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "project"
    folder.mkdir()
    path = write_config(folder, VALID)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config(Path("project") / "sweep.yaml")
    assert config.dataset_path == (folder / "data" / "next_number.jsonl").resolve()
    state = (folder / ".gemini_sweep").resolve()
    assert config.storage_url == f"sqlite:///{state / 'optuna.db'}"
    assert config.tracking_url == f"sqlite:///{state / 'mlflow.db'}"
    assert config.dataset.preamble == "Next: " and config.dataset.validation_split == 0.2
    assert config.backend.kind == "local" and config.n_trials == 6
    knobs = config.search_space.knobs()
    assert knobs["epochs"] == IntRange(low=1, high=8)
    assert knobs["learning_rate_multiplier"] == FloatRange(low=0.1, high=10.0, log=True)
    assert path.is_file()


def test_explicit_storage_and_tracking_are_kept(tmp_path: Path) -> None:
    text = VALID + "storage: postgresql://u@127.0.0.1/optuna\ntracking_uri: http://127.0.0.1:5000\n"
    config = load_config(write_config(tmp_path, text))
    assert config.storage_url == "postgresql://u@127.0.0.1/optuna"
    assert config.tracking_url == "http://127.0.0.1:5000"


def test_absolute_dataset_path_is_kept(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere" / "d.jsonl"
    config = load_config(write_config(tmp_path, VALID.replace("data/next_number.jsonl",
                                                              str(data))))
    assert config.dataset_path == data


# --- errors: key path and line -------------------------------------------------------------

ERROR_CASES = {
    "top-level typo": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        n_trails: 3  # <-
        """, "n_trails", "unknown key; check its spelling"),
    "nested typo": ("""\
        name: x
        dataset:
          path: d.jsonl
          valdation_split: 0.2  # <-
        backend: {kind: local}
        """, "dataset.valdation_split", "unknown key"),
    "backend typo": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend:
          kind: local
          job_rot: /tmp/jobs  # <-
        """, "backend.job_rot", "unknown key"),
    "wrong type": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        n_trials: many  # <-
        """, "n_trials", "valid integer"),
    "wrong nested type": ("""\
        name: x
        dataset:
          path: d.jsonl
          validation_split: lots  # <-
        backend: {kind: local}
        """, "dataset.validation_split", "valid number"),
    "int range low > high": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        search_space:
          batch_size: {low: 8, high: 2}  # <-
        """, "search_space.batch_size", "low (8) must not be greater than high (2)"),
    "float range low > high": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        search_space:
          learning_rate_multiplier: {low: 2.0, high: 0.5}  # <-
        """, "search_space.learning_rate_multiplier", "low (2.0) must not be greater"),
    "zero epochs": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        search_space:
          epochs: {value: 0}  # <-
        """, "search_space.epochs", "epoch counts must be between 1 and 100, got 0"),
    "negative epochs in a range": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        search_space:
          epochs: {low: -2, high: 5}  # <-
        """, "search_space.epochs", "epoch counts must be between 1 and 100, got -2"),
    "zero epochs among choices": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        search_space:
          epochs: {choices: [0, 3]}  # <-
        """, "search_space.epochs", "epoch counts must be between 1 and 100, got 0"),
    "negative sampler seed": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        sampler:
          seed: -1  # <-
        """, "sampler.seed", "greater than or equal to 0"),
    "stratified start for the random sampler": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        sampler:  # <-
          kind: random
          start: stratified
        """, "sampler", "start: stratified is for kind: tpe"),
    "bad backend kind": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend:  # <-
          kind: vertx
        """, "backend", "unknown backend kind 'vertx'"),
    "backend without kind": ("""\
        name: x
        dataset: {path: d.jsonl}
        backend:  # <-
          base_model: m
        """, "backend", "needs a 'kind'"),
}


@pytest.mark.parametrize(("text", "key_path", "phrase"), ERROR_CASES.values(),
                         ids=ERROR_CASES.keys())
def test_error_names_the_key_path_and_its_line(tmp_path: Path, text: str, key_path: str,
                                               phrase: str) -> None:
    message = config_error(tmp_path, text)
    path = tmp_path / "sweep.yaml"
    problem = [line.strip() for line in message.splitlines()
               if line.strip().startswith(f"{path}: {key_path} (")]
    assert problem, message
    assert problem[0].startswith(f"{path}: {key_path} (line {marked_line(text)}): ")
    assert phrase in problem[0]


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    message = config_error(tmp_path, """\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        search_space:
          epochs: {low: 0, high: 8}
        n_trials: many
        n_trails: 3
        """)
    assert "search_space.epochs (line 5)" in message
    assert "n_trials (line 6)" in message
    assert "n_trails (line 7)" in message


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    message = config_error(tmp_path, "name: x\ndataset: {path: d.jsonl\nbackend: {kind: local}\n")
    assert message.startswith(f"{tmp_path / 'sweep.yaml'} (line 3, column ")
    assert "not valid YAML" in message


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    assert "must be a mapping" in config_error(tmp_path, "- just\n- a list\n")


# --- secrets ---------------------------------------------------------------------------------

SECRET_CASES = {
    "two credentials": f"""\
        name: x
        dataset: {{path: d.jsonl}}
        backend:
          kind: gemini-api
          api_key: {FAKE_KEY}
          api_key_env: GEMINI_API_KEY
        """,
    "key as a list": f"""\
        name: x
        dataset: {{path: d.jsonl}}
        backend:
          kind: gemini-api
          api_key: [{FAKE_KEY}]
        """,
    "key in a url field": f"""\
        name: x
        dataset: {{path: d.jsonl}}
        backend:
          kind: gemini-api
          base_url: {FAKE_KEY}
        """,
    "key at the top level": f"""\
        name: x
        dataset: {{path: d.jsonl}}
        backend: {{kind: gemini-api}}
        api_key: {FAKE_KEY}
        """,
    "key in a misspelt field": f"""\
        name: x
        dataset: {{path: d.jsonl}}
        backend:
          kind: gemini-api
          apikey: {FAKE_KEY}
        """,
}


@pytest.mark.parametrize("text", SECRET_CASES.values(), ids=SECRET_CASES.keys())
def test_an_api_key_is_never_echoed_in_errors(tmp_path: Path, text: str) -> None:
    message = config_error(tmp_path, text)
    assert "(line " in message  # a real, located error ...
    assert FAKE_KEY not in message  # ... that does not show the key
    assert "AIzaSy" not in message


def test_a_loaded_api_key_stays_hidden(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, f"""\
        name: x
        dataset: {{path: d.jsonl}}
        backend:
          kind: gemini-api
          api_key: {FAKE_KEY}
        """))
    assert config.backend.api_key.get_secret_value() == FAKE_KEY  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the serializer warning of the xfail test below
        dumped = config.model_dump_json()
    for shown in (repr(config), str(config), dumped):
        assert FAKE_KEY not in shown


# --- silent mistakes that must be errors ---------------------------------------------------------


def test_a_misspelt_knob_is_an_error_on_its_line(tmp_path: Path) -> None:
    message = config_error(tmp_path, """\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        search_space:
          epoch: {low: 1, high: 5}
        """)
    assert "search_space.epoch (line 5)" in message


def test_a_duplicate_key_is_an_error(tmp_path: Path) -> None:
    message = config_error(tmp_path, """\
        name: x
        dataset: {path: d.jsonl}
        backend: {kind: local}
        n_trials: 5
        n_trials: 50
        """)
    assert "n_trials (line 5)" in message and "duplicate" in message


def test_dumping_a_config_is_clean_and_round_trips(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, VALID))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a serializer warning would land in every log
        dumped = config.search_space.model_dump()
    assert dumped["batch_size"] == {"choices": [2, 4, 8]}
    assert type(config.search_space).model_validate(dumped) == config.search_space


def test_sweep_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, VALID))
    assert isinstance(config, SweepConfig)
    with pytest.raises(ValueError):
        config.n_trials = 99  # type: ignore[misc]
