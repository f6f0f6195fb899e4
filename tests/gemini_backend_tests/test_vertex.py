"""The Vertex AI backend against a fake Vertex AI + Cloud Storage on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import requests
from google.oauth2.credentials import Credentials
from pydantic import ValidationError

from gemini_backend import AuthError
from gemini_backend import Checkpoint
from gemini_backend import Example
from gemini_backend import InvalidRequestError
from gemini_backend import JobNotFound
from gemini_backend import JobRequest
from gemini_backend import JobState
from gemini_backend import QuotaError
from gemini_backend.transport.http import RestClient
from gemini_backend.vertex._gcs import GcsUploader
from gemini_backend.vertex._metrics import EpochMap
from gemini_backend.vertex._wire import KEY_LABEL
from gemini_backend.vertex._wire import REMOTE_STATES
from gemini_backend.vertex._wire import CheckpointPayload
from gemini_backend.vertex._wire import label_value
from gemini_backend.vertex._wire import map_state
from gemini_backend.vertex._wire import parse_int64
from gemini_backend.vertex.backend import VertexBackend
from gemini_backend.vertex.backend import VertexBackendConfig
from gemini_backend.vertex.backend import tuning_job_body
from gemini_backend.vertex.backend import vertex_base_url
from tests.gemini_backend_tests.contract import BackendContract
from tests.gemini_backend_tests.contract import wait_terminal
from tests.gemini_backend_tests.fake_vertex import FakeVertex
from tests.gemini_backend_tests.fake_vertex import service_account_key

TOKEN = "ya29.test-token-never-logged"
TRAIN = tuple(Example(text_input=f"question {i}?", output=f"answer {i}") for i in range(24))
VALIDATION = tuple(Example(text_input=f"held out {i}?", output=f"reply {i}") for i in range(4))
STEPS_PER_EPOCH = 3  # 24 examples / the fake's batch size of 8


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every host name resolved during a test; anything but 127.0.0.1 is refused and fails it
    (google-auth, for one, would call Google for tokens and access boundaries)."""
    resolved: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def guard(host, *args, **kwargs):  # type: ignore[no-untyped-def]
        resolved.append(str(host))
        if host != "127.0.0.1":
            raise socket.gaierror(socket.EAI_NONAME, f"test: {host} is not loopback")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guard)
    yield resolved
    assert set(resolved) <= {"127.0.0.1"}, f"the test tried to reach {set(resolved)}"


@pytest.fixture
def fake() -> Iterator[FakeVertex]:
    with FakeVertex() as server:
        yield server


def make_backend(fake: FakeVertex, *, sleeps: list[float] | None = None,
                 credentials: Credentials | None = None, **changes: object) -> VertexBackend:
    fields: dict[str, object] = {"project": "test-project", "bucket": "test-bucket",
                                 "base_url": fake.url, "storage_base_url": fake.url}
    config = VertexBackendConfig(**{**fields, **changes})  # type: ignore[arg-type]
    return VertexBackend(config, credentials=credentials or Credentials(token=TOKEN),
                         sleep=(sleeps.append if sleeps is not None else lambda _s: None))


def make_request(key: str, *, epochs: int = 2, **changes: object) -> JobRequest:
    fields: dict[str, object] = dict(
        train=TRAIN, validation=VALIDATION, epochs=epochs, learning_rate_multiplier=1.0,
        base_model="gemini-2.5-flash", display_name=f"trial-{key}", idempotency_key=key,
        extra_knobs={"adapter_size": 4}, labels={"sweep": "Demo Sweep", "trial": "3"},
    )
    fields.update(changes)
    return JobRequest(**fields)  # type: ignore[arg-type]


class TestVertexContract(BackendContract):
    terminal_timeout_s = 30.0

    @pytest.fixture
    def backend(self, fake: FakeVertex) -> Iterator[VertexBackend]:
        with make_backend(fake) as backend:
            yield backend

    @pytest.fixture
    def make_request(self):  # type: ignore[no-untyped-def]
        return make_request

    @pytest.fixture
    def reopen(self, fake: FakeVertex):  # type: ignore[no-untyped-def]
        return lambda: make_backend(fake)


