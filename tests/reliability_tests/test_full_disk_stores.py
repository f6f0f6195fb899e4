"""A full disk under the sweep's own state: said in words, the stores left whole, then resumed.

The sweep folder (config, dataset, ``.gemini_sweep/``) is on a real tmpfs mounted for the test:
small enough that the MLflow store cannot be built, or filled up by a file between two runs.
Mounting needs ``CAP_SYS_ADMIN``; without it the tests are skipped with that reason.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sweeps import load_config
from sweeps.engine.runner import open_study
from tests.reliability_tests._sweep_procs import check_mlflow
from tests.reliability_tests._sweep_procs import run_to_end
from tests.reliability_tests.test_disk_faults import mount
from tests.reliability_tests.test_disk_faults import mount_tmpfs
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_curves


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """The sweep's whole folder on a 300 KiB tmpfs, unmounted after the test."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mount_tmpfs(folder, "300k")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def _resize(folder: Path, size: str) -> None:
    assert mount("-o", f"remount,size={size}", str(folder)).returncode == 0


def _sweep(folder: Path, n_trials: int) -> Path:
    write_curves(folder, duration_s=0.3)
    return write_config(folder, name="full-disk", n_trials=n_trials, concurrency=1,
                        poll_interval_s=0.05,
                        backend={"kind": "replay", "curves": "curves.json", "time_scale": 0.1})


def _assert_said_in_words(done: subprocess.CompletedProcess[str]) -> None:
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, output
    assert "the disk is full (no space left on the device)" in output, output
    assert "Traceback" not in output


def _assert_finished_whole(config_path: Path, n_trials: int) -> None:
    config = load_config(config_path)
    trials = open_study(config).get_trials()
    assert len(trials) == n_trials
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    check_mlflow(config, trials)  # one run per trial, every point once, none RUNNING


def test_a_disk_full_while_the_stores_are_built_is_said_and_the_next_run_finishes(
        small_disk: Path) -> None:
    config_path = _sweep(small_disk, n_trials=2)
    _assert_said_in_words(run_to_end(config_path))
    state = small_disk / ".gemini_sweep"
    assert not (state / "mlflow.db").exists()  # absent, not half-built
    assert [p.name for p in state.iterdir() if ".building-" in p.name] == []

    _resize(small_disk, "50m")  # space freed
    done = run_to_end(config_path)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_finished_whole(config_path, 2)


def test_a_disk_full_in_the_middle_of_a_sweep_is_said_and_the_sweep_resumes(
        small_disk: Path) -> None:
    _resize(small_disk, "50m")
    config_path = _sweep(small_disk, n_trials=2)
    assert run_to_end(config_path).returncode == 0
    config_path.write_text(config_path.read_text().replace("n_trials: 2", "n_trials: 4"))

    filler = small_disk / "filler"
    with filler.open("wb") as handle:  # leave about 150 KB: the stores open, writes fail
        free = subprocess.run(["df", "-k", "--output=avail", str(small_disk)],
                              capture_output=True, text=True, check=True).stdout.split()[-1]
        handle.write(b"\0" * ((int(free) - 150) * 1024))
    _assert_said_in_words(run_to_end(config_path))

    filler.unlink()
    done = run_to_end(config_path)
    assert done.returncode == 0, done.stdout + done.stderr
    _assert_finished_whole(config_path, 4)
