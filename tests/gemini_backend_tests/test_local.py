"""The local backend: real worker processes, real PyTorch training, real files.

Models and data are tiny so the whole file runs in about a minute on two cores; jobs that do
not depend on each other run at the same time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gemini_backend import BackendError
from gemini_backend import Example
from gemini_backend import InvalidRequestError
from gemini_backend import JobRequest
from gemini_backend import JobState
from gemini_backend import create_backend
from gemini_backend.local import LocalBackend
from gemini_backend.local import LocalBackendConfig
from gemini_backend.local import _spawn
from gemini_backend.local._jobdir import JobDir
from gemini_backend.local._jobdir import job_id_for
from tests.gemini_backend_tests.contract import BackendContract
from tests.gemini_backend_tests.contract import wait_running
from tests.gemini_backend_tests.contract import wait_terminal

TIMEOUT_S = 120.0
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


def next_number_examples(n_words: int = 20, n_digits: int = 20) -> tuple[Example, ...]:
    """Like ``configs/data/next_number.jsonl``: "twenty two" -> "twenty three", "1,000" -> ..."""
    words = [Example(text_input=_words(n), output=_words(n + 1))
             for n in range(18, 18 + n_words)]
    digits = [Example(text_input=f"{n:,}", output=f"{n + 1:,}")
              for n in range(995, 995 + n_digits)]
    return tuple(words + digits)


TRAIN = next_number_examples()


def small_config(tmp_path: Path, **changes: object) -> LocalBackendConfig:
    fields: dict[str, object] = dict(
        job_root=tmp_path / "jobs", threads_per_job=1, d_model=32, n_layers=1, n_heads=2,
        max_seq_len=48, max_new_tokens=12,
    )
    fields.update(changes)
    return LocalBackendConfig(**fields)


def request(key: str, *, epochs: int = 2, **changes: object) -> JobRequest:
    base = JobRequest(
        train=TRAIN, epochs=epochs, learning_rate_multiplier=3.0, base_model="byte-transformer",
        display_name=key, idempotency_key=key, batch_size=4,
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(small_config(tmp_path), base_dir=tmp_path)


@pytest.fixture
def make_request():
    return request


@pytest.fixture
def reopen(tmp_path: Path):
    return lambda: LocalBackend(small_config(tmp_path), base_dir=tmp_path)


class TestLocalContract(BackendContract):
    terminal_timeout_s = TIMEOUT_S


def _job_dirs(backend: LocalBackend) -> list[Path]:
    if not backend.job_root.exists():
        return []
    return [p for p in backend.job_root.iterdir() if not p.name.startswith(".")]


def _epoch_means(status) -> list[float]:
    return [statistics.mean(s.loss for s in status.snapshots if s.epoch == epoch)
            for epoch in range(1, status.epochs_completed + 1)]


def _wait_for_steps(backend: LocalBackend, ref, n_steps: int):
    deadline = time.monotonic() + TIMEOUT_S
    status = backend.poll(ref)
    while len(status.snapshots) < n_steps:
        assert not status.state.is_terminal(), status
        assert time.monotonic() < deadline, "no training steps reported"
        time.sleep(0.05)
        status = backend.poll(ref)
    return status


def test_lifecycle_queued_running_succeeded_with_falling_loss(backend) -> None:
    ref = backend.submit(request("life", epochs=4))
    seen = [backend.poll(ref).state]
    status = backend.poll(ref)
    while not status.state.is_terminal():
        if status.state is not seen[-1]:
            seen.append(status.state)
        time.sleep(0.02)
        status = backend.poll(ref)
    seen.append(status.state)
    assert seen == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED], status.error_message
    means = _epoch_means(status)
    assert len(means) == 4 and means[0] > means[-1]
    assert [s.step for s in status.snapshots] == list(range(1, 4 * 10 + 1))  # 40 ex / batch 4
    assert status.progress == 1.0
    per_epoch = sum(len(e.text_input.encode()) + len(e.output.encode()) + 2 for e in TRAIN)
    assert status.training_tokens == 4 * per_epoch  # input + SEP + output + EOS, every epoch
    assert [c.epoch for c in status.checkpoints] == [1, 2, 3, 4]
    assert Path(status.tuned_model).is_file()


def test_cancel_mid_training_keeps_the_partial_curve(backend) -> None:
    ref = backend.submit(request("cancel", epochs=500))
    _wait_for_steps(backend, ref, 5)
    backend.cancel(ref)
    status = wait_terminal(backend, ref, timeout_s=10.0)
    assert status.state is JobState.CANCELLED
    assert len(status.snapshots) >= 5
    assert status.progress is not None and status.progress < 1.0
    assert backend.poll(ref).snapshots == status.snapshots  # the curve stays readable


def test_jobs_share_the_cores_when_threads_are_not_set(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    backend = LocalBackend(small_config(tmp_path, threads_per_job=None), base_dir=tmp_path)
    first = backend.submit(request("cores-1", epochs=500))
    second = backend.submit(request("cores-2", epochs=1))  # while the first one runs
    backend.cancel(first)
    threads = [JobDir(backend.job_root / ref.job_id).read_job()[1].threads
               for ref in (first, second)]
    assert threads == [4, 2]
    assert wait_terminal(backend, first, TIMEOUT_S).state is JobState.CANCELLED
    assert wait_terminal(backend, second, TIMEOUT_S).state is JobState.SUCCEEDED


def test_a_killed_worker_is_reported_failed_with_a_reason(backend) -> None:
    ref = backend.submit(request("killed", epochs=500))
    _wait_for_steps(backend, ref, 2)
    pid = json.loads((backend.job_root / ref.job_id / "status.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    status = wait_terminal(backend, ref, timeout_s=10.0)
    assert status.state is JobState.FAILED
    assert f"pid {pid}" in status.error_message and "died" in status.error_message
    assert status.snapshots, "the curve up to the kill is kept"


def test_a_new_backend_reattaches_to_a_running_job_by_key(backend, reopen) -> None:
    ref = backend.submit(request("reattach", epochs=3))
    wait_running(backend, ref, TIMEOUT_S)
    again = reopen()
    assert again.find("reattach") == ref
    assert again.submit(request("reattach", epochs=3)) == ref
    status = wait_terminal(again, ref, TIMEOUT_S)
    assert status.state is JobState.SUCCEEDED and status.epochs_completed == 3
    assert len(_job_dirs(backend)) == 1  # no second job was started


def test_same_seed_gives_the_same_curve(backend) -> None:
    refs = [backend.submit(request(key, seed=seed))
            for key, seed in (("seed-a", 7), ("seed-b", 7), ("seed-c", 8))]
    curves = [[s.loss for s in wait_terminal(backend, ref, TIMEOUT_S).snapshots] for ref in refs]
    assert len(curves[0]) == 20
    assert curves[0] == curves[1]
    assert curves[0] != curves[2]


def test_validation_loss_is_reported_at_the_end_of_every_epoch(backend) -> None:
    with_val = backend.submit(request("val", epochs=3, validation=TRAIN[::5]))
    without = backend.submit(request("no-val", epochs=1))
    status = wait_terminal(backend, with_val, TIMEOUT_S)
    evaluated = [(s.epoch, s.step) for s in status.snapshots if s.eval_loss is not None]
    assert evaluated == [(1, 10), (2, 20), (3, 30)]  # the last step of each epoch
    assert all(s.eval_loss > 0 for s in status.snapshots if s.eval_loss is not None)
    plain = wait_terminal(backend, without, TIMEOUT_S)
    assert all(s.eval_loss is None for s in plain.snapshots)


def test_generate_answers_every_prompt_and_needs_weights(backend) -> None:
    ref = backend.submit(request("generate", epochs=2))
    with pytest.raises(BackendError, match="no tuned weights"):
        backend.generate(ref, ["twenty"])  # still queued: nothing to load yet
    wait_terminal(backend, ref, TIMEOUT_S)
    answers = backend.generate(ref, ["twenty two", "1,000", ""])
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert all(len(a.encode()) <= 12 for a in answers)  # max_new_tokens bytes at most
    assert backend.weights_path(ref, epoch=1).is_file()
    first_epoch = backend.generate(ref, ["1,000"], epoch=1)
    assert first_epoch == backend.generate(ref, ["1,000"], epoch=1)  # greedy: repeatable
    with pytest.raises(BackendError):
        backend.generate(ref, ["1,000"], epoch=9)


def test_a_bad_base_model_is_rejected_before_anything_is_created(backend) -> None:
    with pytest.raises(InvalidRequestError, match="base_model"):
        backend.submit(request("bad-model", base_model="no/such/model"))
    assert _job_dirs(backend) == []
    assert backend.find("bad-model") is None


def _caller_killed_after(tmp_path: Path, body: str) -> LocalBackend:
    """Run ``body`` in a process that then SIGKILLs itself; a fresh backend on its folder."""
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from tests.gemini_backend_tests.test_local import small_config, request\n"
        "from gemini_backend.local import LocalBackend, _spawn\n"
        "from gemini_backend.local._jobdir import job_id_for\n"
        "tmp = Path(sys.argv[1])\n"
        f"{body}\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    root = Path(__file__).resolve().parents[2]
    caller = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=root, check=False)
    assert caller.returncode == -signal.SIGKILL
    return LocalBackend(small_config(tmp_path), base_dir=tmp_path)


def test_a_killed_caller_does_not_kill_its_job(tmp_path: Path) -> None:
    """The submitting process dies (SIGKILL) right after submit; the job runs on."""
    backend = _caller_killed_after(
        tmp_path, "LocalBackend(small_config(tmp), base_dir=tmp).submit(request('orphan'))")
    ref = backend.find("orphan")
    assert ref is not None
    assert wait_terminal(backend, ref, TIMEOUT_S).state is JobState.SUCCEEDED


def test_a_job_whose_caller_died_before_starting_its_worker_is_started_by_a_poll(
        tmp_path: Path) -> None:
    """SIGKILL between the job folder's appearance and its worker's start: the folder says
    the job exists (so a rerun finds it and submits nothing), yet nothing runs it. The next
    poll starts it instead of reporting a job that never ran as FAILED."""
    backend = _caller_killed_after(tmp_path, (
        "config = small_config(tmp)\n"
        "settings = _spawn.resolve_settings(request('stillborn'), config, base_dir=tmp,\n"
        "                                   threads=1)\n"
        "_spawn.create_job(config.job_root, job_id_for('stillborn'), request('stillborn'),\n"
        "                  settings)"))
    ref = backend.find("stillborn")
    assert ref is not None and backend.submit(request("stillborn")) == ref
    status = wait_terminal(backend, ref, TIMEOUT_S)
    assert status.state is JobState.SUCCEEDED, status.error_message
    assert status.epochs_completed == 2 and len(_job_dirs(backend)) == 1


def test_a_worker_that_keeps_dying_as_it_starts_is_failed_not_restarted_forever(
        backend) -> None:
    settings = _spawn.resolve_settings(request("doomed"), backend.config,
                                       base_dir=backend.base_dir, threads=1)
    job, lock_fd = _spawn.create_job(backend.job_root, job_id_for("doomed"), request("doomed"),
                                     settings)
    job.update_status(launches=3)  # as if three workers had died before writing their pid
    os.close(lock_fd)
    status = backend.poll(backend.find("doomed"))
    assert status.state is JobState.FAILED
    assert "3 times" in status.error_message
    assert not job.log_file.exists()  # no fourth worker was started


def test_importing_the_backend_does_not_import_torch() -> None:
    code = "import sys, gemini_backend.local; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_kind_local_alone_is_a_complete_config(tmp_path: Path) -> None:
    config = LocalBackend.config_model.model_validate({"kind": "local"})
    backend = create_backend(config, base_dir=tmp_path)
    assert isinstance(backend, LocalBackend)
    assert backend.job_root == tmp_path / ".gemini_sweep" / "jobs"
    assert not (tmp_path / ".gemini_sweep").exists()  # building it starts nothing
    with pytest.raises(ValueError, match="multiple of n_heads"):
        LocalBackendConfig(d_model=30, n_heads=4)


def test_lora_on_a_tiny_hugging_face_model(tmp_path: Path) -> None:
    model_dir = _save_tiny_hf_model(tmp_path / "tiny-model")
    config = small_config(tmp_path, base_model="tiny-model")  # relative to the config folder
    backend = LocalBackend(config, base_dir=tmp_path)
    ref = backend.submit(request("lora", epochs=2, base_model="", validation=TRAIN[:4],
                                 learning_rate_multiplier=10.0))
    status = wait_terminal(backend, ref, TIMEOUT_S)
    assert status.state is JobState.SUCCEEDED, status.error_message
    assert status.epochs_completed == 2 and len(status.snapshots) == 20
    assert (Path(status.tuned_model) / "adapter_config.json").is_file()
    assert not (Path(status.tuned_model) / "model.safetensors").exists()  # adapters only
    assert model_dir.is_dir()
    answers = backend.generate(ref, ["twenty two", "1,000"])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def _save_tiny_hf_model(folder: Path) -> Path:
    """A randomly initialised one-layer Llama and a byte-level tokenizer, built offline."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_tiny_hf_model.py"
    save = runpy.run_path(str(script), run_name="make_tiny_hf_model")["save_tiny_hf_model"]
    return save(folder, hidden=32, layers=1, heads=2)