# --- datasets -------------------------------------------------------------------------------


def test_dataset_is_vertex_jsonl_uploaded_once_per_content(fake: FakeVertex) -> None:
    backend = make_backend(fake, system_instruction="Answer tersely.")
    first = backend.submit(make_request("sweep-a:1"))
    backend.submit(make_request("sweep-a:2"))
    make_backend(fake, system_instruction="Answer tersely.").submit(make_request("sweep-a:3"))

    datasets = [name for _, name in fake.objects if name.startswith("gemini-sweep/datasets/")]
    assert len(datasets) == 2  # train + validation, stored once
    uploads = [u for u in fake.recorded("POST", "/upload/storage/v1/b/test-bucket/o")
               if u.query["name"][0].startswith("gemini-sweep/datasets/")]
    assert [u.query["ifGenerationMatch"] for u in uploads] == [["0"]] * len(uploads)
    assert [u.status for u in uploads] == [200, 200, 412, 412]  # the restart hit 412s only
    create = fake.recorded("POST", "/tuningJobs")[0].body
    train_uri = create["supervisedTuningSpec"]["trainingDatasetUri"]
    bucket, _, name = train_uri.removeprefix("gs://").partition("/")
    data = fake.objects[(bucket, name)]
    assert name.endswith(hashlib.sha256(data).hexdigest() + ".jsonl")
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert len(lines) == len(TRAIN)
    assert lines[5] == {
        "systemInstruction": {"role": "system", "parts": [{"text": "Answer tersely."}]},
        "contents": [{"role": "user", "parts": [{"text": "question 5?"}]},
                     {"role": "model", "parts": [{"text": "answer 5"}]}],
    }
    assert create["supervisedTuningSpec"]["validationDatasetUri"] != train_uri
    assert first.job_id.startswith("projects/test-project/locations/us-central1/tuningJobs/")


def test_large_dataset_uses_resumable_upload_and_survives_a_dropped_chunk(
    fake: FakeVertex,
) -> None:
    client = RestClient(fake.url, session=_authorised(), sleep=lambda _s: None)
    data = b"x" * (600 * 1024)
    fake.inject(503, method="PUT", path_contains="/upload/", count=1)  # first chunk lost
    uploader = GcsUploader(client, "test-bucket", resumable_threshold_bytes=1024,
                           chunk_bytes=256 * 1024)
    uri = uploader.upload_once(data, prefix="datasets")

    name = uri.removeprefix("gs://test-bucket/")
    assert fake.objects[("test-bucket", name)] == data
    starts = fake.recorded("POST", "/upload/")
    assert [s.query["uploadType"] for s in starts] == [["resumable"]]
    assert len(fake.recorded("PUT", "/upload/")) >= 4  # 3 chunks + the progress query

    again = GcsUploader(client, "test-bucket", resumable_threshold_bytes=1024,
                        chunk_bytes=256 * 1024)
    assert again.upload_once(data, prefix="datasets") == uri
    assert len(fake.recorded("POST", "/upload/")) == 1  # found by GET, not sent again


# --- create ---------------------------------------------------------------------------------


def test_create_sends_the_documented_body_with_sanitised_labels(fake: FakeVertex) -> None:
    backend = make_backend(fake)
    backend.submit(make_request("Sweep Demo/Trial#7", epochs=3))

    body = fake.recorded("POST", "/tuningJobs")[0].body
    spec = body["supervisedTuningSpec"]
    assert body["baseModel"] == "gemini-2.5-flash"
    assert spec["hyperParameters"] == {"epochCount": "3", "learningRateMultiplier": 1.0,
                                       "adapterSize": "ADAPTER_SIZE_FOUR"}
    assert spec["exportLastCheckpointOnly"] is False
    assert body["tunedModelDisplayName"] == "gemini-sweep-trial-Sweep Demo/Trial#7"
    assert body["labels"][KEY_LABEL] == label_value("Sweep Demo/Trial#7")
    assert body["labels"]["sweep"].startswith("demo-sweep-")  # changed, so hashed
    assert body["labels"]["trial"] == "3"  # already valid: kept as it is
    for key, value in body["labels"].items():
        assert re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", key) and re.fullmatch(
            r"[a-z0-9_-]{1,63}", value), (key, value)
    assert body == tuning_job_body(
        base_model="gemini-2.5-flash", training_dataset_uri=spec["trainingDatasetUri"],
        validation_dataset_uri=spec["validationDatasetUri"], epochs=3,
        learning_rate_multiplier=1.0, adapter_size=4,
        tuned_model_display_name=body["tunedModelDisplayName"], labels=body["labels"])


