"""The replay backend: the backend contract, plus nearest-curve choice, playback in time,
cancel, jobs shared between processes, exactly-once creation and located file errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gemini_backend import BackendError
from gemini_backend import Example
from gemini_backend import InvalidRequestError
from gemini_backend import JobNotFound
from gemini_backend import JobRef
from gemini_backend import JobRequest
from gemini_backend import JobState
from gemini_backend import create_backend
from gemini_backend.replay.backend import ReplayBackend
from gemini_backend.replay.backend import ReplayBackendConfig
from gemini_backend.replay.backend import ReplayPoint
from gemini_backend.replay.backend import ReplayRecord
from gemini_backend.replay.backend import load_curves
from gemini_backend.replay.backend import write_curves_file
from tests.gemini_backend_tests.contract import BackendContract

TRAIN = tuple(Example(output=str(i + 1), text_input=str(i)) for i in range(3))


def make_record(
    multiplier: float,
    *,
    batch_size: int = 4,
    epochs: int = 3,
    steps_per_epoch: int = 2,
    duration_s: float = 6.0,
    **extra: object,
) -> ReplayRecord:
    """A record whose losses encode its multiplier, so a test can tell which one was played."""
    points = tuple(
        ReplayPoint(
            step=i + 1,
            epoch=i // steps_per_epoch + 1,
            loss=round(multiplier * 10 + batch_size + 1 / (i + 1), 6),
            eval_loss=(multiplier + 0.5) if (i + 1) % steps_per_epoch == 0 else None,
        )
        for i in range(epochs * steps_per_epoch)
    )
    params = {"epochs": epochs, "batch_size": batch_size, "learning_rate_multiplier": multiplier}
    return ReplayRecord(params=params, curve=points, duration_s=duration_s, **extra)  # type: ignore[arg-type]


def request(key: str, *, epochs: int = 2, multiplier: float = 1.0, batch_size: int | None = 4):
    return JobRequest(
        train=TRAIN, epochs=epochs, learning_rate_multiplier=multiplier, base_model="replay",
        display_name=key, idempotency_key=key, batch_size=batch_size,
    )


class FakeClock:
    """Wall-clock seconds that move only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def build(tmp_path: Path, records: list[ReplayRecord], *, time_scale: float = 1.0, clock=None):
    write_curves_file(records, tmp_path / "curves.json")
    config = ReplayBackendConfig(curves=Path("curves.json"), time_scale=time_scale)
    return ReplayBackend(config, base_dir=tmp_path, clock=clock or time.time)


GRID = [make_record(m) for m in (0.3, 1.0, 3.0)]


class TestReplayContract(BackendContract):
    terminal_timeout_s = 10.0

    @pytest.fixture
    def backend(self, tmp_path):
        return build(tmp_path, GRID, time_scale=0.01)

    @pytest.fixture
    def make_request(self):
        return lambda key, *, epochs=2: request(key, epochs=epochs)

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: build(tmp_path, GRID, time_scale=0.01)


# --- which curve is played ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "played"),
    [(1.8, 3.0), (0.6, 1.0), (0.3, 0.3), (0.01, 0.3), (50.0, 3.0)],
    ids=["1.8-is-nearer-3-in-log", "0.6-is-nearer-1-in-log", "exact", "below", "above"],
)
def test_the_nearest_multiplier_on_a_log_scale_is_played(tmp_path, asked, played) -> None:
    backend = build(tmp_path, GRID, time_scale=0)
    status = backend.poll(backend.submit(request("k", multiplier=asked)))
    expected = [p.loss for p in make_record(played).curve[:4]]
    assert [s.loss for s in status.snapshots] == expected


def test_batch_size_counts_too_and_short_records_are_skipped(tmp_path) -> None:
    records = [
        make_record(1.0, batch_size=2),
        make_record(1.0, batch_size=8),
        make_record(1.0, batch_size=16, epochs=1),  # nearest, but too short for 2 epochs
    ]
    backend = build(tmp_path, records, time_scale=0)
    near_8 = backend.poll(backend.submit(request("a", batch_size=12)))
    assert near_8.snapshots[0].loss == records[1].curve[0].loss
    near_16 = backend.poll(backend.submit(request("b", epochs=1, batch_size=12)))
    assert near_16.snapshots[0].loss == records[2].curve[0].loss


