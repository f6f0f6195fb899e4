"""A read-only or full job root for the local backend: a clear error, and a sweep that resumes.

How the faults are made honestly: the tests run as root, and root ignores file modes, so
``chmod`` would prove nothing. Instead the job root is a real tmpfs mounted for the test:
remounted read-only (``EROFS``, which stops root too) or mounted with 64 KiB (``ENOSPC`` once
a job writes its curve and weights). Mounting needs ``CAP_SYS_ADMIN``; where it is missing
the tests are skipped with that reason. The sweep's own state (.gemini_sweep/) stays on the
normal disk, as when a user points ``job_root`` at a separate volume.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from gemini_backend import BackendError
from gemini_backend import JobState
from gemini_backend.local import LocalBackend
from gemini_backend.local import _spawn
from gemini_backend.local._jobdir import job_id_for
from sweeps import load_config
from sweeps import trial_record as ts
from sweeps.engine.runner import open_study
from tests.conftest import REPO_ROOT
from tests.gemini_backend_tests.test_local import TIMEOUT_S
from tests.gemini_backend_tests.test_local import request
from tests.gemini_backend_tests.test_local import small_config
from tests.gemini_backend_tests.test_local import wait_terminal
from tests.reliability_tests._sweep_procs import run_to_end
from tests.reliability_tests._sweep_procs import seed_mlflow
from tests.sweeps_tests.conftest import write_config

TrialState = optuna.trial.TrialState
SEARCH_SPACE = {"epochs": {"value": 1}, "batch_size": {"value": 16},
                "learning_rate_multiplier": {"low": 0.5, "high": 2.0, "log": True}}


def mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


@pytest.fixture
def job_root(tmp_path: Path) -> Iterator[Path]:
    """An empty mount point; each test mounts its tmpfs there and it is unmounted after."""
    root = tmp_path / "jobs"
    root.mkdir()
    yield root
    subprocess.run(["umount", "-l", str(root)], capture_output=True, check=False)


def mount_tmpfs(root: Path, size: str, *, read_only: bool = False) -> None:
    result = mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); the disk-fault "
                    "tests need root with CAP_SYS_ADMIN")
    if read_only:
        assert mount("-o", "remount,ro", str(root)).returncode == 0


def sweep(folder: Path, template: Path, **overrides) -> Path:
    shutil.copyfile(REPO_ROOT / "configs" / "data" / "next_number.jsonl",
                    folder / "data.jsonl")
    config_path = write_config(folder, name="disk", concurrency=1, search_space=SEARCH_SPACE,
                               backend={"kind": "local", "job_root": "jobs"}, **overrides)
    seed_mlflow(template, folder)
    return config_path


def test_read_only_job_root_is_refused_before_any_trial_and_the_sweep_runs_once_fixed(
        tmp_path, job_root, mlflow_template) -> None:
    config_path = sweep(tmp_path, mlflow_template, n_trials=2)
    mount_tmpfs(job_root, "8m", read_only=True)

    refused = run_to_end(config_path, timeout_s=300)
    assert refused.returncode == 2, refused.stderr  # bad input: nothing was spent
    assert "backend.job_root" in refused.stderr
    assert "Read-only file system" in refused.stderr
    assert "run the same command again" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    assert list(job_root.iterdir()) == []

    assert mount("-o", "remount,rw", str(job_root)).returncode == 0
    resumed = run_to_end(config_path, timeout_s=300)
    assert resumed.returncode == 0, resumed.stderr
    trials = open_study(load_config(config_path)).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_full_job_root_fails_trials_in_words_and_a_rerun_completes_after_space_is_freed(
        tmp_path, job_root, mlflow_template) -> None:
    config_path = sweep(tmp_path, mlflow_template, n_trials=3, max_consecutive_failures=2)
    mount_tmpfs(job_root, "64k")

    full = run_to_end(config_path, timeout_s=300)
    assert full.returncode == 1, full.stderr  # stopped on failures, not a crash
    assert "sweep disk stopped: failures: 2 trials failed in a row" in full.stdout
    config = load_config(config_path)
    failed = open_study(config).get_trials()
    assert [t.state for t in failed] == [TrialState.FAIL] * 2
    reasons = [t.user_attrs[ts.ATTR_FAIL_REASON] for t in failed]
    assert any("No space left on device" in reason for reason in reasons), reasons
    assert not [r for r in reasons if r.startswith(("Traceback", "OSError"))]  # words first
    assert not [p for p in job_root.iterdir() if p.name.startswith(".tmp-")]  # no debris

    assert mount("-o", "remount,size=64m", str(job_root)).returncode == 0  # space freed
    resumed = run_to_end(config_path, timeout_s=300)
    assert resumed.returncode == 0, resumed.stderr
    trials = open_study(config).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE]


def test_a_job_left_unstarted_on_a_full_disk_fails_polls_in_words_and_runs_once_space_is_freed(
        tmp_path, job_root) -> None:
    """Its submitter died between creating the job and starting its worker, and the disk
    filled meanwhile: the poll that would start it says why it cannot (no bare OSError, which
    stopped the sweep), and a poll after space is freed starts it."""
    mount_tmpfs(job_root, "8m")
    backend = LocalBackend(small_config(tmp_path, job_root=job_root), base_dir=tmp_path)
    settings = _spawn.resolve_settings(request("stalled"), backend.config, base_dir=tmp_path,
                                       threads=1)
    _, lock_fd = _spawn.create_job(job_root, job_id_for("stalled"), request("stalled"),
                                   settings)
    os.close(lock_fd)  # where its submitter died
    filler = fill_up(job_root)
    ref = backend.find("stalled")
    assert ref is not None

    with pytest.raises(BackendError, match="No space left on device.*free some space"):
        backend.poll(ref)
    filler.unlink()
    status = wait_terminal(backend, ref, TIMEOUT_S)
    assert status.state is JobState.SUCCEEDED, status.error_message


def fill_up(root: Path) -> Path:
    """Write a file until the mount is full; returns it (delete it to free the space)."""
    filler = root / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler
