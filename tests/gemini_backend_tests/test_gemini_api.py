"""The Gemini API backend against a fake ``tunedModels`` service on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr
from pydantic import ValidationError

from gemini_backend import AuthError
from gemini_backend import Example
from gemini_backend import InvalidRequestError
from gemini_backend import JobNotFound
from gemini_backend import JobRequest
from gemini_backend import JobState
from gemini_backend import TransientError
from gemini_backend import create_backend
from gemini_backend.gemini_api._wire import TUNED_MODEL_ID_PATTERN
from gemini_backend.gemini_api._wire import parse_snapshots
from gemini_backend.gemini_api.backend import GeminiApiBackend
from gemini_backend.gemini_api.backend import GeminiApiBackendConfig
from gemini_backend.gemini_api.backend import tuned_model_body
from gemini_backend.gemini_api.backend import tuned_model_id
from tests.gemini_backend_tests.contract import BackendContract
from tests.gemini_backend_tests.contract import wait_terminal
from tests.gemini_backend_tests.fake_gemini_api import FakeGeminiApi

API_KEY = "AIzaSy-test-secret-4f1e9c"
TUNABLE = "models/gemini-1.5-flash-001-tuning"


class ManualClock:
    """Simulated time for the fake: jobs advance only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def request_for(key: str, *, epochs: int = 2, n: int = 20, **changes: object) -> JobRequest:
    train = tuple(Example(text_input=str(i), output=str(i + 1)) for i in range(n))
    request = JobRequest(train=train, epochs=epochs, learning_rate_multiplier=1.0,
                         base_model=TUNABLE, display_name=f"test {key}",
                         idempotency_key=key, batch_size=4)
    return dataclasses.replace(request, **changes)


def backend_for(fake: FakeGeminiApi, sleeps: list[float] | None = None,
                **config: object) -> GeminiApiBackend:
    settings: dict[str, object] = {"base_url": fake.url, "api_key": API_KEY,
                                   "poll_interval_s": 0.05, **config}
    return GeminiApiBackend(GeminiApiBackendConfig(**settings),
                            sleep=sleeps.append if sleeps is not None else lambda s: None)


@pytest.fixture
def fake():
    with FakeGeminiApi(api_key=API_KEY, epoch_s=0.1) as server:
        yield server


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def slow_fake(clock):
    """Jobs advance only with ``clock``: 5 s queued, then 10 s per epoch (5 steps each)."""
    with FakeGeminiApi(api_key=API_KEY, epoch_s=10.0, queue_s=5.0, clock=clock) as server:
        yield server


class TestGeminiApiContract(BackendContract):
    terminal_timeout_s = 20.0

    @pytest.fixture
    def backend(self, fake):
        with backend_for(fake) as backend:
            yield backend

    @pytest.fixture
    def make_request(self):
        return request_for

    @pytest.fixture
    def reopen(self, fake):
        return lambda: backend_for(fake)


def test_a_job_goes_queued_running_succeeded_with_its_curve(slow_fake, clock) -> None:
    backend = backend_for(slow_fake)
    ref = backend.submit(request_for("life", epochs=2))
    assert ref.job_id == f"tunedModels/{tuned_model_id('life')}"
    assert backend.poll(ref).state is JobState.QUEUED
    clock.advance(5 + 10)
    running = backend.poll(ref)
    assert running.state is JobState.RUNNING
    assert [(s.step, s.epoch) for s in running.snapshots] == [(i, 1) for i in range(1, 6)]
    assert running.progress == pytest.approx(0.5)
    clock.advance(10)
    done = backend.poll(ref)
    assert done.state is JobState.SUCCEEDED
    assert done.tuned_model == ref.job_id
    assert [s.step for s in done.snapshots] == list(range(1, 11))
    assert {s.epoch for s in done.snapshots} == {1, 2}
    assert done.snapshots[-1].loss < done.snapshots[0].loss


def test_the_create_call_follows_the_wire_format(fake) -> None:
    backend = backend_for(fake)
    backend.submit(request_for("wire", epochs=3, learning_rate_multiplier=0.5))
    (create,) = fake.creates()
    assert create["query"] == {"tunedModelId": tuned_model_id("wire")}
    assert create["headers"]["x-goog-api-key"] == API_KEY
    assert create["body"]["baseModel"] == TUNABLE
    assert create["body"]["displayName"] == "test wire"
    task = create["body"]["tuningTask"]
    assert task["hyperparameters"] == {"epochCount": 3, "batchSize": 4,
                                       "learningRateMultiplier": 0.5}
    examples = task["trainingData"]["examples"]["examples"]
    assert examples[0] == {"textInput": "0", "output": "1"} and len(examples) == 20


