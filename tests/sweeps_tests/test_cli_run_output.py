"""What `gemini-sweep run` prints, as a user running it in a pipe or log file sees it.

Real processes on a replay sweep: Ctrl-C (SIGINT) at start-up and mid-sweep ends with exit
code 130 and one line, never a traceback; log records are one unwrapped line each; the
sweep's stop reason is said once.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

CLI = [sys.executable, "-c", "from sweeps.cli import main; main()"]
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR)")


def replay_config(folder: Path, *, time_scale: float, n_trials: int,
                  clock: str = "simulated") -> Path:
    (folder / "data").mkdir(exist_ok=True)
    for name in ("next_number.jsonl", "curves_next_number.json"):
        shutil.copy(REPO_ROOT / "configs" / "data" / name, folder / "data")
    config = {"name": "output-sweep",
              "dataset": {"path": "data/next_number.jsonl", "validation_split": 0.15},
              "backend": {"kind": "replay", "curves": "data/curves_next_number.json",
                          "time_scale": time_scale, "clock": clock},
              "search_space": {"epochs": {"mode": "from_curve", "max": 8, "patience": 2},
                               "batch_size": {"choices": [8, 16, 32]},
                               "learning_rate_multiplier": {"low": 0.3, "high": 10,
                                                            "log": True}},
              "n_trials": n_trials, "concurrency": 2}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def start(*args: str, python_flags: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    argv = [sys.executable, *python_flags, *CLI[1:], *args]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env80())


def _env80() -> dict[str, str]:
    import os
    return {**os.environ, "COLUMNS": "80"}


def wait_for_line(stream, pattern: str, seen: list[str], *, limit: int = 20_000) -> None:
    """Read ``stream`` until a line matches the regex ``pattern`` (keeping what was read)."""
    for _ in range(limit):
        line = stream.readline()
        if not line:
            raise AssertionError(f"{pattern!r} never came:\n" + "".join(seen[-40:]))
        seen.append(line)
        if re.search(pattern, line):
            return
    raise AssertionError(f"{pattern!r} not within {limit} lines")


def ctrl_c_when(pattern: str, config: Path, *,
                python_flags: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """Start `run CONFIG`, press Ctrl-C once its stderr shows ``pattern``: the exit code and
    every line it printed (``-X importtime`` lines left out)."""
    process = start("run", str(config), python_flags=python_flags)
    seen: list[str] = []
    assert process.stderr is not None
    wait_for_line(process.stderr, pattern, seen)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    lines = [line for line in (out + "".join(seen) + err).splitlines()
             if line.strip() and not line.startswith("import time:")]
    return process.returncode, lines


def test_ctrl_c_during_start_up_exits_130_with_one_line(tmp_path: Path) -> None:
    # Long wall-clock jobs: on a loaded machine this test reads the thousands of import
    # lines well behind the process, and a short sweep ended before the signal landed.
    config = replay_config(tmp_path, time_scale=5.0, n_trials=4, clock="wall")
    # -X importtime reports each import as it ends: once typer is imported, the process is
    # inside `main`, loading the command line (the first of its imports in `main`).
    code, lines = ctrl_c_when(r"\| +typer$", config, python_flags=("-X", "importtime"))
    assert code == 130, lines
    assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in lines), lines
    assert len(lines) == 1 and lines[0].startswith("interrupted"), lines


def test_ctrl_c_mid_sweep_exits_130_with_one_line_saying_jobs_keep_running(
        tmp_path: Path) -> None:
    config = replay_config(tmp_path, time_scale=0.5, n_trials=6)
    code, lines = ctrl_c_when(" submitted: ", config)
    assert code == 130, lines
    assert not any("Traceback" in line for line in lines), lines
    said = [line for line in lines if not LOG_LINE.match(line)]
    assert said == ["interrupted: jobs in flight keep running; run the same command again "
                    "to collect them"], lines


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    config = replay_config(tmp_path_factory.mktemp("run"), time_scale=0, n_trials=3)
    done = subprocess.run([*CLI, "run", str(config)], capture_output=True, text=True,
                          timeout=300, env=_env80(), check=True)
    return done.stdout, done.stderr


def test_log_records_are_whole_lines_in_a_pipe(finished_run: tuple[str, str]) -> None:
    _, log = finished_run
    lines = log.splitlines()
    assert lines and all(LOG_LINE.match(line) for line in lines), log
    submitted = [line for line in lines if " submitted: " in line]
    assert len(submitted) == 3, log
    for line in submitted:  # the knobs stay on the record's own line
        assert re.search(r"submitted: epochs=8, learning_rate_multiplier=[\d.]+, "
                         r"batch_size=\d+$", line), line


def test_the_stop_reason_is_said_once(finished_run: tuple[str, str]) -> None:
    out, log = finished_run
    assert (out + log).count("stopped: n_trials: 3 trials finished") == 1, out + log
    assert out.startswith("sweep output-sweep stopped: n_trials: 3 trials finished")
