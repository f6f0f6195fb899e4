"""A sweep against flaky services: 30% of calls fail, and the sweep still completes.

The fake Gemini API and fake Vertex AI (real HTTP on 127.0.0.1) answer a seeded 30% of calls
with 429 (with ``RetryInfo``) or 503, answer past the client's timeout, drop the connection
after applying the call, or send a truncated JSON body. The sweep must finish every trial,
create no job twice, record every point in MLflow, and say in words what went wrong (log
warnings naming the failure, never a traceback). When a service keeps refusing, the sweep
stops and the reason names the service's answer.

Backends are built with an injected ``sleep`` that caps backoff waits at 50 ms (their
constructors take it for this): the retry schedule is exercised, not waited out.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from gemini_backend import BaseBackend
from gemini_backend.gemini_api._wire import tuned_model_id
from gemini_backend.gemini_api.backend import GeminiApiBackend
from gemini_backend.gemini_api.backend import GeminiApiBackendConfig
from gemini_backend.vertex._wire import label_value
from gemini_backend.vertex.backend import VertexBackend
from gemini_backend.vertex.backend import VertexBackendConfig
from sweeps import load_config
from sweeps import run_sweep
from sweeps import trial_record as ts
from sweeps.engine.runner import open_study
from tests.gemini_backend_tests._fake_chaos import Chaos
from tests.gemini_backend_tests.fake_gemini_api import FakeGeminiApi
from tests.gemini_backend_tests.fake_vertex import FakeVertex
from tests.gemini_backend_tests.fake_vertex import Timing
from tests.reliability_tests._sweep_procs import check_mlflow
from tests.reliability_tests._sweep_procs import seed_mlflow
from tests.sweeps_tests.conftest import write_config

TrialState = optuna.trial.TrialState
KEY = "AIzaSy-fake-http-faults-key"
TIMEOUT_S = 0.4
SLOW_S = 0.8
N_TRIALS = 5
# What a user reads in the log for each fault (RestClient and backend messages).
WORDS = {"429": "RESOURCE_EXHAUSTED", "503": "UNAVAILABLE",
         "slow": f"no answer within {TIMEOUT_S:g}s", "drop": "connection failed",
         "malformed": "not valid JSON"}


def short_sleep(seconds: float) -> None:
    time.sleep(min(seconds, 0.05))


@pytest.fixture
def gemini() -> Iterator[FakeGeminiApi]:
    with FakeGeminiApi(api_key=KEY, epoch_s=0.15) as fake:
        yield fake


@pytest.fixture
def vertex() -> Iterator[FakeVertex]:
    with FakeVertex(timing=Timing(step_s=0.03)) as fake:
        yield fake


def gemini_backend(fake: FakeGeminiApi, **changes: Any) -> GeminiApiBackend:
    config = GeminiApiBackendConfig(base_url=fake.url, api_key=KEY, timeout_s=TIMEOUT_S,
                                    **changes)
    return GeminiApiBackend(config, sleep=short_sleep)


def vertex_backend(fake: FakeVertex) -> VertexBackend:
    from google.oauth2.credentials import Credentials

    config = VertexBackendConfig(project="test-project", bucket="test-bucket",
                                 base_url=fake.url, storage_base_url=fake.url,
                                 timeout_s=TIMEOUT_S, list_lag_window_s=1.0)
    return VertexBackend(config, credentials=Credentials(token="fake-token"),
                         sleep=short_sleep)


def sweep_config(folder: Path, backend: BaseBackend, template: Path, **overrides: Any):
    section = backend.config.model_dump(mode="json", exclude={"api_key"})
    if isinstance(backend, GeminiApiBackend):
        section["api_key_env"] = "UNUSED_KEY_ENV"  # the key itself never goes in the YAML
    config_path = write_config(
        folder, n_trials=N_TRIALS, concurrency=2, poll_interval_s=0.05, backend=section,
        search_space={"epochs": {"value": 3},
                      "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
        **overrides)
    seed_mlflow(template, folder)
    return load_config(config_path)


def created(fake: FakeGeminiApi | FakeVertex) -> list[str]:
    """Every job the service holds, by the id derived from its idempotency key."""
    if isinstance(fake, FakeGeminiApi):
        return list(fake.state.tuned)
    return [job["labels"]["gemini-sweep-key"] for job in fake.job_list()]


def derived_id(fake: FakeGeminiApi | FakeVertex, key: str) -> str:
    return tuned_model_id(key) if isinstance(fake, FakeGeminiApi) else label_value(key)


@pytest.mark.parametrize("kind", ["gemini-api", "vertex"])
def test_thirty_percent_faulty_calls_and_the_sweep_still_completes(
        kind: str, gemini, vertex, mlflow_template, tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    fake = gemini if kind == "gemini-api" else vertex
    backend = gemini_backend(gemini) if kind == "gemini-api" else vertex_backend(vertex)
    config = sweep_config(tmp_path, backend, mlflow_template)
    fake.chaos = Chaos(rate=0.3, seed=11, slow_s=SLOW_S)

    result = run_sweep(config, backend=backend)
    fake.chaos = Chaos()  # the checks below talk to the fake too

    trials = open_study(config).get_trials()
    assert (result.n_complete, result.n_failed, result.is_failed) == (N_TRIALS, 0, False), \
        result.stop_reason
    assert [t.state for t in trials] == [TrialState.COMPLETE] * N_TRIALS
    counts = Counter(created(fake))
    assert max(counts.values()) == 1, counts
    assert sorted(counts) == sorted(derived_id(fake, t.user_attrs[ts.ATTR_KEY])
                                    for t in trials)
    assert check_mlflow(config, trials, backend=backend) > 0
    assert "Traceback" not in caplog.text


def test_every_fault_kind_was_injected_and_is_reported_in_words(
        gemini, mlflow_template, tmp_path, caplog) -> None:
    """The same sweep on the Gemini API, checked for what the user is told."""
    caplog.set_level(logging.DEBUG)
    backend = gemini_backend(gemini)
    config = sweep_config(tmp_path, backend, mlflow_template)
    chaos = gemini.chaos = Chaos(rate=0.3, seed=5, slow_s=SLOW_S, round_robin=True)
    with backend:
        result = run_sweep(config, backend=backend)
    assert result.n_complete == N_TRIALS, result.stop_reason
    assert set(chaos.injected) == set(WORDS), chaos.injected  # all five kinds happened
    warnings = "\n".join(r.getMessage() for r in caplog.records
                         if r.levelno == logging.WARNING)
    missing = {kind: words for kind, words in WORDS.items() if words not in warnings}
    assert missing == {}, warnings[-3000:]
    assert KEY not in caplog.text


def test_a_service_that_keeps_refusing_stops_the_sweep_with_the_reason(
        gemini, mlflow_template, tmp_path) -> None:
    backend = gemini_backend(gemini, max_retries=1)
    config = sweep_config(tmp_path, backend, mlflow_template, max_consecutive_failures=2)
    gemini.inject(503, count=10_000, method="POST", path_contains="/tunedModels")
    with backend:
        result = run_sweep(config, backend=backend)
    assert result.is_failed and result.n_complete == 0
    assert "2 trials failed in a row" in result.stop_reason
    assert "submit failed" in result.stop_reason and "503" in result.stop_reason
    failed = open_study(config).get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 2
    for trial in failed:
        assert "UNAVAILABLE" in trial.user_attrs[ts.ATTR_FAIL_REASON]
    assert gemini.state.tuned == {}  # nothing was created, nothing paid