def test_use_learning_rate_sends_learning_rate_and_never_the_multiplier(fake) -> None:
    backend = backend_for(fake, use_learning_rate=0.002)
    backend.submit(request_for("lr", learning_rate_multiplier=0.5))
    hyper = fake.creates()[0]["body"]["tuningTask"]["hyperparameters"]
    assert hyper["learningRate"] == pytest.approx(0.001)
    assert "learningRateMultiplier" not in hyper


def test_a_failed_job_is_failed_with_the_service_message(fake) -> None:
    fake.fail_next(message="Tuning failed: the examples could not be tokenized")
    backend = backend_for(fake)
    ref = backend.submit(request_for("fails", epochs=2))
    status = wait_terminal(backend, ref, 20)
    assert status.state is JobState.FAILED
    assert "could not be tokenized" in (status.error_message or "")
    assert 0 < len(status.snapshots) < 10


def test_cancel_then_delete(slow_fake, clock) -> None:
    backend = backend_for(slow_fake)
    ref = backend.submit(request_for("cancel-me", epochs=2))
    clock.advance(5 + 12)
    backend.cancel(ref)
    status = backend.poll(ref)
    assert status.state is JobState.CANCELLED
    assert [s.epoch for s in status.snapshots] == [1] * 5 + [2]  # 6 steps of 2 s
    (cancel,) = slow_fake.requests(method="POST")[1:]
    assert cancel["path"].startswith(f"/v1/{ref.job_id}/operations/")
    assert cancel["path"].endswith(":cancel")
    backend.delete_tuned_model(ref)
    assert backend.find("cancel-me") is None
    with pytest.raises(JobNotFound):
        backend.poll(ref)
    backend.delete_tuned_model(ref)  # already gone: not an error


def test_429_bursts_are_retried_honouring_retry_delay(fake) -> None:
    sleeps: list[float] = []
    backend = backend_for(fake, sleeps)
    ref = backend.submit(request_for("quota"))
    fake.inject(429, count=3, retry_delay_s=7, method="GET", path_contains=ref.job_id)
    before = len(fake.requests(method="GET", path=f"/v1beta/{ref.job_id}"))
    assert backend.poll(ref).state in (JobState.RUNNING, JobState.SUCCEEDED)
    after = len(fake.requests(method="GET", path=f"/v1beta/{ref.job_id}"))
    assert after - before == 4
    assert len(sleeps) == 3 and all(delay >= 7 for delay in sleeps)


def test_503s_on_create_are_retried_and_make_one_model(fake) -> None:
    sleeps: list[float] = []
    backend = backend_for(fake, sleeps)
    fake.inject(503, count=2, method="POST", path_contains="/v1beta/tunedModels")
    ref = backend.submit(request_for("flaky"))
    assert len(fake.creates()) == 3 and len(sleeps) == 2
    assert [m["name"] for m in backend.list_tuned_models()] == [ref.job_id]


def test_retries_give_up_after_max_retries(fake) -> None:
    sleeps: list[float] = []
    backend = backend_for(fake, sleeps, max_retries=2)
    fake.inject(503, count=10, method="GET")
    with pytest.raises(TransientError):
        backend.find("anything")
    assert len(fake.requests(method="GET")) == 3 and len(sleeps) == 2


def test_a_lost_create_response_is_retried_and_attaches_on_409(fake) -> None:
    backend = backend_for(fake)
    fake.inject(503, method="POST", path_contains="/v1beta/tunedModels", after=True)
    ref = backend.submit(request_for("ambiguous"))
    assert len(fake.creates()) == 2
    assert [m["name"] for m in backend.list_tuned_models()] == [ref.job_id]
    assert wait_terminal(backend, ref, 20).state is JobState.SUCCEEDED


def test_a_400_names_the_field_and_is_not_retried(fake) -> None:
    backend = backend_for(fake)
    fake.inject(400, method="POST", field="tuned_model.tuning_task.hyperparameters.batch_size")
    with pytest.raises(InvalidRequestError, match="hyperparameters.batch_size"):
        backend.submit(request_for("bad-batch"))
    assert len(fake.creates()) == 1


def test_insufficient_scopes_gets_the_advice(fake) -> None:
    backend = backend_for(fake)
    fake.inject(403, scopes=True)
    with pytest.raises(AuthError) as raised:
        backend.preflight()
    message = str(raised.value)
    assert "ACCESS_TOKEN_SCOPE_INSUFFICIENT" in message
    assert "generative-language.tuning" in message and "API key" in message
    assert len(fake.requests()) == 1


def test_a_wrong_api_key_is_an_auth_error_without_the_key(fake) -> None:
    backend = backend_for(fake, api_key="AIza-wrong-key-123")
    with pytest.raises(AuthError) as raised:
        backend.find("k")
    assert "API key" in str(raised.value) and "wrong-key" not in str(raised.value)


