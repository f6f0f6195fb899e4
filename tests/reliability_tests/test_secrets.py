"""No secret reaches MLflow, Optuna, job folders, logs or exports (DESIGN invariant 5).

Sweeps run against the fake Gemini API and fake Vertex AI (real HTTP on 127.0.0.1) with
recognisable fake credentials from each place a user can put them: ``api_key`` in the YAML,
``GEMINI_API_KEY`` in the environment, and a service-account JSON key file. Then every byte
the tool wrote is searched: the MLflow SQLite db (and its WAL) and artifacts folder, the
Optuna db, every other file under ``.gemini_sweep/``, every log record at DEBUG, the CLI's
stdout/stderr of `run -v` and `status`, and all six export formats.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sweeps import load_config
from sweeps import run_sweep
from sweeps.cli import app
from tests._warm_runs import run_warm
from tests.gemini_backend_tests.fake_gemini_api import FakeGeminiApi
from tests.gemini_backend_tests.fake_vertex import FakeVertex
from tests.gemini_backend_tests.fake_vertex import Timing
from tests.gemini_backend_tests.fake_vertex import service_account_key
from tests.reliability_tests._sweep_procs import seed_mlflow
from tests.sweeps_tests.conftest import write_config

YAML_KEY = "AIzaSy-SECRET-IN-YAML-7f3a9c"
ENV_KEY = "AIzaSy-SECRET-IN-ENV-2b8e41"
EXPORT_FORMATS = ("yaml", "json", "gemini-api", "vertex", "python", "curl")
cli = CliRunner()


@pytest.fixture
def gemini() -> Iterator[FakeGeminiApi]:
    with FakeGeminiApi(api_key=None, epoch_s=0.05) as fake:  # any key is accepted
        yield fake


@pytest.fixture
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex(timing=Timing(step_s=0.01)) as fake:
        yield fake


def credentials_setup(source: str, folder: Path, gemini: FakeGeminiApi, vertex: FakeVertex,
                      monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[str]]:
    """The backend section for ``source`` and the secret strings it carries."""
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    if source == "yaml":
        return {"kind": "gemini-api", "base_url": gemini.url, "api_key": YAML_KEY,
                "poll_interval_s": 0.05}, [YAML_KEY]
    if source == "env":
        monkeypatch.setenv("GEMINI_API_KEY", ENV_KEY)
        return {"kind": "gemini-api", "base_url": gemini.url, "poll_interval_s": 0.05}, [ENV_KEY]
    key = service_account_key(vertex.url)
    key["private_key_id"] = "SECRET-KEY-ID-5d1c0e77"
    (folder / "sa-key.json").write_text(json.dumps(key), encoding="utf-8")
    pem_body = [line for line in key["private_key"].splitlines() if "PRIVATE KEY" not in line]
    secrets = [key["private_key_id"], *pem_body[1:4]]  # whole lines of the key itself
    return {"kind": "vertex", "project": "test-project", "bucket": "test-bucket",
            "base_url": vertex.url, "storage_base_url": vertex.url,
            "credentials_file": "sa-key.json", "poll_interval_s": 0.05}, secrets


def leaks(text: str | bytes, secrets: list[str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [s for s in secrets if s.encode() in data]


def files_written(folder: Path) -> Iterator[Path]:
    """Every file the tool wrote: all of ``.gemini_sweep/`` and the exports folder."""
    for root in (folder / ".gemini_sweep", folder / "exports"):
        yield from (p for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("source", ["yaml", "env", "credentials-file"])
def test_no_secret_in_stores_logs_or_exports(source, gemini, vertex, mlflow_template,
                                            tmp_path, monkeypatch, caplog) -> None:
    backend, secrets = credentials_setup(source, tmp_path, gemini, vertex, monkeypatch)
    config_path = write_config(tmp_path, name=f"secrets-{source}", n_trials=3,
                               concurrency=2, backend=backend, search_space={
                                   "epochs": {"value": 2},
                                   "learning_rate_multiplier": {"low": 0.5, "high": 2.0}})
    seed_mlflow(mlflow_template, tmp_path)
    caplog.set_level(logging.DEBUG)
    result = run_sweep(load_config(config_path))
    assert result.n_complete == 3, result.stop_reason
    if source == "credentials-file":  # the key file really was used to authenticate
        assert vertex.requests and all(r.has_auth for r in vertex.requests)
    else:  # the key really was sent, so it was in play
        assert gemini.requests(method="POST")[0]["headers"]["x-goog-api-key"] == secrets[0]

    # The CLI, as a user runs it: `run -v` (resumes; DEBUG logs of preflight and polls).
    run = run_warm(["run", str(config_path), "-v"], cwd=tmp_path,
                   timeout_s=120)
    assert run.returncode == 0, run.stderr
    status = cli.invoke(app, ["status", str(config_path)])
    assert status.exit_code == 0, status.output
    outputs = {"run stdout": run.stdout, "run stderr": run.stderr, "status": status.output,
               "log records": caplog.text + "\n".join(str(r.args) for r in caplog.records)}
    for fmt in EXPORT_FORMATS:
        target = tmp_path / "exports" / f"best.{fmt}"
        exported = cli.invoke(app, ["export", str(config_path), "-f", fmt, "-o", str(target)])
        assert exported.exit_code == 0, exported.output
        outputs[f"export {fmt} (console)"] = exported.output

    found = {name: leaks(text, secrets) for name, text in outputs.items()}
    found.update({str(path.relative_to(tmp_path)): leaks(path.read_bytes(), secrets)
                  for path in files_written(tmp_path)})
    assert {name: hit for name, hit in found.items() if hit} == {}
    searched = [name for name in found if name.startswith(".gemini_sweep")]
    assert any(name.endswith("mlflow.db") for name in searched)
    assert any(name.endswith("optuna.db") for name in searched)
    assert any("mlartifacts" in name for name in searched)
    assert sum(name.startswith("exports") for name in found) >= len(EXPORT_FORMATS)
