"""The Vertex backend in the worlds Google's docs allow and the fake now enforces.

One test (or a few) per world: jobs over 10 epochs (about ten checkpoints, spread), jobs over
10,000 steps (``timeSeries:read`` samples unless asked for all), an account holding only
the object roles docs/vertex.md names, TensorBoard runs not named after the experiment
(found only through the ``-tb-run`` artifact), and a job list that lags creates.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterator

import pytest
import requests

from gemini_backend import AuthError
from gemini_backend import Example
from gemini_backend import InvalidRequestError
from gemini_backend import JobState
from gemini_backend import TransientError
from gemini_backend.vertex._creates import CreateAttempt
from gemini_backend.vertex._creates import next_check_delay
from gemini_backend.vertex._creates import settle_time
from gemini_backend.vertex._metrics import EpochMap
from gemini_backend.vertex._wire import CheckpointPayload
from gemini_backend.vertex._wire import map_state
from tests.gemini_backend_tests.fake_vertex import FakeVertex
from tests.gemini_backend_tests.test_vertex import loopback_only  # noqa: F401 (fixture)
from tests.gemini_backend_tests.test_vertex import make_backend
from tests.gemini_backend_tests.test_vertex import make_request


@pytest.fixture
def fake() -> Iterator[FakeVertex]:
    with FakeVertex() as server:
        server.freeze()
        yield server


def run_to_end(fake: FakeVertex) -> None:
    fake.advance(10_000.0)


def service_epochs(fake: FakeVertex) -> dict[str, list[float]]:
    return next(iter(fake.epoch_losses().values()))


def epoch_means(snapshots) -> list[float]:  # type: ignore[no-untyped-def]
    by_epoch: dict[int, list[float]] = {}
    for snapshot in snapshots:
        by_epoch.setdefault(snapshot.epoch, []).append(snapshot.loss)
    return [statistics.fmean(by_epoch[e]) for e in sorted(by_epoch)]


# --- over 10 epochs: checkpoints spread, epochs from each checkpoint's own fields ----------


def test_a_12_epoch_job_records_every_loss_on_its_own_epoch(fake: FakeVertex) -> None:
    backend = make_backend(fake)
    ref = backend.submit(make_request("twelve", epochs=12))
    run_to_end(fake)
    status = backend.poll(ref)
    truth = service_epochs(fake)

    assert status.state is JobState.SUCCEEDED
    assert [c.epoch for c in status.checkpoints] == [1, 2, 4, 5, 6, 7, 8, 10, 11, 12]
    job = next(iter(fake.jobs.values()))
    assert [(s.step, s.epoch) for s in status.snapshots] == [
        (step, job.epoch_of(step)) for step in range(1, 12 * job.steps_per_epoch + 1)]
    assert epoch_means(status.snapshots) == pytest.approx(truth["train"])
    assert [s.eval_loss for s in status.snapshots if s.eval_loss is not None] == \
        pytest.approx(truth["eval"])


def test_epochs_between_spread_checkpoints_share_the_steps_evenly() -> None:
    # Checkpoints at epochs 2 and 4 only (3 steps an epoch): steps 7-9 are epoch 3, not 4.
    checkpoints = [CheckpointPayload(checkpointId="a", epoch="2", step="6"),
                   CheckpointPayload(checkpointId="b", epoch="4", step="12")]
    epochs = EpochMap.build(checkpoints=checkpoints, tuning_step_count=None, epochs=5,
                            last_step=15, is_finished=True)
    assert [epochs.epoch_of(step) for step in range(1, 16)] == [
        1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]


# --- over 10,000 steps: every point read -------------------------------------------------


def test_a_job_of_11700_steps_keeps_every_point(fake: FakeVertex) -> None:
    fake.steps_per_epoch = 11_700
    backend = make_backend(fake)
    ref = backend.submit(make_request("long", epochs=1))
    run_to_end(fake)
    status = backend.poll(ref)
    steps = [s.step for s in status.snapshots]
    assert steps == list(range(1, 11_701))  # the first and last step included
    reads = fake.recorded("GET", ":read")
    assert reads and all(r.query["maxDataPoints"] == ["-1"] for r in reads)


def test_the_fake_samples_a_read_that_does_not_ask_for_all(fake: FakeVertex) -> None:
    fake.steps_per_epoch = 11_700
    make_backend(fake).submit(make_request("sampled", epochs=1))
    run_to_end(fake)
    job = next(iter(fake.jobs.values()))
    url = f"{fake.url}/v1/{job.tensorboard_run}/timeSeries/0:read"
    headers = {"Authorization": "Bearer x"}
    default = requests.get(url, headers=headers, timeout=30).json()
    most = requests.get(url, headers=headers, params={"maxDataPoints": 20_000},
                        timeout=30).json()
    assert len(default["timeSeriesData"]["values"]) == 1000
    assert len(most["timeSeriesData"]["values"]) == 10_000


# --- only the object roles the docs name ------------------------------------------------


def test_object_roles_alone_pass_the_preflight_and_run_a_job(fake: FakeVertex) -> None:
    # The fake's caller holds roles/storage.objectCreator + objectViewer: no buckets.get.
    bucket = requests.get(f"{fake.url}/storage/v1/b/test-bucket",
                          headers={"Authorization": "Bearer x"}, timeout=5)
    assert bucket.status_code == 403
    backend = make_backend(fake)
    backend.preflight()
    ref = backend.submit(make_request("objects-only", epochs=1))
    run_to_end(fake)
    assert backend.poll(ref).state is JobState.SUCCEEDED


def test_a_missing_permission_is_one_clear_error_before_any_job() -> None:
    with FakeVertex(storage_roles=("roles/storage.objectCreator",)) as fake:
        with pytest.raises(AuthError) as error:
            make_backend(fake).preflight()
        assert "storage.objects.get, storage.objects.list" in error.value.message
        assert "roles/storage.objectViewer" in error.value.message
        assert fake.recorded("POST", "/tuningJobs") == []


# --- TensorBoard runs found through documented links only -------------------------------


def test_the_curve_is_found_through_the_tb_run_artifact(fake: FakeVertex) -> None:
    backend = make_backend(fake)
    ref = backend.submit(make_request("linked", epochs=2))
    run_to_end(fake)
    status = backend.poll(ref)
    job = next(iter(fake.jobs.values()))
    assert job.tb_run_id not in job.experiment and job.run_id not in job.tensorboard_run
    assert epoch_means(status.snapshots) == pytest.approx(service_epochs(fake)["train"])
    assert fake.recorded("GET", f"/artifacts/{job.run_id}-tb-run")


def test_a_curve_that_cannot_be_found_warns_at_once_and_fails_at_the_end(
    fake: FakeVertex, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    fake.tb_links_missing = True
    backend = make_backend(fake)
    ref = backend.submit(make_request("unlinked", epochs=2))
    fake.advance(fake.timing.queued_s + fake.timing.pending_s + 2 * fake.timing.step_s)
    running = backend.poll(ref)
    backend.poll(ref)
    job = next(iter(fake.jobs.values()))
    assert running.state is JobState.RUNNING
    warnings = [r.getMessage() for r in caplog.records if "-tb-run" in r.getMessage()]
    assert len(warnings) == 1  # at once, and once
    assert ref.job_id in warnings[0] and f"{job.run_id}-tb-run" in warnings[0]

    run_to_end(fake)
    ended = backend.poll(ref)
    assert ended.state is JobState.FAILED
    assert "loss curve cannot be found" in (ended.error_message or "")
    assert f"{job.run_id}-tb-run" in (ended.error_message or "")


# --- a job list that lags creates -------------------------------------------------------


def test_a_lost_create_response_is_not_posted_again_while_the_list_lags(
    fake: FakeVertex,
) -> None:
    fake.list_lag_s = 3.0
    fake.inject(503, method="POST", path_contains="/tuningJobs", apply_first=True)
    backend = make_backend(fake, list_lag_window_s=5.0, timeout_s=1.0)
    backend._clock = fake.now  # the records and the lag on one clock
    with pytest.raises(TransientError, match="unknown"):
        backend.submit(make_request("lagged"))
    restarted = make_backend(fake, list_lag_window_s=5.0, timeout_s=1.0)
    restarted._clock = fake.now
    for _ in range(3):  # a restarted sweep continues the same wait
        with pytest.raises(TransientError, match="not creating again"):
            restarted.submit(make_request("lagged"))
        fake.advance(0.9)
    fake.advance(0.5)  # 3.2 s after the create: the list shows the job
    ref = restarted.submit(make_request("lagged"))
    assert len(fake.jobs) == 1 and len(fake.recorded("POST", "/tuningJobs")) == 1
    assert ref.job_id == next(iter(fake.jobs.values())).name


def test_a_create_proven_absent_after_the_window_is_posted_again(fake: FakeVertex) -> None:
    fake.list_lag_s = 3.0
    fake.inject(503, method="POST", path_contains="/tuningJobs")  # refused, not applied
    backend = make_backend(fake, list_lag_window_s=5.0, timeout_s=1.0)
    backend._clock = fake.now
    with pytest.raises(TransientError):
        backend.submit(make_request("absent"))
    fake.advance(5.9)
    with pytest.raises(TransientError, match="not creating again"):
        backend.submit(make_request("absent"))
    fake.advance(0.2)  # past timeout + window: proven absent
    backend.submit(make_request("absent"))
    assert len(fake.jobs) == 1 and len(fake.recorded("POST", "/tuningJobs")) == 2


# --- smaller: adapter size per model, no empty parts, paused is in flight ----------------


def test_adapter_size_is_checked_against_the_base_model_before_any_call(
    fake: FakeVertex,
) -> None:
    with pytest.raises(InvalidRequestError, match=r"\[1, 2, 4, 8, 16\]"):
        make_backend(fake).submit(make_request("a32", extra_knobs={"adapter_size": 32}))
    with pytest.raises(InvalidRequestError, match=r"\[1, 4\]"):
        make_backend(fake).submit(make_request(
            "pro8", base_model="gemini-1.5-pro-002", extra_knobs={"adapter_size": 8}))
    assert fake.requests == []


def test_an_output_only_example_is_refused_not_sent_with_an_empty_part(
    fake: FakeVertex,
) -> None:
    train = tuple(Example(text_input=f"q{i}", output=f"a{i}") for i in range(21))
    train += (Example(output="orphan answer"),)
    with pytest.raises(InvalidRequestError, match="example 22 .* empty text_input"):
        make_backend(fake).submit(make_request("empty", train=train))
    assert fake.requests == []


def test_a_paused_job_is_still_in_flight() -> None:
    assert map_state("JOB_STATE_PAUSED") is JobState.RUNNING
    assert not map_state("JOB_STATE_PAUSED").is_terminal()


def test_an_unproven_create_is_checked_at_growing_intervals_then_proven_absent() -> None:
    attempt = CreateAttempt(1, posted_at=1000.0)
    timing = {"request_timeout_s": 60.0, "window_s": 60.0}
    checks, now = [], 1000.0
    while now < settle_time(attempt, **timing):
        now += next_check_delay(attempt, now, **timing)
        checks.append(now - attempt.posted_at)
    assert checks == [15.0, 30.0, 60.0, 120.0]


def test_the_fake_refuses_what_the_backend_no_longer_sends(fake: FakeVertex) -> None:
    fake.objects[("test-bucket", "empty.jsonl")] = (
        b'{"contents":[{"role":"user","parts":[{"text":""}]},'
        b'{"role":"model","parts":[{"text":"a"}]}]}\n')
    fake.objects[("test-bucket", "ok.jsonl")] = (
        b'{"contents":[{"role":"user","parts":[{"text":"q"}]},'
        b'{"role":"model","parts":[{"text":"a"}]}]}\n')
    url = f"{fake.url}/v1/{fake.parent}/tuningJobs"

    def create(dataset: str, adapter: str) -> requests.Response:
        body = {"baseModel": "gemini-2.5-flash", "supervisedTuningSpec": {
            "trainingDatasetUri": f"gs://test-bucket/{dataset}",
            "hyperParameters": {"epochCount": "1", "adapterSize": adapter}}}
        return requests.post(url, json=body, headers={"Authorization": "Bearer x"}, timeout=5)

    assert "empty text part" in create("empty.jsonl", "ADAPTER_SIZE_FOUR").text
    assert create("ok.jsonl", "ADAPTER_SIZE_THIRTY_TWO").status_code == 400
    assert create("ok.jsonl", "ADAPTER_SIZE_FOUR").status_code == 200


def test_a_paused_job_is_polled_as_running_then_finishes(fake: FakeVertex) -> None:
    backend = make_backend(fake)
    ref = backend.submit(make_request("paused", epochs=2))
    fake.advance(fake.timing.queued_s + fake.timing.pending_s + 2 * fake.timing.step_s)
    job = next(iter(fake.jobs.values()))
    job.pause = (fake.now(), fake.now() + 100.0)
    fake.advance(1.0)
    paused = backend.poll(ref)
    assert fake.job_list()[0]["state"] == "JOB_STATE_PAUSED"
    assert paused.state is JobState.RUNNING and paused.epochs_completed == 1
    run_to_end(fake)
    assert backend.poll(ref).state is JobState.SUCCEEDED
    assert fake.recorded("POST", ":cancel") == []
