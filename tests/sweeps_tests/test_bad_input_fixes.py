"""Regression tests for the bad-input fixes that go beyond ``tests/reliability_tests``:
a UTF-16/32 dataset named as such, an unpaired surrogate in any config string (not only the
preamble), a preamble passed in code or on the command line, one merged line per union
problem, a YAML problem quoting a huge name, and a backend module that fails to import.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gemini_backend import InvalidRequestError
from gemini_backend import backend_class
from sweeps.cli import app
from sweeps.config.schema import DatasetConfig
from sweeps.config.schema import load_config
from sweeps.data.dataset import validate_dataset
from sweeps.errors import ConfigError

runner = CliRunner()
_RECORDS = "".join(json.dumps({"text_input": f"q{i}", "output": f"a{i}"}) + "\n"
                   for i in range(22))


def _config_text(**changes: object) -> str:
    data: dict[str, object] = {
        "name": "fixes", "dataset": {"path": "data.jsonl"},
        "backend": {"kind": "replay", "curves": "curves.json"},
        "search_space": {"batch_size": {"choices": [2, 4]}},
        "pruner": {"kind": "median"},
    }
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


@pytest.mark.parametrize(("encoding", "name"), [("utf-16", "UTF-16"), ("utf-32", "UTF-32")])
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_a_utf16_or_utf32_dataset_gets_one_line_naming_its_encoding(
        tmp_path: Path, encoding: str, name: str, suffix: str) -> None:
    path = tmp_path / f"data{suffix}"
    path.write_bytes(_RECORDS.encode(encoding))
    assert validate_dataset(path).errors == (
        f"{path}: the file is {name} (it starts with a {name} byte order mark); "
        "save it as UTF-8",)


def test_a_surrogate_preamble_from_code_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text(_RECORDS, encoding="utf-8")
    report = validate_dataset(path, preamble="Q\ud800")
    assert [e for e in report.errors if e.startswith(f"{path}: preamble: contains an "
                                                     "unpaired surrogate")]
    assert report.dataset is None
    with pytest.raises(ValueError, match="unpaired surrogate"):
        DatasetConfig(path=path, preamble="Q\ud800")


def test_a_surrogate_preamble_on_the_command_line_exits_2(tmp_path: Path) -> None:
    # A non-UTF-8 byte in argv reaches Python as a lone surrogate (surrogateescape).
    path = tmp_path / "data.jsonl"
    path.write_text(_RECORDS, encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path), "--preamble", "Q\udcff"])
    assert result.exit_code == 2, result.output
    assert "preamble" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("key", "yaml_value"), [
    ("dataset", '{path: "d\\ud800.jsonl"}'),     # would crash in Path.stat()
    ("warm_start", '["\\udfff"]'),
    ("tracking_uri", '"sqlite:///\\ud83d.db"'),  # first half of an emoji only
])
def test_an_unpaired_surrogate_anywhere_in_the_config_is_located(tmp_path: Path, key: str,
                                                                 yaml_value: str) -> None:
    text = _config_text() + f"{key}: {yaml_value}\n"
    if key == "dataset":
        text = text.replace("dataset:\n  path: data.jsonl\n", "")
    path = tmp_path / "sweep.yaml"
    path.write_text(text, encoding="utf-8")
    line = text.splitlines().index(f"{key}: {yaml_value}") + 1
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{path}: {key}")
    assert f"(line {line}): contains an unpaired surrogate escape" in str(caught.value)


def test_a_paired_surrogate_escape_is_an_ordinary_character(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(_config_text(), encoding="utf-8")
    path.write_text(path.read_text() + 'storage: "sqlite:///\\ud83d\\ude00.db"\n')
    assert load_config(path).storage == "sqlite:///\U0001f600.db"


def test_union_branches_make_one_merged_problem_line(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    text = _config_text(search_space={"batch_size": {"choices": [[1], 4]}})
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    line = text.splitlines().index("    - - 1") + 1
    assert str(caught.value).splitlines()[1:] == [
        f"  {path}: search_space.batch_size.choices.0 (line {line}): Input should be a valid "
        "integer or a valid number or a valid string"]


def test_a_pruner_without_kind_says_so(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    text = _config_text(pruner={"n_startup_trials": 2})
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"pruner \(line \d+\): needs a 'kind' key"):
        load_config(path)


def test_a_yaml_problem_does_not_echo_a_huge_alias_name(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(_config_text() + "n_trials: *" + "x" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="found undefined alias") as caught:
        load_config(path)
    assert len(str(caught.value)) < 500


def test_a_backend_module_that_fails_on_import_is_named(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_backend_zz.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidRequestError, match=r"cannot import module 'broken_backend_zz' "
                                                  r"\(RuntimeError: boom at import\)"):
        backend_class("broken_backend_zz:Backend")


def test_an_aliased_bomb_as_pruner_kind_is_refused_without_expanding(tmp_path: Path) -> None:
    # pydantic renders an unknown union tag with str(): 10**9 items for this list.
    levels = ["x-lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"x-lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]"
               for i in range(1, 10)]
    text = _config_text().replace("pruner:\n  kind: median\n", "pruner:\n  kind: *lol9\n")
    path = tmp_path / "sweep.yaml"
    path.write_text("\n".join(levels) + "\n" + text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "pruner (line " in str(caught.value)
    assert "kind must be one of none, median" in str(caught.value)
