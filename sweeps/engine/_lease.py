"""Leases on running trials, so many workers can share one study safely.

A worker holds a trial from the moment it asks it until it has told it. While it holds it,
a background thread writes the trial's ``heartbeat`` user attribute every
``heartbeat_interval_s`` = min(60 s, ``lease_s`` / 4). Another worker takes a RUNNING trial
over (re-attaching to its job by the stored job reference, never submitting again) only when
its lease is free:

- its heartbeat is older than ``lease_s`` (the worker is dead, hung or cut off), or
- its worker ran on this machine (same boot and PID namespace) and that process is gone,
  so a crashed local run is resumed at once instead of after ``lease_s``, or
- its worker is this very worker (a trial it gave up recording earlier).

Timing. Every read-decide-write step (ask within ``n_trials`` and ``study_concurrency``,
claim, renew) runs under :class:`~sweeps.engine._study_lock.StudyLock`, so it is a compare-and-set:
two workers can never both claim one trial, and a worker that renews sees at once that its
trial was taken. Heartbeats and their ages are read on the lock's clock (the PostgreSQL
server's), so skew between machines does not count. A live worker misses its lease only if
it cannot write for ``lease_s - heartbeat_interval_s`` (3/4 of the lease): a database outage
or a paused process. It then finds the trial taken at its next renewal and drops it without
cancelling the job; until then both may poll the job, which is harmless (records are
idempotent and ``tell`` skips a finished trial). Choose ``lease_s`` well above the longest
outage you want to ride out; the default 300 s renews every 60 s.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import optuna

from sweeps import trial_record as ts
from sweeps.engine._study_lock import StudyLock

logger = logging.getLogger(__name__)

TrialState = optuna.trial.TrialState
FrozenTrial = optuna.trial.FrozenTrial
#: Where the worker ran: ``host/boot id/PID namespace``; a PID means something only there.
ATTR_WORKER_NODE = "worker_node"
MAX_HEARTBEAT_INTERVAL_S = 60.0
MAX_CLAIM_INTERVAL_S = 5.0
#: Wait this long before asking again after the study was at ``study_concurrency``.
FULL_RETRY_S = 1.0

_live_workers: set[str] = set()  # workers of this process: their trials are never orphans


@dataclass(frozen=True, slots=True)
class Asked:
    """What :meth:`StudyLeases.ask` got: a trial, or why not (``is_exhausted``: for good)."""

    trial: optuna.trial.Trial | None
    is_exhausted: bool = False


def node_id() -> str:
    """This machine and PID namespace: two workers with the same node share PIDs."""
    def read(path: str) -> str:
        try:
            return Path(path).read_text(encoding="ascii").strip()
        except OSError:
            return ""
    try:
        pid_ns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pid_ns = ""
    return f"{socket.gethostname()}/{read('/proc/sys/kernel/random/boot_id')}/{pid_ns}"


def new_worker_id() -> str:
    """``host:pid:random`` — readable in ``status``, unique per process and run."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def is_process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class StudyLeases:
    """Study-wide limits and trial leases of one worker; see the module docstring.

    Args:
        study: the shared study.
        lock: the study's :class:`StudyLock`.
        worker_id: this worker, as stored in the trials' ``worker`` attribute.
        lease_s: how long a trial without a heartbeat stays its worker's.
        study_concurrency: most trials RUNNING at once across all workers (None: no cap).
    """

    def __init__(self, study: optuna.Study, lock: StudyLock, *, worker_id: str,
                 lease_s: float, study_concurrency: int | None = None) -> None:
        self.study = study
        self.lock = lock
        self.worker_id = worker_id
        self.node = node_id()
        self.lease_s = lease_s
        self.study_concurrency = study_concurrency
        self.heartbeat_interval_s = min(MAX_HEARTBEAT_INTERVAL_S, lease_s / 4)
        self.claim_interval_s = min(MAX_CLAIM_INTERVAL_S, self.heartbeat_interval_s)
        self.n_held_by_others = 0
        self.held: frozenset[int] = frozenset()  # published by the loop each pass
        self._lost: set[int] = set()  # found taken over by the heartbeat thread
        self._lost_lock = threading.Lock()
        self._full_until_s = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _live_workers.add(worker_id)

    # --- asking -------------------------------------------------------------------------------

    def ask(self, *, max_trials: int, now_s: float) -> Asked:
        """``study.ask()`` only while the whole study has fewer than ``max_trials`` trials
        and fewer than ``study_concurrency`` running; the new trial is held by this worker."""
        if now_s < self._full_until_s:
            return Asked(None)
        with self.lock.hold() as clock_s:
            trials = self.study.get_trials(deepcopy=False)
            # An enqueued (WAITING) trial is not started yet: ask() starts it.
            n_started = sum(t.state is not TrialState.WAITING for t in trials)
            if n_started >= max_trials:
                return Asked(None, is_exhausted=True)
            n_running = sum(t.state is TrialState.RUNNING for t in trials)
            if self.study_concurrency is not None and n_running >= self.study_concurrency:
                self._full_until_s = now_s + FULL_RETRY_S
                return Asked(None)
            trial = self.study.ask()
            self._hold(trial._trial_id, clock_s)
            return Asked(trial)

    # --- taking over --------------------------------------------------------------------------

    def claim_orphans(self, held: Iterable[int]) -> list[FrozenTrial]:
        """Claim every RUNNING trial whose lease is free; the caller re-attaches to them."""
        held = set(held)
        claimed: list[tuple[FrozenTrial, str]] = []
        with self.lock.hold() as clock_s:
            others = 0
            for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if trial.number in held:
                    continue
                reason = self.free_because(trial, clock_s)
                if reason is None:
                    others += 1
                    continue
                self._hold(trial._trial_id, clock_s)
                claimed.append((trial, reason))
            self.n_held_by_others = others
        for trial, reason in claimed:
            logger.info("trial=%d taken over from worker %s: %s", trial.number,
                        trial.user_attrs.get(ts.ATTR_WORKER, "?"), reason)
        return [trial for trial, _ in claimed]

    def free_because(self, trial: FrozenTrial, clock_s: float) -> str | None:
        """Why the trial's lease is free, or None while another worker holds it."""
        worker = trial.user_attrs.get(ts.ATTR_WORKER)
        if worker == self.worker_id:
            return "it is this worker's own"
        if not isinstance(worker, str):
            return "it has no worker"
        if worker not in _live_workers and self._is_local_dead(worker, trial):
            return f"its worker process (pid {worker.split(':')[1]}) is gone"
        heartbeat_s = trial.user_attrs.get(ts.ATTR_HEARTBEAT)
        if not isinstance(heartbeat_s, (int, float)):
            start = trial.datetime_start
            heartbeat_s = start.timestamp() if start is not None else 0.0
        age_s = clock_s - heartbeat_s
        if age_s > self.lease_s:
            return f"no heartbeat for {age_s:.1f}s (lease_s {self.lease_s:g})"
        return None

    def _is_local_dead(self, worker: str, trial: FrozenTrial) -> bool:
        host, _, rest = worker.partition(":")
        pid_text = rest.partition(":")[0]
        node = trial.user_attrs.get(ATTR_WORKER_NODE)
        # Trials from before worker_node existed: trust the host name alone.
        is_same_node = node == self.node if node else host == socket.gethostname()
        if not (is_same_node and pid_text.isdigit()):
            return False
        # This process, but not one of its live workers: an earlier run_sweep that ended.
        return int(pid_text) == os.getpid() or not is_process_alive(int(pid_text))

    def _hold(self, trial_id: int, clock_s: float) -> None:
        storage = self.study._storage
        storage.set_trial_user_attr(trial_id, ts.ATTR_WORKER, self.worker_id)
        storage.set_trial_user_attr(trial_id, ATTR_WORKER_NODE, self.node)
        storage.set_trial_user_attr(trial_id, ts.ATTR_HEARTBEAT, clock_s)

    # --- renewing -----------------------------------------------------------------------------

    def renew(self, held: Iterable[int]) -> set[int]:
        """Write a fresh heartbeat on every held trial; return those no longer ours."""
        held = set(held)
        if not held:
            return set()
        lost = set()
        with self.lock.hold() as clock_s:
            running = {t.number: t for t in self.study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,))}
            for number in sorted(held):
                trial = running.get(number)
                if trial is None or trial.user_attrs.get(ts.ATTR_WORKER) != self.worker_id:
                    lost.add(number)  # told (maybe by us, just now) or taken over
                    continue
                try:
                    self.study._storage.set_trial_user_attr(trial._trial_id,
                                                            ts.ATTR_HEARTBEAT, clock_s)
                except optuna.exceptions.UpdateFinishedTrialError:
                    # Told by this worker's loop after the read (telling takes no lock):
                    # the other held trials still need their heartbeat this round.
                    lost.add(number)
        return lost

    def start_heartbeats(self, on_error: Callable[[Exception], None] | None = None) -> None:
        """Renew ``self.held`` every ``heartbeat_interval_s`` on a daemon thread."""
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_interval_s):
                try:
                    lost = self.renew(self.held)
                    with self._lost_lock:
                        self._lost |= lost
                except Exception as exc:  # the database may be down for a while: keep trying
                    logger.warning("heartbeat not written (%s); retrying in %.1fs", exc,
                                   self.heartbeat_interval_s)
                    if on_error is not None:
                        on_error(exc)
        self._thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
        self._thread.start()

    def take_lost(self) -> set[int]:
        """The held trials found taken over since the last call (drained)."""
        with self._lost_lock:
            lost, self._lost = self._lost, set()
        return lost & set(self.held)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        _live_workers.discard(self.worker_id)


__all__ = ["ATTR_WORKER_NODE", "Asked", "StudyLeases", "new_worker_id", "node_id"]