def test_tuned_models_and_models_are_paginated(fake) -> None:
    backend = backend_for(fake)
    refs = {backend.submit(request_for(f"page-{i}")).job_id for i in range(3)}
    assert {m["name"] for m in backend.list_tuned_models(page_size=2)} == refs
    pages = fake.requests(method="GET", path="/v1beta/tunedModels")
    assert [p["query"].get("pageToken") for p in pages] == [None, "2"]
    assert backend.tunable_base_models(page_size=1) == [TUNABLE]
    assert len(fake.requests(path="/v1beta/models")) == 3


def test_generate_with_the_tuned_model(fake) -> None:
    backend = backend_for(fake)
    ref = backend.submit(request_for("gen", epochs=1))
    wait_terminal(backend, ref, 20)
    assert backend.generate(ref, ["41", "roman"]) == ["42", "ROMAN"]
    call = fake.requests(path=f"/v1beta/{ref.job_id}:generateContent")[0]
    assert call["body"] == {"contents": [{"role": "user", "parts": [{"text": "41"}]}]}


def test_preflight_without_a_tunable_model_points_to_vertex() -> None:
    with FakeGeminiApi(api_key=API_KEY, tunable_models=()) as empty:
        with pytest.raises(InvalidRequestError) as raised:
            backend_for(empty).preflight()
    message = str(raised.value)
    assert "no model" in message and "May 2025" in message and "kind: vertex" in message


def test_preflight_names_the_tunable_models_when_ours_is_not(fake) -> None:
    backend_for(fake).preflight()
    with pytest.raises(InvalidRequestError, match=f"tunable models: {TUNABLE}"):
        backend_for(fake, base_model="gemini-2.5-flash").preflight()


