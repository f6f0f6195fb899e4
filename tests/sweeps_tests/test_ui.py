"""`gemini-sweep ui`: a real MLflow server on 127.0.0.1 over a real replay sweep's store.

The command runs as a user would (a subprocess), the runs are read back through MLflow's
REST API, the page is rendered by headless Chromium (the UI is a JS app), and Ctrl-C must
stop the server and its workers. The screenshot is kept in ``test-artifacts/``.
"""

from __future__ import annotations

import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from sweeps import load_config
from tests.conftest import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts"
N_TRIALS = 3
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                  "--virtual-time-budget=15000"]


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sweeps.engine.runner import run_sweep

    folder = tmp_path_factory.mktemp("ui")
    (folder / "data").mkdir()
    shutil.copy(REPO_ROOT / "configs/data/next_number.jsonl", folder / "data")
    shutil.copy(REPO_ROOT / "configs/data/replay_demo_curves.json", folder / "data")
    config = {"name": "ui-sweep", "dataset": {"path": "data/next_number.jsonl"},
              "backend": {"kind": "replay", "curves": "data/replay_demo_curves.json",
                          "time_scale": 0},
              "search_space": {"epochs": {"low": 2, "high": 6}},
              "n_trials": N_TRIALS, "concurrency": N_TRIALS, "sampler": {"seed": 1}}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    run_sweep(load_config(path))
    return path


class UiProcess:
    """``gemini-sweep ui`` as a child process, its stdout read line by line."""

    def __init__(self, config: Path) -> None:
        argv = [sys.executable, "-c", "from sweeps.cli import main; main()", "ui", str(config),
                "--port", "0"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_for_url(self, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            match = re.search(r"MLflow UI: (\S+)", line)
            if match:
                return match.group(1)
        raise AssertionError("no URL printed:\n" + "".join(self.output))


@pytest.fixture(scope="module")
def ui(sweep_config: Path) -> Iterator[tuple[UiProcess, str]]:
    process = UiProcess(sweep_config)
    try:
        yield process, process.wait_for_url()
    finally:
        if process.proc.poll() is None:  # a test failed before Ctrl-C: stop it anyway
            process.proc.send_signal(signal.SIGINT)
            process.proc.wait(timeout=60)


def base_of(url: str) -> str:
    return url.split("/#/", 1)[0]


def search_runs(base: str, experiment_id: str) -> list[dict]:
    reply = requests.post(f"{base}/api/2.0/mlflow/runs/search", timeout=30,
                          json={"experiment_ids": [experiment_id], "max_results": 100})
    reply.raise_for_status()
    return reply.json()["runs"]


def test_ui_serves_the_sweep_experiment_on_loopback(ui: tuple[UiProcess, str]) -> None:
    _, url = ui
    assert url.startswith("http://127.0.0.1:")
    base = base_of(url)
    reply = requests.get(f"{base}/api/2.0/mlflow/experiments/get-by-name",
                         params={"experiment_name": "ui-sweep"}, timeout=30)
    assert reply.status_code == 200
    experiment_id = reply.json()["experiment"]["experiment_id"]
    assert url == f"{base}/#/experiments/{experiment_id}/runs"
    names = sorted(run["info"]["run_name"] for run in search_runs(base, experiment_id))
    assert names == sorted(["ui-sweep"] + [f"trial-{n}" for n in range(N_TRIALS)])


def chromium(*args: str, tmp_path: Path) -> str:
    profile = tmp_path / f"profile-{time.monotonic_ns()}"
    done = subprocess.run(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def visible_text(dom: str) -> str:
    text = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="needs Debian's chromium (apt-get install chromium; .ci/run does)")
def test_browser_lists_the_sweep_runs(ui: tuple[UiProcess, str], tmp_path: Path) -> None:
    _, url = ui
    base = base_of(url)
    experiment_id = url.rsplit("/", 2)[-2]
    runs = search_runs(base, experiment_id)
    text = visible_text(chromium("--dump-dom", url, tmp_path=tmp_path))
    assert "ui-sweep" in text  # the experiment and its sweep (parent) run
    assert f"{len(runs)} matching runs" in text  # the parent plus one run per trial
    trial = next(r for r in runs if r["info"]["run_name"] == "trial-0")
    run_page = f"{base}/#/experiments/{experiment_id}/runs/{trial['info']['run_id']}"
    run_text = visible_text(chromium("--dump-dom", run_page, tmp_path=tmp_path))
    assert "trial-0" in run_text and "train_loss_epoch" in run_text
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow_ui_runs.png"
    shot.unlink(missing_ok=True)
    chromium(f"--screenshot={shot}", url, tmp_path=tmp_path)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_stops_the_server_cleanly(ui: tuple[UiProcess, str]) -> None:
    process, url = ui
    base = base_of(url)
    process.proc.send_signal(signal.SIGINT)
    assert process.proc.wait(timeout=60) == 0, "".join(process.output)
    assert "stopping the MLflow UI" in "".join(process.output)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/health", timeout=5)


def test_a_busy_port_fails_at_once_naming_the_fix(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(REPO_ROOT / "configs/data/next_number.jsonl", tmp_path / "data")
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({"name": "busy", "backend": {"kind": "local"},
                                      "dataset": {"path": "data/next_number.jsonl"}}),
                      encoding="utf-8")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other_server:
        other_server.bind(("127.0.0.1", 0))
        other_server.listen()
        port = other_server.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-c", "from sweeps.cli import main; main()", "ui", str(config),
             "--port", str(port)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"error: port {port} on 127.0.0.1 is already in use (another `gemini-sweep ui` or "
        f"MLflow server?); choose another with `--port {port + 1}`, or `--port 0` for any "
        "free port")
    assert not (tmp_path / ".gemini_sweep" / "mlflow-ui.log").exists()  # no server started