def test_labels_stay_unique_when_keys_sanitise_alike() -> None:
    similar = [label_value("Sweep:1"), label_value("sweep-1"), label_value("SWEEP 1")]
    assert len(set(similar)) == 3
    long_a, long_b = label_value("s" * 200 + "a"), label_value("s" * 200 + "b")
    assert long_a != long_b and len(long_a) <= 63 and len(long_b) <= 63


def test_ambiguous_create_failure_finds_the_job_instead_of_posting_again(
    fake: FakeVertex,
) -> None:
    fake.inject(503, method="POST", path_contains="/tuningJobs", apply_first=True)
    ref = make_backend(fake).submit(make_request("ambiguous"))
    assert len(fake.jobs) == 1 and ref.job_id.endswith("/" + next(iter(fake.jobs)))
    assert len(fake.recorded("POST", "/tuningJobs")) == 1


def test_create_refused_with_429_is_posted_again_each_post_written_down_first(
    fake: FakeVertex,
) -> None:
    sleeps: list[float] = []
    fake.inject(429, method="POST", path_contains="/tuningJobs", retry_after_s=0.5)
    make_backend(fake, sleeps=sleeps).submit(make_request("refused"))
    assert len(fake.jobs) == 1
    methods = [(r.method, "pageSize" in r.query) for r in fake.requests
               if r.path.endswith("/tuningJobs")]
    # find, POST (429: RESOURCE_EXHAUSTED, nothing created), POST again after the backoff.
    assert methods == [("GET", True), ("POST", False), ("POST", False)]
    assert sleeps and sleeps[0] >= 0.5
    records = sorted(name for _, name in fake.objects if "/creates/" in name)
    assert [name.rsplit("/", 1)[-1] for name in records] == ["1.json", "2.json"]


def test_batch_size_with_a_gemini_base_model_is_a_config_error(fake: FakeVertex) -> None:
    backend = make_backend(fake)
    with pytest.raises(InvalidRequestError, match="only for open models"):
        backend.check_search_space({"epochs", "batch_size"})
    with pytest.raises(InvalidRequestError, match="only for open models"):
        backend.submit(make_request("with-batch", batch_size=4))
    assert "batch_size" not in backend.capabilities.knobs
    assert fake.requests == []  # refused before any network call

    open_model = make_backend(fake, base_model="meta/llama3_1@llama-3.1-8b",
                              api_version="v1beta1")
    open_model.check_search_space({"epochs", "batch_size", "adapter_size"})
    with pytest.raises(InvalidRequestError, match="v1beta1"):
        make_backend(fake, base_model="meta/llama3_1@llama-3.1-8b").check_search_space(
            {"batch_size"})


def test_dataset_limits_are_checked_before_any_upload(fake: FakeVertex) -> None:
    too_many = tuple(Example(text_input="q", output="a") for _ in range(5001))
    with pytest.raises(InvalidRequestError, match="at most 5000"):
        make_backend(fake).submit(make_request("big-val", validation=too_many))
    with pytest.raises(InvalidRequestError, match="adapter_size"):
        make_backend(fake).submit(make_request("bad-adapter", extra_knobs={"adapter_size": 3}))
    assert fake.requests == []


# --- poll -----------------------------------------------------------------------------------


