"""Test-only fault hook: kill this process at a named point of the sweep, deterministically.

The crash tests (``tests/reliability_tests/test_crash_matrix.py``) need to SIGKILL
``gemini-sweep run`` inside windows too narrow to hit from outside, e.g. between a job's
submit and the write of its job reference. Runner code calls :func:`crash_point` at such
sites; it does nothing unless ``GEMINI_SWEEP_CRASH_AT`` is set, e.g.::

    GEMINI_SWEEP_CRASH_AT=after_submit:3   # SIGKILL at the 3rd pass of "after_submit"

The count is per process. SIGKILL (not an exception) so no ``finally`` block, atexit hook or
buffered write runs: exactly what a power cut or the OOM killer does to the process.
"""

from __future__ import annotations

import functools
import os
import signal
import threading

ENV_VAR = "GEMINI_SWEEP_CRASH_AT"
#: The named sites, in the order a trial passes them.
POINTS = ("after_submit", "after_job_ref", "mid_record", "before_tell")
# Also "after_cancel_reason" (a cancel decided and stored, not yet called), armed by its own
# test: not in the crash matrix, where a sweep may decide no cancel at all.

_lock = threading.Lock()
_hits: dict[str, int] = {}


@functools.cache
def _target() -> tuple[str, int] | None:
    """The armed point, read once per process: the hook costs nothing on later passes."""
    spec = os.environ.get(ENV_VAR, "").strip()
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count or "1")


def crash_point(name: str) -> None:
    """SIGKILL this process if ``name`` is the armed point and this is its armed pass."""
    target = _target()
    if target is None or target[0] != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        is_armed = _hits[name] == target[1]
    if is_armed:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["ENV_VAR", "POINTS", "crash_point"]
