"""`gemini-sweep ui`: the MLflow UI on the sweep's tracking store, opened at its experiment.

Runs ``mlflow server`` as a child process (an argv list, never a shell string) bound to
127.0.0.1, waits until it answers, looks the sweep's experiment up through MLflow's REST API
and prints its URL. Ctrl-C stops the server and its workers (their own process group) and
exits 0. A sweep tracked on a remote MLflow server needs no local UI: its URL is printed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from sweeps.cli._common import EXIT_BAD_INPUT
from sweeps.cli._common import EXIT_FAILED
from sweeps.cli._common import app
from sweeps.cli._common import console
from sweeps.cli._common import err_console
from sweeps.cli._common import user_errors

HOST = "127.0.0.1"
_START_TIMEOUT_S = 90.0
_STOP_TIMEOUT_S = 10.0
_PROBE_INTERVAL_S = 0.3


@app.command("ui", help="Open the sweep's experiment in the MLflow UI (Ctrl-C stops it).")
def ui_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="the sweep config")],
    port: Annotated[int, typer.Option(
        "--port", min=0, max=65535, help="port on 127.0.0.1 (0: any free port)")] = 5000,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="server worker processes")] = 1,
) -> None:
    with user_errors():
        from sweeps.config.schema import load_config

        config = load_config(config_path)
    tracking_uri = config.tracking_url
    if tracking_uri.startswith(("http://", "https://")):
        url = experiment_url(tracking_uri.rstrip("/"), config.name)
        console.print(f"the sweep is tracked on an MLflow server: {url}", markup=False)
        return
    if port and port_in_use(port):
        # Said before the server starts: otherwise the server fails only after a long start.
        err_console.print(f"error: port {port} on {HOST} is already in use (another "
                          f"`gemini-sweep ui` or MLflow server?); choose another with "
                          f"`--port {port + 1}`, or `--port 0` for any free port",
                          markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_BAD_INPUT)
    chosen_port = port or free_port()
    argv = server_argv(tracking_uri, port=chosen_port, workers=workers)
    log_path = config.state_dir / "mlflow-ui.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    _interrupt_on_sigterm()
    with running(argv, log_path=log_path) as server:
        base_url = f"http://{HOST}:{chosen_port}"
        if not wait_until_up(base_url, server):
            err_console.print(f"error: the MLflow server did not start; its log "
                              f"({log_path}) ends with:\n{_tail(log_path)}", markup=False)
            raise typer.Exit(EXIT_FAILED)
        # Ctrl-C is a clean stop from the moment the URL is shown: a user (or a script)
        # may press it as soon as the first line appears.
        try:
            console.print(f"MLflow UI: {experiment_url(base_url, config.name)}",
                          markup=False, highlight=False)
            console.print("press Ctrl-C to stop it", markup=False)
            server.wait()
        except KeyboardInterrupt:
            console.print("stopping the MLflow UI", markup=False)
            return
    err_console.print(f"error: the MLflow server stopped (exit code {server.returncode}); "
                      f"its log ({log_path}) ends with:\n{_tail(log_path)}", markup=False)
    raise typer.Exit(EXIT_FAILED)


def server_argv(tracking_uri: str, *, port: int, workers: int) -> list[str]:
    """``mlflow server`` on the sweep's store; new experiments' artifacts go where the
    tracker puts them (``mlartifacts`` next to a SQLite store)."""
    from sweeps.tracking import artifact_root_for  # imports MLflow: only when needed

    argv = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
            "--host", HOST, "--port", str(port), "--workers", str(workers)]
    artifact_root = artifact_root_for(tracking_uri)
    if artifact_root:
        argv += ["--default-artifact-root", artifact_root]
    return argv


@contextlib.contextmanager
def running(argv: list[str], *, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` in its own process group, output to ``log_path``; on exit stop the
    whole group (the server's workers too)."""
    # MLflow's GenAI job runner (huey consumers) is not needed to browse runs: skip its
    # processes on a small machine.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log_path.open("ab") as log:
        server = subprocess.Popen(argv, start_new_session=True, stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        yield server
    finally:
        stop(server)


def stop(server: subprocess.Popen[bytes]) -> None:
    """Ctrl-C the server's process group as a terminal would; then SIGTERM, then SIGKILL."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if server.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=_STOP_TIMEOUT_S)


def _interrupt_on_sigterm() -> None:
    """``kill PID`` stops the UI as cleanly as Ctrl-C; SIGINT is restored in case this
    process was started with it ignored (``cmd &`` in a script)."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _tail(path: Path, *, n_lines: int = 15) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n_lines:])


def wait_until_up(base_url: str, server: subprocess.Popen[bytes], *,
                  timeout_s: float = _START_TIMEOUT_S) -> bool:
    """Probe ``/health`` until it answers 200, the process dies, or ``timeout_s`` passes."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{base_url}/health", timeout=2).status_code == 200:
                return True
        time.sleep(_PROBE_INTERVAL_S)
    return False


def experiment_url(base_url: str, name: str) -> str:
    """The UI URL of experiment ``name``, found through MLflow's REST API; the UI's home
    page when the sweep has not written its experiment yet."""
    import requests

    try:
        reply = requests.get(f"{base_url}/api/2.0/mlflow/experiments/get-by-name",
                             params={"experiment_name": name}, timeout=10)
    except requests.RequestException:
        return base_url
    if reply.status_code != 200:
        err_console.print(f"note: no MLflow experiment {name!r} yet; run the sweep first",
                          markup=False)
        return f"{base_url}/"
    experiment_id = reply.json()["experiment"]["experiment_id"]
    # The runs tab: MLflow 3 opens an experiment on its GenAI traces overview otherwise.
    return f"{base_url}/#/experiments/{experiment_id}/runs"


def port_in_use(port: int) -> bool:
    """Whether something listens on ``port`` of 127.0.0.1 (a port only in TIME_WAIT after a
    server stopped counts as free, as it does for the server, which sets SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
        return False


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])