def test_lifecycle_queued_running_succeeded_with_a_tensorboard_curve(fake: FakeVertex) -> None:
    fake.freeze()
    backend = make_backend(fake)
    ref = backend.submit(make_request("life", epochs=2))
    queued = backend.poll(ref)
    assert queued.state is JobState.QUEUED and queued.snapshots == ()

    fake.advance(fake.timing.queued_s + fake.timing.pending_s + 4 * fake.timing.step_s)
    running = backend.poll(ref)
    job = next(iter(fake.jobs.values()))
    assert running.state is JobState.RUNNING
    assert [(s.step, s.epoch) for s in running.snapshots] == [(1, 1), (2, 1), (3, 1), (4, 2)]
    assert [s.loss for s in running.snapshots] == pytest.approx(
        [job.train_loss(step) for step in range(1, 5)])
    assert running.snapshots[2].eval_loss == pytest.approx(job.eval_loss(1))
    assert running.progress == pytest.approx(4 / (2 * STEPS_PER_EPOCH))

    fake.advance(1.0)
    done = backend.poll(ref)
    assert done.state is JobState.SUCCEEDED
    assert done.epochs_completed == 2 and len(done.snapshots) == 2 * STEPS_PER_EPOCH
    assert [s.eval_loss for s in done.snapshots if s.eval_loss is not None] == pytest.approx(
        [job.eval_loss(1), job.eval_loss(2)])
    assert done.checkpoints == (Checkpoint("1", 1, 3), Checkpoint("2", 2, 6))
    assert done.tuned_model and done.tuned_model.startswith("projects/test-project/")
    assert done.training_tokens == job.billable_tokens  # an int64 string, parsed
    assert fake.recorded("GET", ":read")  # the curve came from TensorBoard


def test_a_cancelled_job_ends_cancelled(fake: FakeVertex) -> None:
    fake.freeze()
    backend = make_backend(fake)
    ref = backend.submit(make_request("to-cancel", epochs=3))
    fake.advance(fake.timing.queued_s + fake.timing.pending_s + 2 * fake.timing.step_s)
    backend.cancel(ref)
    assert backend.poll(ref).state is JobState.RUNNING  # JOB_STATE_CANCELLING: in progress
    fake.advance(1.0)
    status = backend.poll(ref)
    assert status.state is JobState.CANCELLED
    assert status.error_message and "CANCELLED" in status.error_message
    assert status.epochs_completed == 1  # the curve up to the cancel is kept
    backend.cancel(ref)  # cancelling again is not an error
    assert fake.recorded("POST", ":cancel")[0].body == {}


def test_a_failed_job_reports_the_service_message(fake: FakeVertex) -> None:
    fake.fail_next("Tuning ran out of memory", after_epochs=1)
    backend = make_backend(fake)
    status = wait_terminal(backend, backend.submit(make_request("doomed", epochs=3)), 30.0)
    assert status.state is JobState.FAILED
    assert "Tuning ran out of memory" in (status.error_message or "")
    assert status.epochs_completed == 1


def test_429s_on_poll_are_retried_then_surface_as_quota_errors(fake: FakeVertex) -> None:
    sleeps: list[float] = []
    backend = make_backend(fake, sleeps=sleeps)
    ref = backend.submit(make_request("busy"))
    fake.inject(429, method="GET", path_contains="/tuningJobs/", count=2, retry_after_s=2)
    assert backend.poll(ref).state in set(JobState)
    assert len(sleeps) == 2 and min(sleeps) >= 2
    fake.inject(429, method="GET", path_contains="/tuningJobs/", count=50)
    with pytest.raises(QuotaError):
        backend.poll(ref)


def test_find_after_a_restart_pages_through_labels(fake: FakeVertex) -> None:
    backend = make_backend(fake)
    refs = [backend.submit(make_request(f"page-{i}", epochs=1)) for i in range(5)]
    restarted = make_backend(fake)
    assert [restarted.find(f"page-{i}") for i in range(5)] == refs
    fake.label_filter_supported = False  # the label filter is undocumented: fall back
    assert make_backend(fake).find("page-4") == refs[4]
    assert any("pageToken" in r.query for r in fake.recorded("GET", "/tuningJobs"))
    assert len(fake.jobs) == 5


