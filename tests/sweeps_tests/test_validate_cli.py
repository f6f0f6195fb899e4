"""`gemini-sweep validate`: exit codes, the human summary, --json, and the real console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeps.cli import app
from tests.conftest import REPO_ROOT

SEED_15 = REPO_ROOT / "tests" / "data" / "seed_15.json"
NEXT_NUMBER = REPO_ROOT / "configs" / "data" / "next_number.jsonl"

runner = CliRunner()


def _jsonl(path: Path, records: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_seed_15_exits_2_saying_at_least_20() -> None:
    result = runner.invoke(app, ["validate", str(SEED_15)])
    assert result.exit_code == 2, result.output
    assert f"{SEED_15}: 15 examples; at least 20 are needed" in result.stderr
    assert "Traceback" not in result.output


def test_example_dataset_exits_0_with_a_summary() -> None:
    result = runner.invoke(app, ["validate", str(NEXT_NUMBER), "--backend", "gemini-api",
                                 "--validation-split", "0.2"])
    assert result.exit_code == 0, result.output
    assert "valid: 240 examples, 0 warning(s)" in result.stdout
    assert "192 / 48" in result.stdout  # train / validation
    assert "p50 / p95 / max" in result.stdout
    assert "inline request" in result.stdout  # the size the 4 MB limit is checked on


def test_json_report_parses_with_counts_errors_and_warnings() -> None:
    result = runner.invoke(app, ["validate", str(SEED_15), "--json"])
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["is_valid"] is False
    assert report["counts"]["examples"] == 15 and report["counts"]["errors"] == 1
    assert report["errors"] == [f"{SEED_15}: 15 examples; at least 20 are needed "
                                "(100 or more recommended)"]
    assert report["warnings"] == []
    assert report["stats"]["output_chars"]["max_chars"] == len("two hundred one")

    ok = json.loads(runner.invoke(app, ["validate", str(NEXT_NUMBER), "--json"]).stdout)
    assert ok["is_valid"] is True and ok["counts"]["examples"] == 240
    assert len(ok["content_hash"]) == 64


def test_every_error_is_listed_with_brackets_intact(tmp_path: Path) -> None:
    records: list[dict[str, object]] = [{"text_input": str(i), "output": str(i + 1)}
                                        for i in range(40)]
    records[3]["output"] = 4
    records[9]["output"] = ""
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    # "[3]" must survive rich's markup parsing.
    assert f"{path}: [3]: output: must be a string, got number" in result.stderr
    assert f"{path}: [9]: output: missing or empty" in result.stderr
    assert "invalid: 2 error(s)" in result.stderr


def test_warnings_are_shown_and_still_exit_0(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "small.jsonl",
                  [{"text_input": str(i), "output": str(i + 1)} for i in range(30)])
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0
    assert f"warning: {path}: 30 examples; at least 100 are recommended" in result.stdout


def test_preamble_counts_and_is_shown(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "long.jsonl",
                  [{"text_input": "x" * 39_999, "output": str(i)} for i in range(120)])
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0
    result = runner.invoke(app, ["validate", str(path), "--preamble", "Q: "])
    assert result.exit_code == 2
    assert f"{path}:1: text_input: 40,002 characters with the preamble" in result.stderr


def test_backend_limits_apply(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "big.jsonl",
                  [{"text_input": f"{i} " + "x" * 38_000, "output": str(i)} for i in range(110)])
    assert runner.invoke(app, ["validate", str(path), "--backend", "local"]).exit_code == 0
    result = runner.invoke(app, ["validate", str(path), "--backend", "gemini-api", "--json"])
    assert result.exit_code == 2
    (error,) = json.loads(result.stdout)["errors"]
    assert "over the 4 MB (4,000,000 bytes) limit" in error


def test_a_sweep_config_is_validated_with_its_dataset_settings(tmp_path: Path) -> None:
    _jsonl(tmp_path / "d.jsonl", [{"text_input": str(i), "output": str(i + 1)}
                                  for i in range(30)])
    config = tmp_path / "sweep.yaml"
    config.write_text("name: x\ndataset:\n  path: d.jsonl\n  validation_split: 0.5\n"
                      "backend: {kind: local}\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(config), "--json"])
    assert result.exit_code == 2  # 0.5 of 30 leaves 15 training examples
    report = json.loads(result.stdout)
    assert report["path"] == str(tmp_path / "d.jsonl")
    assert "leaves 15 training examples" in report["errors"][0]
    # A command-line option overrides the config's value.
    override = runner.invoke(app, ["validate", str(config), "--validation-split", "0.1"])
    assert override.exit_code == 0, override.output


def test_a_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "sweep.yaml"
    config.write_text("name: x\ndataset: {path: d.jsonl}\nbackend: {kind: local}\n"
                      "n_trails: 3\n", encoding="utf-8")
    result = runner.invoke(app, ["validate", str(config)])
    assert result.exit_code == 2
    assert "n_trails (line 4): unknown key" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["--validation-split", "1.5"], ["--backend", "vertx"]])
def test_bad_options_are_usage_errors(args: list[str]) -> None:
    result = runner.invoke(app, ["validate", str(NEXT_NUMBER), *args])
    assert result.exit_code == 2
    assert "Invalid value" in result.output


def test_missing_file_exits_2_without_a_table(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "absent.csv")])
    assert result.exit_code == 2
    assert f"{tmp_path / 'absent.csv'}: no such file" in result.stderr
    assert "p50" not in result.stdout


def _console_script() -> str:
    found = shutil.which("gemini-sweep") or str(Path(sys.executable).parent / "gemini-sweep")
    assert Path(found).exists(), "the package is not installed (pip install -e .)"
    return found


def test_the_installed_console_script() -> None:
    done = subprocess.run([_console_script(), "validate", str(NEXT_NUMBER), "--json"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"]["examples"] == 240
    failed = subprocess.run([_console_script(), "validate", str(SEED_15)],
                            capture_output=True, text=True, check=False, timeout=120)
    assert failed.returncode == 2
    assert "at least 20 are needed" in failed.stderr