def seeded_record(seed: int) -> ReplayRecord:
    """One of several recordings of the same knobs: its eval loss tells the seed apart."""
    base = make_record(1.0)
    curve = tuple(ReplayPoint(p.step, p.epoch, p.loss + seed, eval_loss=seed) for p in base.curve)
    return ReplayRecord(params=base.params, curve=curve, duration_s=base.duration_s, seed=seed)


def test_recordings_of_the_same_knobs_are_served_by_key_each_one_again_on_resubmit(
        tmp_path) -> None:
    records = [seeded_record(seed) for seed in range(3)]
    backend = build(tmp_path / "a", records, time_scale=0)
    served = {key: backend.poll(backend.submit(request(key))).snapshots[-1].eval_loss
              for key in (f"trial-{i}" for i in range(30))}
    assert set(served.values()) == {0, 1, 2}  # every seed is played to some trial
    again = build(tmp_path / "b", records, time_scale=0)  # a new process, the same keys
    assert {key: again.poll(again.submit(request(key))).snapshots[-1].eval_loss
            for key in served} == served
    assert [r.seed for r in load_curves(write_curves_file(records, tmp_path / "c.json"))] \
        == [0, 1, 2]


def test_the_curve_is_cut_at_the_requested_epochs(tmp_path) -> None:
    record = make_record(1.0, epochs=3, tokens_per_epoch=500)
    backend = build(tmp_path, [record], time_scale=0)
    status = backend.poll(backend.submit(request("k", epochs=2)))
    assert status.state is JobState.SUCCEEDED
    assert status.epochs_completed == 2
    assert [s.loss for s in status.snapshots] == [p.loss for p in record.curve[:4]]
    assert [s.eval_loss for s in status.snapshots] == [None, 1.5, None, 1.5]
    assert status.training_tokens == 1000


def test_training_tokens_from_a_run_total_or_unknown(tmp_path) -> None:
    with_total = build(tmp_path / "a", [make_record(1.0, training_tokens=900)], time_scale=0)
    assert with_total.poll(with_total.submit(request("k", epochs=1))).training_tokens == 300
    without = build(tmp_path / "b", [make_record(1.0)], time_scale=0)
    assert without.poll(without.submit(request("k"))).training_tokens is None


def test_more_epochs_than_recorded_is_rejected_naming_the_maximum(tmp_path) -> None:
    backend = build(tmp_path, GRID, time_scale=0)
    with pytest.raises(InvalidRequestError, match="at most 3 epochs"):
        backend.submit(request("too-long", epochs=4))
    assert backend.find("too-long") is None
    assert ReplayBackend.submission_log(backend.job_root) == []


def test_knobs_the_file_does_not_know_are_rejected(tmp_path) -> None:
    backend = build(tmp_path, [make_record(1.0, batch_size=4)], time_scale=0)
    import dataclasses

    bad = dataclasses.replace(request("k"), extra_knobs={"adapter_size": 4})
    with pytest.raises(InvalidRequestError, match="adapter_size"):
        backend.submit(bad)


# --- playback in time -----------------------------------------------------------------------


def test_points_are_revealed_as_time_passes(tmp_path) -> None:
    clock = FakeClock()
    start = clock.now
    # 6 points spread evenly over 6 s, played at half speed: one point every 0.5 s.
    backend = build(tmp_path, [make_record(1.0)], time_scale=0.5, clock=clock)
    ref = backend.submit(request("k", epochs=3))
    seen = []
    for elapsed_s in (0.0, 0.49, 0.5, 1.2, 2.99, 3.0, 100.0):
        clock.now = start + elapsed_s
        status = backend.poll(ref)
        seen.append((len(status.snapshots), status.state))
    running, done = JobState.RUNNING, JobState.SUCCEEDED
    assert seen == [(0, running), (0, running), (1, running), (2, running), (5, running),
                    (6, done), (6, done)]