def test_generate_uses_the_tuned_models_endpoint(fake: FakeVertex) -> None:
    fake.freeze()
    backend = make_backend(fake)
    ref = backend.submit(make_request("talk", epochs=1))
    with pytest.raises(InvalidRequestError, match="no tuned model endpoint"):
        backend.generate(ref, ["hello"])
    fake.advance(1.0)
    job_id = ref.job_id.rsplit("/", 1)[-1]
    assert backend.generate(ref, ["hello", "abc"]) == [f"[{job_id}] olleh", f"[{job_id}] cba"]
    assert fake.recorded("POST", ":generateContent")[0].path.startswith(
        "/v1/projects/test-project/locations/us-central1/endpoints/")


def test_steps_map_to_epochs_by_checkpoints_stats_or_not_at_all() -> None:
    train = [(step, 1.0 / step) for step in range(1, 9)]
    unknown = EpochMap.build(checkpoints=[], tuning_step_count=None, epochs=2, last_step=8,
                             is_finished=False)
    assert unknown.snapshots(train, []) == ()  # held back, reported by a later poll
    ended = EpochMap.build(checkpoints=[], tuning_step_count=None, epochs=2, last_step=8,
                           is_finished=True)
    assert [s.epoch for s in ended.snapshots(train, [])] == [1, 1, 1, 1, 2, 2, 2, 2]
    uneven = EpochMap.build(
        checkpoints=[CheckpointPayload(checkpointId="a", epoch="1", step="4"),
                     CheckpointPayload(checkpointId="b", epoch="2", step="7")],
        tuning_step_count=12, epochs=3, last_step=8, is_finished=False)
    snapshots = uneven.snapshots(train, [(4, 0.5), (6, 0.45), (7, 0.4)])
    assert [s.epoch for s in snapshots] == [1, 1, 1, 1, 2, 2, 2, 3]
    assert [(s.step, s.eval_loss) for s in snapshots if s.eval_loss is not None] == [
        (4, 0.5), (7, 0.4)]


def test_an_eval_point_of_a_running_epoch_waits_for_the_epoch_to_end() -> None:
    # The runner reads an eval loss as its epoch's end (a pruner may cancel on it); Vertex
    # may evaluate mid-epoch, so epoch 2's eval at step 6 shows once epoch 2 has ended.
    train = [(step, 1.0 / step) for step in range(1, 7)]
    running = EpochMap.build(checkpoints=[CheckpointPayload(checkpointId="a", epoch="1",
                                                            step="4")],
                             tuning_step_count=12, epochs=3, last_step=6, is_finished=False)
    evals = [(4, 0.5), (6, 0.45)]
    assert [(s.epoch, s.eval_loss) for s in running.snapshots(train, evals)
            if s.eval_loss is not None] == [(1, 0.5)]
    later = train + [(9, 0.1)]  # a step of epoch 3: epoch 2 is over
    assert [(s.epoch, s.eval_loss) for s in running.snapshots(later, evals)
            if s.eval_loss is not None] == [(1, 0.5), (2, 0.45)]


# --- auth, config, hosts, wire helpers ----------------------------------------------------


