"""Bad input never spends (invariant 3): a bad dataset or config stops the sweep
with exit code 2 and a clear message before any job is submitted or any trial created.

Jobs go to the replay backend, whose ``submissions.log`` records every job it creates, and to
a counting HTTP server on 127.0.0.1 standing in for the Gemini API. The control test shows
the same set-up does submit when the input is good, so "nothing submitted" can fail.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from gemini_backend import BackendError
from gemini_backend.replay.backend import ReplayBackend
from sweeps.cli import app
from sweeps.config.schema import load_config
from sweeps.engine.runner import run_sweep
from sweeps.errors import DatasetError
from sweeps.tracking.tracker import NullTracker
from tests.reliability_tests._bad_files import FAKE_API_KEY
from tests.reliability_tests._bad_files import serialize
from tests.reliability_tests._bad_files import simple_records

runner = CliRunner()


def _curves() -> list[dict[str, Any]]:
    curve = [{"step": s, "epoch": (s + 1) // 2, "loss": round(2.0 / s, 4)} for s in range(1, 9)]
    return [{"params": {"epochs": 4, "learning_rate_multiplier": 1.0}, "curve": curve,
             "duration_s": 1.0}]


def _write_sweep(folder: Path, **overrides: Any) -> Path:
    """A replay sweep in ``folder`` (good data.jsonl unless one is there); returns its YAML."""
    (folder / "curves.json").write_text(json.dumps(_curves()), encoding="utf-8")
    if not (folder / "data.jsonl").exists():
        (folder / "data.jsonl").write_bytes(serialize(simple_records(), "jsonl"))
    data: dict[str, Any] = {
        "name": "no-spend", "dataset": {"path": "data.jsonl"},
        "backend": {"kind": "replay", "curves": "curves.json", "time_scale": 0,
                    "job_root": str(folder / "jobs")},
        "search_space": {"epochs": {"value": 4}}, "sampler": {"kind": "random", "seed": 1},
        "n_trials": 2,
    }
    data.update(overrides)
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _n_trials(folder: Path) -> int:
    db = folder / ".gemini_sweep" / "optuna.db"
    if not db.exists():
        return 0
    return sum(s.n_trials for s in optuna.get_all_study_summaries(f"sqlite:///{db}"))


def _assert_nothing_spent(folder: Path) -> None:
    assert ReplayBackend.submission_log(folder / "jobs") == []
    assert _n_trials(folder) == 0


def test_control_good_input_does_submit(tmp_path: Path) -> None:
    result = run_sweep(load_config(_write_sweep(tmp_path)), tracker=NullTracker())
    assert result.n_complete == 2
    assert len(ReplayBackend.submission_log(tmp_path / "jobs")) == 2
    assert _n_trials(tmp_path) == 2


def _bad_records(**change: Any) -> bytes:
    records: list[Any] = simple_records()
    records[5] = {**records[5], **change}
    return serialize(records, "jsonl")


BAD_DATASETS = {
    "wrong-type": (_bad_records(output=["a", "list"]), ":6: output: must be a string"),
    "huge-input": (_bad_records(text_input="x" * 40_001), ":6: text_input: 40,001 characters"),
    "truncated": (serialize(simple_records(), "jsonl")[:-20], ":22: invalid JSON"),
    "random-bytes": (bytes(range(256)) * 3, ": invalid UTF-8"),
    "too-few": (serialize(simple_records(15), "jsonl"), ": 15 examples; at least 20"),
}
_DATASET_PARAMS = [pytest.param(*value, id=key) for key, value in BAD_DATASETS.items()] + [
    pytest.param(serialize(simple_records(), "jsonl").decode().encode("utf-16"), "UTF-8",
                 id="utf16")]


@pytest.mark.parametrize("raw, needle", _DATASET_PARAMS)
def test_run_sweep_refuses_a_bad_dataset_before_any_trial(tmp_path: Path, raw: bytes,
                                                          needle: str) -> None:
    (tmp_path / "data.jsonl").write_bytes(raw)
    config = load_config(_write_sweep(tmp_path))
    with pytest.raises(DatasetError) as caught:
        run_sweep(config, tracker=NullTracker())
    dataset = str(tmp_path / "data.jsonl")
    assert caught.value.problems and all(p.startswith(dataset) for p in caught.value.problems)
    assert any(needle in p for p in caught.value.problems), caught.value.problems
    _assert_nothing_spent(tmp_path)


def test_run_sweep_refuses_epochs_the_backend_cannot_run(tmp_path: Path) -> None:
    config = load_config(_write_sweep(tmp_path, search_space={"epochs": {"value": 9}}))
    with pytest.raises(BackendError, match="epochs"):
        run_sweep(config, tracker=NullTracker())
    _assert_nothing_spent(tmp_path)


# --- through `gemini-sweep run` --------------------------------------------------------------


@pytest.fixture(scope="module")
def run_cli_ready() -> None:
    probe = runner.invoke(app, ["run", "/nonexistent/sweep.yaml"])
    if "not available yet" in probe.output:
        pytest.skip("`gemini-sweep run` is still a stub")


def _run_cli(config: Path) -> Any:
    result = runner.invoke(app, ["run", str(config), "-q"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output and FAKE_API_KEY not in result.output
    return result


@pytest.mark.usefixtures("run_cli_ready")
def test_control_cli_run_with_good_input_submits(tmp_path: Path) -> None:
    result = _run_cli(_write_sweep(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(ReplayBackend.submission_log(tmp_path / "jobs")) == 2


@pytest.mark.usefixtures("run_cli_ready")
@pytest.mark.parametrize("raw, needle", _DATASET_PARAMS)
def test_cli_run_exits_2_on_a_bad_dataset(tmp_path: Path, raw: bytes, needle: str) -> None:
    (tmp_path / "data.jsonl").write_bytes(raw)
    result = _run_cli(_write_sweep(tmp_path))
    assert result.exit_code == 2, result.output
    assert str(tmp_path / "data.jsonl") in result.stderr and needle in result.stderr
    _assert_nothing_spent(tmp_path)


def _tab(folder: Path) -> Path:
    path = _write_sweep(folder)
    path.write_text(path.read_text().replace("\n  kind: replay", "\n\tkind: replay"))
    return path


def _duplicate(folder: Path) -> Path:
    path = _write_sweep(folder)
    path.write_text(path.read_text() + "n_trials: 3\n")
    return path


BAD_CONFIGS = {
    "wrong-type": (lambda f: _write_sweep(f, n_trials="many"), "n_trials (line"),
    "unknown-key": (lambda f: _write_sweep(f, n_trails=3), "n_trails (line"),
    "misspelt-knob": (lambda f: _write_sweep(f, search_space={"epoch": {"value": 4}}),
                      "did you mean 'epochs'"),
    "duplicate-key": (_duplicate, "duplicate key"),
    "tab": (_tab, "not valid YAML"),
    "no-dataset-file": (lambda f: _write_sweep(f, dataset={"path": "missing.jsonl"}),
                        "missing.jsonl: no such file"),
    "no-curves-file": (lambda f: _write_sweep(f, backend={"kind": "replay",
                                                          "curves": "nope.json",
                                                          "job_root": str(f / "jobs")}),
                       "nope.json"),
}


@pytest.mark.usefixtures("run_cli_ready")
@pytest.mark.parametrize("make, needle", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_cli_run_exits_2_on_a_bad_config(tmp_path: Path, make: Any, needle: str) -> None:
    result = _run_cli(make(tmp_path))
    assert result.exit_code == 2, result.output
    assert needle in result.stderr, result.stderr
    _assert_nothing_spent(tmp_path)


class _CountingApi(BaseHTTPRequestHandler):
    """Stands in for the Gemini API: counts requests and answers 500 to each."""

    count = 0

    def _any(self) -> None:
        type(self).count += 1
        self.send_error(500)

    do_GET = do_POST = do_DELETE = do_PATCH = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def counting_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CountingApi)
    _CountingApi.count = 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.usefixtures("run_cli_ready")
@pytest.mark.parametrize("raw, needle", [BAD_DATASETS["wrong-type"], BAD_DATASETS["truncated"]],
                         ids=["wrong-type", "truncated"])
def test_a_bad_dataset_sends_no_request_and_no_key(tmp_path: Path, counting_api: str,
                                                   raw: bytes, needle: str) -> None:
    (tmp_path / "data.jsonl").write_bytes(raw)
    backend = {"kind": "gemini-api", "api_key": FAKE_API_KEY, "base_url": counting_api,
               "base_model": "models/x", "max_retries": 0}
    result = _run_cli(_write_sweep(tmp_path, backend=backend))
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert _CountingApi.count == 0 and _n_trials(tmp_path) == 0
