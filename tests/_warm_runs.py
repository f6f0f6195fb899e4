"""`gemini-sweep` processes forked from one warm interpreter, driven like ``subprocess.Popen``.

A sweep process spends about 3 s of CPU importing MLflow, Optuna and matplotlib before its
first trial; the crash and fault tests start dozens of them on two cores. Here one launcher
per test worker imports them once and forks each run from itself. Every run is still its own
OS process running the real CLI's ``main``: its own pid, environment, working directory,
stdout and stderr; a SIGKILL kills it alone, mid-write, as it would a cold one, and it exits
the way a cold interpreter does (atexit handlers, non-daemon threads joined). Only the
imports are shared, and what they set up: the CLI's consoles are built before a run's
environment is in place (``COLUMNS`` is not read again). Tests about start-up itself (the first
second of a run, lazy imports, Ctrl-C before the first trial) or about the layout of the
output start cold interpreters instead.

The launcher forks a small supervisor per run, which forks the run, hands its pid back and
writes its exit status to a file when it ends: the launcher never waits, so runs may overlap.
"""

from __future__ import annotations

import atexit
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.conftest import REPO_ROOT

_LAUNCHER = r"""
import gc, json, os, signal, sys, threading

# What a `run` imports, lazily or on its tracking thread: loaded once, shared by every fork.
import mlflow, mlflow.tracking
import sweeps.cli.commands, sweeps.cli.run_cmd, sweeps.engine.runner
import sweeps.tracking.tracker, sweeps.tracking._plots, sweeps.tracking._store
import gemini_backend.replay.backend, gemini_backend.vertex.backend
import gemini_backend.gemini_api.backend
from sweeps.cli import main

# Forking is only safe from a single thread: no import may have left one running.
assert threading.active_count() == 1, threading.enumerate()
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
# Out of the collector's sight: a run's collections (and its exit's) would otherwise walk, and
# copy page by page, every object imported here, a second of CPU per run.
gc.freeze()
print("ready", flush=True)


def become_run(request):
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, mode in ((0, os.devnull, os.O_RDONLY),
                           (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                           (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        if fd == 2 and path == request["stdout"]:  # one stream: share stdout's file offset
            os.dup2(1, 2)
            continue
        opened = os.open(path, mode, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    # Ctrl-C as in a terminal: a shell without job control (CI may run so) starts background
    # commands with SIGINT ignored, and the launcher would pass that on to every run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for number in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(number, signal.SIG_DFL)
    sys.argv = ["gemini-sweep", *request["args"]]
    main()  # raises SystemExit: the run then exits as a cold interpreter would
    sys.exit(0)


for line in sys.stdin:
    request = json.loads(line)
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the supervisor
        os.close(read_end)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        pid = os.fork()
        if pid == 0:
            os.close(write_end)
            become_run(request)
        os.write(write_end, f"{pid}\n".encode())
        os.close(write_end)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        with open(request["status"] + ".part", "w") as out:
            out.write(str(code))
        os.replace(request["status"] + ".part", request["status"])
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as answer:
        print(answer.readline().strip(), flush=True)
"""


class WarmRun:
    """One forked run: ``pid``, ``poll``, ``wait``, ``communicate``, ``kill`` and
    ``returncode`` as ``subprocess.Popen`` has them (a run killed by a signal returns minus
    its number). Its output is read when it has ended."""

    def __init__(self, pid: int, folder: Path, args: list[str], text: bool,
                 merge_stderr: bool) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._folder = folder
        self._text = text
        self._merge_stderr = merge_stderr

    def poll(self) -> int | None:
        status = self._folder / "status"
        if self.returncode is None and status.exists():
            self.returncode = int(status.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | bytes, str | bytes | None]:
        self.wait(timeout)
        stdout = self._read("stdout")
        return stdout, (None if self._merge_stderr else self._read("stderr"))

    def send_signal(self, number: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, number)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _read(self, name: str) -> str | bytes:
        data = (self._folder / name).read_bytes()
        return data.decode(errors="replace") if self._text else data


class _Launcher:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", _LAUNCHER], cwd=REPO_ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        ready = self.process.stdout.readline().strip()
        assert ready == "ready", f"the warm launcher did not start: {ready!r}"
        self.folder = Path(tempfile.mkdtemp(prefix="warm-runs-"))
        self.numbers = itertools.count()
        self.lock = threading.Lock()

    def start(self, args: list[str], cwd: Path, env: dict[str, str], *, text: bool,
              merge_stderr: bool) -> WarmRun:
        folder = self.folder / str(next(self.numbers))
        folder.mkdir()
        stderr = folder / ("stdout" if merge_stderr else "stderr")
        request = {"args": args, "cwd": os.path.abspath(cwd), "env": env,
                   "stdout": str(folder / "stdout"), "stderr": str(stderr),
                   "status": str(folder / "status")}
        assert self.process.stdin is not None and self.process.stdout is not None
        with self.lock:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = int(self.process.stdout.readline())
        return WarmRun(pid, folder, args, text, merge_stderr)

    def close(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)


_launcher: _Launcher | None = None


def start_warm(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
               text: bool = False, merge_stderr: bool = True) -> WarmRun:
    """``gemini-sweep <args>`` as a process forked from this test worker's warm launcher,
    in ``env`` (default: this process's environment now)."""
    global _launcher
    if _launcher is None:
        _launcher = _Launcher()
        atexit.register(_launcher.close)
    return _launcher.start(args, cwd, dict(os.environ) if env is None else env, text=text,
                           merge_stderr=merge_stderr)


def run_warm(args: list[str], *, cwd: Path, env: dict[str, str] | None = None,
             timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Like ``subprocess.run(..., capture_output=True, text=True)``."""
    process = start_warm(args, cwd=cwd, env=env, text=True, merge_stderr=False)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert isinstance(stdout, str) and isinstance(stderr, str)
    return subprocess.CompletedProcess(args, process.wait(), stdout, stderr)