def test_auth_header_and_quota_project_without_logging_the_token(
    fake: FakeVertex, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    credentials = Credentials(token=TOKEN, quota_project_id="billing-project")
    make_backend(fake, credentials=credentials).submit(make_request("auth"))
    assert all(r.has_auth and r.user_project == "billing-project" for r in fake.requests)
    assert TOKEN not in caplog.text and "Bearer" not in caplog.text


def test_from_config_touches_no_network_and_missing_credentials_are_clear(
    fake: FakeVertex, tmp_path
) -> None:
    config = VertexBackendConfig(project="p", bucket="my-bucket", base_url=fake.url,
                                 credentials_file="missing-key.json")
    backend = VertexBackend.from_config(config, base_dir=tmp_path)
    assert fake.requests == []
    with pytest.raises(AuthError, match="missing-key.json"):
        backend.find("anything")


def test_a_service_account_key_file_authenticates_without_leaving_the_machine(
    fake: FakeVertex, tmp_path, caplog: pytest.LogCaptureFixture, loopback_only: list[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    key = service_account_key(fake.url)
    (tmp_path / "key.json").write_text(json.dumps(key))
    config = VertexBackendConfig(project="test-project", bucket="test-bucket",
                                 base_url=fake.url, storage_base_url=fake.url,
                                 credentials_file="key.json")  # relative to the config
    backend = VertexBackend.from_config(config, base_dir=tmp_path)
    ref = backend.submit(make_request("with-key"))
    assert backend.find("with-key") == ref
    assert fake.requests and all(r.has_auth for r in fake.requests)
    assert set(loopback_only) == {"127.0.0.1"}  # no token or IAM lookup at Google
    assert "PRIVATE KEY" not in caplog.text and key["private_key_id"] not in caplog.text


def test_preflight_names_a_missing_bucket(fake: FakeVertex) -> None:
    make_backend(fake).preflight()
    with pytest.raises(JobNotFound, match="no-such-bucket"):
        make_backend(fake, bucket="no-such-bucket").preflight()


def test_config_names_missing_fields_and_cleans_the_bucket() -> None:
    with pytest.raises(ValidationError) as error:
        VertexBackendConfig()  # type: ignore[call-arg]
    missing = {e["loc"][0] for e in error.value.errors() if e["type"] == "missing"}
    assert missing == {"project", "bucket"}
    assert VertexBackendConfig(project="p", bucket="gs://my-bucket/").bucket == "my-bucket"
    with pytest.raises(ValidationError, match="bucket name only"):
        VertexBackendConfig(project="p", bucket="gs://my-bucket/some/path")


@pytest.mark.parametrize(("location", "host"), [
    ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
    ("europe-west4", "https://europe-west4-aiplatform.googleapis.com"),
    ("global", "https://aiplatform.googleapis.com"),
    ("eu", "https://aiplatform.eu.rep.googleapis.com"),
])
def test_hosts_by_location(location: str, host: str) -> None:
    assert vertex_base_url(location) == host


@pytest.mark.parametrize(("remote", "ours"), sorted(REMOTE_STATES.items()))
def test_every_documented_state_has_a_mapping(remote: str, ours: JobState) -> None:
    assert map_state(remote) is ours


def test_in_progress_states_and_unknown_states(caplog: pytest.LogCaptureFixture) -> None:
    for remote in ("QUEUED", "PENDING", "RUNNING", "CANCELLING", "UPDATING"):
        assert not map_state(f"JOB_STATE_{remote}").is_terminal()
    assert map_state("JOB_STATE_SOMETHING_NEW", job_id="j1") is JobState.RUNNING
    assert "JOB_STATE_SOMETHING_NEW" in caplog.text


@pytest.mark.parametrize(("raw", "parsed"), [("12", 12), (12, 12), ("0", 0), (None, None),
                                             ("twelve", None), (True, None)])
def test_int64_fields_parse_from_strings_and_numbers(raw: object, parsed: int | None) -> None:
    assert parse_int64(raw) == parsed


def test_fake_runs_standalone_with_an_admin_listing() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.gemini_backend_tests.fake_vertex", "--port", str(port)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and str(port) in process.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": "Bearer x"}
        listed = requests.get(f"{url}/v1/projects/test-project/locations/us-central1/"
                              "tuningJobs", headers=headers, timeout=5)
        assert listed.status_code == 200 and listed.json() == {"tuningJobs": []}
        recorded = requests.get(f"{url}/_admin/requests", timeout=5).json()["requests"]
        assert [r["method"] for r in recorded] == ["GET"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def _authorised() -> requests.Session:
    from google.auth.transport.requests import AuthorizedSession

    return AuthorizedSession(Credentials(token=TOKEN))