def test_the_api_key_is_only_a_header_never_logged_or_raised(fake, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    backend = backend_for(fake)
    fake.inject(503, method="GET", count=1)
    ref = backend.submit(request_for("secret"))
    wait_terminal(backend, ref, 20)
    fake.inject(403, scopes=True)
    with pytest.raises(AuthError) as raised:
        backend.poll(ref)
    texts = [caplog.text, str(raised.value), repr(backend.config),
             backend.config.model_dump_json()]
    assert all(API_KEY not in text for text in texts)
    assert all("key" not in call["query"] for call in fake.requests())
    assert all(call["headers"].get("x-goog-api-key") == API_KEY for call in fake.requests())


@pytest.mark.parametrize("change, where", [
    ({"n": 19}, "at least 20"),
    ({"train": (Example(text_input="x" * 40_001, output="y"),) * 20}, r"train\[0\].text_input"),
    ({"train": (Example(text_input="x", output="y" * 5_001),) * 20}, r"train\[0\].output"),
    ({"train": (Example(text_input="x" * 39_000, output="y"),) * 110}, r"4\.\d\d MB"),
    ({"train": (Example(text_input="a", output="b"),) * 19 + (Example(output="c"),)},
     r"train\[19\]"),
])
def test_seed_limits_are_checked_before_any_http(fake, change, where) -> None:
    n = change.pop("n", 20)
    with pytest.raises(InvalidRequestError, match=where):
        backend_for(fake).submit(request_for("limits", n=n, **change))
    assert fake.requests() == []


@pytest.mark.parametrize("key", ["study:trial-3", "7 starts with a digit", "A_b", "a-b",
                                 "x" * 200, "---", "Ünïcödé trial 12"])
def test_tuned_model_ids_are_valid_and_deterministic(key) -> None:
    model_id = tuned_model_id(key)
    assert TUNED_MODEL_ID_PATTERN.match(model_id) and len(model_id) <= 40
    assert tuned_model_id(key) == model_id
    assert tuned_model_id(key + "!") != model_id


def test_a_long_display_name_is_shortened_and_accepted(fake) -> None:
    long_name = "next-number sweep with a very long name, trial 117"
    backend_for(fake).submit(request_for("long", display_name=long_name))
    sent = fake.creates()[0]["body"]["displayName"]
    assert len(sent) <= 40 and sent.endswith("trial 117")
    body = tuned_model_body(request_for("pure", display_name=long_name))
    assert body["displayName"] == sent


def test_oauth_credentials_send_a_bearer_token_and_quota_project() -> None:
    from google.oauth2.credentials import Credentials

    credentials = Credentials(token="user-token-abc", quota_project_id="my-project")
    with FakeGeminiApi(api_key=API_KEY, tokens=("user-token-abc",)) as server:
        config = GeminiApiBackendConfig(base_url=server.url)
        GeminiApiBackend(config, credentials=credentials).preflight()
        (call,) = server.requests()
    assert call["headers"]["authorization"] == "Bearer user-token-abc"
    assert call["headers"]["x-goog-user-project"] == "my-project"
    assert "x-goog-api-key" not in call["headers"]


def test_a_service_account_file_gets_a_token_with_the_tuning_scope(tmp_path, monkeypatch) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.oauth2 import service_account

    # Recent google-auth (2.62 here) looks up a "regional access boundary" at iamcredentials
    # .googleapis.com after a service-account token refresh; tests stay on 127.0.0.1.
    monkeypatch.setattr(service_account.Credentials,
                        "_is_regional_access_boundary_lookup_required", lambda self: False,
                        raising=False)

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    with FakeGeminiApi(api_key=API_KEY, tokens=("sa-token-from-fake",)) as server:
        (tmp_path / "sa.json").write_text(json.dumps({
            "type": "service_account", "project_id": "p", "private_key_id": "1",
            "private_key": pem, "client_email": "sweep@p.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": f"{server.url}/token"}))
        config = GeminiApiBackendConfig(base_url=server.url, credentials_file=Path("sa.json"))
        backend = create_backend(config, base_dir=tmp_path)
        assert server.requests() == []  # building the backend touched nothing
        backend.preflight()
        token_call, models_call = server.requests()
    assert token_call["path"] == "/token"
    assertion = parse_qs(token_call["body"])["assertion"][0]
    payload = assertion.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert set(claims["scope"].split()) == {
        "https://www.googleapis.com/auth/generative-language.tuning",
        "https://www.googleapis.com/auth/cloud-platform"}
    assert models_call["headers"]["authorization"] == "Bearer sa-token-from-fake"


def test_a_named_key_variable_must_be_set(fake) -> None:
    config = GeminiApiBackendConfig(base_url=fake.url, api_key_env="MY_GEMINI_KEY")
    with pytest.raises(AuthError, match="MY_GEMINI_KEY"):
        GeminiApiBackend(config, environ={}).find("k")
    GeminiApiBackend(config, environ={"MY_GEMINI_KEY": API_KEY}).find("k")
    default = GeminiApiBackendConfig(base_url=fake.url)
    GeminiApiBackend(default, environ={"GOOGLE_API_KEY": API_KEY}).find("k")
    assert fake.requests()[-1]["headers"]["x-goog-api-key"] == API_KEY


def test_config_rejects_two_credentials_without_echoing_the_secret() -> None:
    with pytest.raises(ValidationError) as raised:
        GeminiApiBackendConfig(api_key=SecretStr(API_KEY), credentials_file=Path("sa.json"))
    assert "only one of" in str(raised.value) and API_KEY not in str(raised.value)


def test_capabilities() -> None:
    caps = GeminiApiBackend(GeminiApiBackendConfig(poll_interval_s=45)).capabilities
    assert caps.knobs == {"epochs", "batch_size", "learning_rate_multiplier"}
    assert not caps.has_validation_loss and caps.can_generate
    assert (caps.poll_interval_s, caps.max_poll_interval_s) == (45, 300)


def test_snapshots_numbered_from_zero_are_made_one_based() -> None:
    raw = [{"step": 2, "epoch": 1, "meanLoss": 1.0}, {"step": 1, "epoch": 0, "meanLoss": 2.0},
           {"step": "3", "epoch": "2", "meanLoss": 0.5}]
    assert [(s.step, s.epoch) for s in parse_snapshots(raw)] == [(1, 1), (2, 2), (3, 3)]
    assert [s.epoch for s in parse_snapshots(raw, epoch_count=2)] == [1, 2, 2]


def test_the_shipped_config_validates(repo_root) -> None:
    from sweeps.config.schema import load_config

    config = load_config(repo_root / "configs" / "gemini_api.yaml")
    assert isinstance(config.backend, GeminiApiBackendConfig)
    assert config.backend.base_model == TUNABLE


def test_the_fake_runs_as_a_process_and_exposes_its_request_log(tmp_path) -> None:
    import subprocess
    import sys
    import time

    import requests

    from tests.conftest import REPO_ROOT

    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.gemini_backend_tests.fake_gemini_api", "--port-file",
         str(port_file), "--state-file", str(tmp_path / "state.json"), "--api-key", API_KEY,
         "--epoch-s", "0.05"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        backend = GeminiApiBackend(GeminiApiBackendConfig(base_url=url, api_key=API_KEY))
        ref = backend.submit(request_for("process"))
        log = requests.get(f"{url}/_admin/requests", params={"method": "POST"}, timeout=5)
        (create,) = log.json()["requests"]
        assert create["query"]["tunedModelId"] == ref.job_id.split("/")[1]
    finally:
        process.kill()
        process.wait()
    saved = json.loads((tmp_path / "state.json").read_text())
    assert list(saved["tuned"]) == [ref.job_id.split("/")[1]]