def test_recorded_point_times_are_honoured(tmp_path) -> None:
    clock = FakeClock()
    start = clock.now
    times_s = (0.1, 0.2, 4.0, 4.5)
    points = tuple(ReplayPoint(step=i + 1, epoch=i // 2 + 1, loss=1.0, time_s=t)
                   for i, t in enumerate(times_s))
    record = ReplayRecord(params={"epochs": 2, "learning_rate_multiplier": 1.0},
                          curve=points, duration_s=5.0)
    backend = build(tmp_path, [record], time_scale=2.0, clock=clock)
    ref = backend.submit(request("k", epochs=2, batch_size=None))
    clock.now = start + 7.9  # before 4.0 x 2
    assert len(backend.poll(ref).snapshots) == 2
    clock.now = start + 8.0
    assert len(backend.poll(ref).snapshots) == 3


def test_time_scale_zero_finishes_at_once(tmp_path) -> None:
    backend = build(tmp_path, GRID, time_scale=0, clock=FakeClock())
    status = backend.poll(backend.submit(request("k", epochs=3)))
    assert status.state is JobState.SUCCEEDED
    assert len(status.snapshots) == 6
    assert status.progress == 1.0


def test_cancel_keeps_the_points_played_so_far(tmp_path) -> None:
    clock = FakeClock()
    start = clock.now
    backend = build(tmp_path, [make_record(1.0)], time_scale=0.5, clock=clock)
    ref = backend.submit(request("k", epochs=3))
    clock.now = start + 1.2
    backend.cancel(ref)
    clock.now = start + 100.0
    status = backend.poll(ref)
    assert status.state is JobState.CANCELLED
    assert [s.step for s in status.snapshots] == [1, 2]
    reopened = build(tmp_path, [make_record(1.0)], time_scale=0.5, clock=clock)
    assert reopened.poll(ref) == status


def test_a_cancel_by_another_process_reaches_a_backend_that_read_the_job_before(
        tmp_path) -> None:
    # Each backend keeps the jobs it parsed; a cancel written by another one (another
    # worker, or `gemini-sweep cancel`) must still show at its next poll.
    clock = FakeClock()
    start = clock.now
    polling = build(tmp_path, [make_record(1.0)], time_scale=0.5, clock=clock)
    ref = polling.submit(request("k", epochs=3))
    clock.now = start + 1.2
    assert polling.poll(ref).state is JobState.RUNNING
    build(tmp_path, [make_record(1.0)], time_scale=0.5, clock=clock).cancel(ref)
    clock.now = start + 100.0
    status = polling.poll(ref)
    assert status.state is JobState.CANCELLED
    assert [s.step for s in status.snapshots] == [1, 2]


def test_a_cancelled_job_is_billed_for_the_steps_it_trained(tmp_path) -> None:
    # As the local backend that recorded the curves reports it: 1 epoch and 1 of the 2
    # steps of the second, not 2 whole epochs.
    clock = FakeClock()
    start = clock.now
    backend = build(tmp_path, [make_record(1.0, tokens_per_epoch=1000, steps_per_epoch=2)],
                    time_scale=0.5, clock=clock)
    ref = backend.submit(request("k", epochs=3))
    clock.now = start + 1.6  # steps 1-3 played (one every second at time_scale 0.5)
    backend.cancel(ref)
    clock.now = start + 100.0
    assert [s.step for s in backend.poll(ref).snapshots] == [1, 2, 3]
    assert backend.poll(ref).training_tokens == 1500


def test_cancel_after_the_end_leaves_it_succeeded(tmp_path) -> None:
    backend = build(tmp_path, GRID, time_scale=0, clock=FakeClock())
    ref = backend.submit(request("k"))
    backend.cancel(ref)
    assert backend.poll(ref).state is JobState.SUCCEEDED


_POLL_IN_A_NEW_PROCESS = """
import json, sys
from pathlib import Path
from gemini_backend import JobRef
from gemini_backend.replay.backend import ReplayBackend, ReplayBackendConfig
config = ReplayBackendConfig(curves=Path("curves.json"), time_scale=10.0)
backend = ReplayBackend(config, base_dir=Path(sys.argv[1]))
ref = backend.find("shared")
print(json.dumps({"job_id": ref.job_id, "points": len(backend.poll(ref).snapshots)}))
"""


def test_a_new_process_sees_the_same_progress(tmp_path) -> None:
    # 80 points over 100 recorded s played 10x slower: one point every 12.5 s of real time.
    # The job "started" 500 s ago, so about 40 points are out, for minutes to come.
    record = make_record(1.0, epochs=8, steps_per_epoch=10, duration_s=100.0)
    submitter = build(tmp_path, [record], time_scale=10.0, clock=lambda: time.time() - 500.0)
    ref = submitter.submit(request("shared", epochs=8))
    observer = build(tmp_path, [record], time_scale=10.0)
    before = len(observer.poll(ref).snapshots)
    result = subprocess.run(
        [sys.executable, "-c", _POLL_IN_A_NEW_PROCESS, str(tmp_path)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    after = len(observer.poll(ref).snapshots)
    seen = json.loads(result.stdout)
    assert seen["job_id"] == ref.job_id
    assert 35 <= before <= seen["points"] <= after < 80


# --- exactly once ---------------------------------------------------------------------------


def test_duplicate_submits_log_one_creation_per_job(tmp_path) -> None:
    backends = [build(tmp_path, GRID, time_scale=0) for _ in range(4)]
    refs: list[JobRef] = []

    def submit_all(backend: ReplayBackend) -> None:
        for key in ("a", "b", "a", "c", "b"):
            refs.append(backend.submit(request(key)))

    threads = [threading.Thread(target=submit_all, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log = ReplayBackend.submission_log(tmp_path / ".gemini_sweep" / "replay_jobs")
    assert sorted(line["key"] for line in log) == ["a", "b", "c"]
    assert {r.job_id for r in refs} == {line["job_id"] for line in log}
    assert all(isinstance(line["time"], float) for line in log)


_SUBMIT_FOREVER = """
import sys
from pathlib import Path
from gemini_backend import Example, JobRequest
from gemini_backend.replay.backend import ReplayBackend, ReplayBackendConfig
backend = ReplayBackend(ReplayBackendConfig(curves=Path("curves.json"), time_scale=0),
                        base_dir=Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    backend.submit(JobRequest(train=(Example(output="1"),), epochs=1,
                              learning_rate_multiplier=1.0, base_model="replay",
                              display_name="t", idempotency_key=f"trial-{i}"))
    print(i, flush=True)
"""


def test_a_sigkilled_submitter_then_a_resubmit_pays_once_per_key(tmp_path) -> None:
    build(tmp_path, GRID, time_scale=0)  # writes curves.json
    n_keys = 60
    child = subprocess.Popen(
        [sys.executable, "-c", _SUBMIT_FOREVER, str(tmp_path), str(n_keys)],
        stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    while int(child.stdout.readline() or n_keys) < 10:
        pass  # let it submit some jobs, then kill it in the middle of its loop
    child.kill()
    child.wait(timeout=30)
    child.stdout.close()
    backend = build(tmp_path, GRID, time_scale=0)
    logged_before_kill = len(ReplayBackend.submission_log(backend.job_root))
    assert 10 <= logged_before_kill < n_keys, "the kill must land in the middle of the loop"
    for i in range(n_keys):
        backend.submit(request(f"trial-{i}", epochs=1))
    keys = [line["key"] for line in ReplayBackend.submission_log(backend.job_root)]
    assert len(keys) == len(set(keys)), "a key was submitted twice"
    # Every key has exactly one job; a kill between creating a job and logging it (a few
    # microseconds) could leave that one job unlogged, never logged twice.
    assert len(keys) >= n_keys - 1
    assert all(backend.find(f"trial-{i}") is not None for i in range(n_keys))


def test_job_ids_are_file_safe_and_distinct_for_similar_keys(tmp_path) -> None:
    backend = build(tmp_path, GRID, time_scale=0)
    first = backend.submit(request("study/trial 1"))
    second = backend.submit(request("study:trial 1"))
    assert first.job_id != second.job_id
    assert all("/" not in r.job_id and " " not in r.job_id for r in (first, second))
    with pytest.raises(JobNotFound):
        backend.poll(JobRef(backend="replay", job_id="../curves", idempotency_key="x"))


def test_a_damaged_job_file_is_named_in_the_error(tmp_path) -> None:
    backend = build(tmp_path, GRID, time_scale=0)
    ref = backend.submit(request("k"))
    job_file = backend.job_root / f"{ref.job_id}.json"
    job_file.write_text("{not json", encoding="utf-8")
    with pytest.raises(BackendError, match=re.escape(str(job_file))):
        backend.poll(ref)


# --- the curves file --------------------------------------------------------------------------


def test_written_curves_load_back_unchanged(tmp_path) -> None:
    records = [make_record(0.5, training_tokens=10), make_record(2.0, tokens_per_epoch=7)]
    path = write_curves_file(records, tmp_path / "sub" / "curves.json")
    assert load_curves(path) == records


def test_capabilities_follow_the_file(tmp_path) -> None:
    plain = ReplayRecord(
        params={"epochs": 1, "learning_rate_multiplier": 1.0, "adapter_size": 4},
        curve=(ReplayPoint(step=1, epoch=1, loss=1.0),), duration_s=1.0,
    )
    capabilities = build(tmp_path / "a", [plain], time_scale=1.0).capabilities
    assert capabilities.knobs == {"epochs", "batch_size", "learning_rate_multiplier",
                                  "adapter_size"}
    assert capabilities.has_validation_loss is False
    assert capabilities.poll_interval_s == pytest.approx(0.2)
    fast = build(tmp_path / "b", GRID, time_scale=0.1).capabilities
    assert fast.has_validation_loss is True
    assert fast.poll_interval_s == pytest.approx(0.02)
    assert fast.max_poll_interval_s == 2.0


def _good_record() -> dict:
    return make_record(1.0).to_dict()


def _with(change) -> list:
    record = _good_record()
    change(record)
    return [_good_record(), record]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[{", r"not JSON \(line 1, column 3"),
        ('{"params": {}}', "must be a JSON list"),
        ("[]", "holds no recorded trials"),
        (_with(lambda r: r.pop("curve")), r"record 1: curve: Field required"),
        (_with(lambda r: r["curve"][2].update(loss="low")), r"record 1: curve\.2\.loss"),
        (_with(lambda r: r["curve"][3].update(step=1)), r"record 1: .*curve\.3: steps must"),
        (_with(lambda r: r["params"].pop("learning_rate_multiplier")),
         r"record 1: .*learning_rate_multiplier must be a number"),
        (_with(lambda r: r.update(duration_s=-1)), r"record 1: duration_s: .*greater than"),
        (_with(lambda r: r.update(colour="red")), r"record 1: colour: Extra inputs"),
    ],
    ids=["not-json", "not-a-list", "empty", "no-curve", "bad-loss", "steps-go-back",
         "no-multiplier", "negative-duration", "unknown-field"],
)
def test_bad_curve_files_name_the_file_record_and_field(tmp_path, content, expected) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    config = ReplayBackendConfig(curves=Path("bad.json"))
    with pytest.raises(InvalidRequestError, match=expected) as caught:
        create_backend(config, base_dir=tmp_path)
    assert str(path) in str(caught.value)


def test_a_missing_curves_file_says_where_it_looked(tmp_path) -> None:
    config = ReplayBackendConfig(curves=Path("data/nowhere.json"))
    with pytest.raises(InvalidRequestError, match="no such replay curves file") as caught:
        create_backend(config, base_dir=tmp_path)
    assert str(tmp_path / "data" / "nowhere.json") in str(caught.value)


# --- the shipped demo -------------------------------------------------------------------------


def test_the_demo_config_builds_a_backend_for_its_search_space(repo_root, tmp_path) -> None:
    from sweeps.config.schema import load_config

    config = load_config(repo_root / "configs" / "replay.yaml")
    backend = create_backend(config.backend, base_dir=config.config_dir)
    backend.check_search_space(config.search_space.knobs())
    backend.check_epochs(8)
    # The shipped config replays curves recorded by real local sweeps
    # (scripts/record_curve_sets.py).
    assert backend.curves_path == repo_root / "configs" / "data" / "curves_next_number.json"
    records = load_curves(backend.curves_path)
    grid = {(r.params["batch_size"], r.params["learning_rate_multiplier"]) for r in records}
    assert {b for b, _ in grid} == {8, 16, 32} and len(grid) == 24
    runs = {(r.params["batch_size"], r.params["learning_rate_multiplier"], r.seed)
            for r in records}
    assert len(runs) == len(records) == 3 * len(grid)  # each cell recorded with 3 seeds
    assert all(r.max_epochs == 8 and r.duration_s > 0 for r in records)


def test_the_demo_generator_writes_a_loadable_file(repo_root, tmp_path) -> None:
    out = tmp_path / "demo.json"
    result = subprocess.run(
        [sys.executable, str(repo_root / "scripts" / "make_demo_replay_curves.py"),
         "--out", str(out)],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    records = load_curves(out)
    assert len(records) == 9
    # Multiplier 3 overfits: its eval loss ends above its minimum; multiplier 0.3 still falls.
    for record in records:
        evals = [p.eval_loss for p in record.curve if p.eval_loss is not None]
        assert len(evals) == 8
        if record.params["learning_rate_multiplier"] == 3.0:
            assert evals[-1] > min(evals) * 1.5
        if record.params["learning_rate_multiplier"] == 0.3:
            assert evals[-1] == min(evals)
