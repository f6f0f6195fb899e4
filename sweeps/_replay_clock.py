"""Replay in simulated time: the same config and seed give the same sweep at any time_scale.

On the wall clock (``clock: wall``) a replay's decisions depend on when polls happen: at
``time_scale: 0.1`` a job often ends between two polls, so no pruner or patience ever sees its
epochs in time, while at 1.0 the same trials are pruned. With ``clock: simulated`` (the
default) the sweep and the replay backend share a clock that moves only when the loop sleeps,
in recorded (job) seconds: every poll, epoch boundary, cancel and submit happens at the same
job time whatever the machine does meanwhile, and ``time_scale`` only paces the real waiting
(0 = as fast as the machine goes). The loop also tells each finished trial before asking the
next one, so a proposal never depends on how fast the tracking thread wrote.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gemini_backend.replay.backend import ReplayBackend
from gemini_backend.replay.backend import ReplayBackendConfig
from sweeps.config.schema import SweepConfig

#: In the replay job folder: the sweep's job time, so a resumed sweep continues from it.
STATE_FILE = "simulated_clock"


def is_simulated(settings: object) -> bool:
    """Does this ``backend:`` section play a replay in simulated job time?"""
    return isinstance(settings, ReplayBackendConfig) and settings.clock == "simulated"


class SimulatedClock:
    """Seconds of job time, moved on only by :meth:`sleep` (which waits ``pace`` x as long).

    It starts at the wall clock's time, so jobs it writes to the replay job folder keep
    timestamps of the same kind as a wall-clock replay's.
    """

    def __init__(self, *, pace: float, start_s: float | None = None,
                 real_sleep: Callable[[float], None] = time.sleep) -> None:
        self._now_s = time.time() if start_s is None else start_s
        self._pace = pace
        self._real_sleep = real_sleep
        self._state_file: Path | None = None

    def keep_in(self, state_file: Path) -> None:
        """Continue from the time stored in ``state_file`` (a killed sweep's), and store it
        there at every sleep: a resumed sweep never sees its jobs go back in time."""
        try:
            self._now_s = max(self._now_s, float(state_file.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            pass  # none yet (or torn by a kill): the wall clock is later than any job's start
        self._state_file = state_file

    def now(self) -> float:
        return self._now_s

    def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        self._now_s += seconds
        if self._state_file is not None:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            # Its own partial file: two processes on one job folder never rename each other's.
            partial = self._state_file.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(repr(self._now_s), encoding="utf-8")
            partial.replace(self._state_file)
        if self._pace > 0:
            self._real_sleep(seconds * self._pace)


@dataclass(frozen=True, slots=True)
class SimulatedReplay:
    backend: ReplayBackend
    clock: SimulatedClock


def simulated_replay(config: SweepConfig) -> SimulatedReplay | None:
    """The replay backend on a simulated clock, when the config asks for one."""
    settings = config.backend
    if not isinstance(settings, ReplayBackendConfig) or not is_simulated(settings):
        return None
    clock = SimulatedClock(pace=settings.time_scale)
    # Played at recorded speed in job time: the time scale paces only the real waits.
    backend = ReplayBackend(settings.model_copy(update={"time_scale": 1.0}),
                            base_dir=config.config_dir, clock=clock.now)
    clock.keep_in(backend.job_root / STATE_FILE)
    return SimulatedReplay(backend=backend, clock=clock)
