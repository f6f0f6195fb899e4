"""The job process: ``python -m gemini_backend.local._worker JOB_DIR --lock-fd N``.

Started by :meth:`LocalBackend.submit` in its own session, it inherits the job's locked
``worker.lock`` descriptor and keeps it until it exits, so a poller that can take the lock
knows the worker is gone. It trains, appends one curve line per step, saves weights every
epoch, and ends by writing a terminal status; SIGTERM or a ``cancel`` file stops it at the
next step with the partial curve kept.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gemini_backend.base import JobState
from gemini_backend.base import LossSnapshot
from gemini_backend.local._jobdir import JobDir
from gemini_backend.local._jobdir import curve_line

logger = logging.getLogger("gemini_backend.local.worker")


class _StopFlag:
    """Set by SIGTERM or found as the job's ``cancel`` file."""

    def __init__(self, job: JobDir) -> None:
        self._job = job
        self.is_set = False

    def on_signal(self, signum: int, frame: object) -> None:
        del frame
        logger.info("signal %d: stopping at the next step", signum)
        self.is_set = True

    def __call__(self) -> bool:
        # One stat per step: negligible next to a training step, and it lets a cancel work
        # even when the signal could not be delivered (another user's poller, a stale pid).
        self.is_set = self.is_set or self._job.cancel_file.exists()
        return self.is_set


def run_job(job: JobDir) -> JobState:
    """Train the job in ``job`` and write its terminal status; returns the final state."""
    stop = _StopFlag(job)
    signal.signal(signal.SIGTERM, stop.on_signal)
    request, settings = job.read_job()
    job.update_status(state=JobState.RUNNING.value, pid=os.getpid(), started_at_s=time.time())
    if stop():
        return _finish(job, JobState.CANCELLED)

    import torch  # here, not at module import: the status above is written before the slow part

    from gemini_backend.local import _models
    from gemini_backend.local import _train

    torch.set_num_threads(settings.threads)
    model = _models.build_model(settings)
    train_set = [model.encode(e) for e in request.train]
    validation_set = [model.encode(e) for e in request.validation]
    total_steps = settings.epochs * _train.steps_per_epoch(len(train_set), settings.batch_size)
    job.update_status(total_steps=total_steps, checkpoints=[])
    job.weights_dir.mkdir(exist_ok=True)
    with open(job.curve_file, "a", encoding="utf-8", buffering=1) as curve:

        def on_step(snapshot: LossSnapshot, tokens: int) -> None:
            curve.write(curve_line(snapshot, tokens=tokens, time_s=time.time()))

        def on_epoch_end(epoch: int, step: int) -> None:
            relative = f"{job.weights_dir.name}/{_models.weights_name(settings, epoch)}"
            model.save(job.path / relative)
            checkpoints = job.read_status().get("checkpoints", [])
            checkpoints.append({"checkpoint_id": f"epoch-{epoch}", "epoch": epoch,
                                "step": step, "path": relative})
            job.update_status(checkpoints=checkpoints)
            logger.info("epoch %d done at step %d/%d", epoch, step, total_steps)

        finished = _train.train(
            model, train_set, validation_set,
            epochs=settings.epochs, batch_size=settings.batch_size,
            learning_rate=settings.learning_rate, seed=settings.seed,
            hooks=_train.LoopHooks(on_step=on_step, on_epoch_end=on_epoch_end,
                                   should_stop=stop),
        )
    if not finished:
        return _finish(job, JobState.CANCELLED)
    final = job.read_status()["checkpoints"][-1]["path"]
    return _finish(job, JobState.SUCCEEDED, tuned_model=final)


def _finish(job: JobDir, state: JobState, **fields: Any) -> JobState:
    job.update_status(state=state.value, finished_at_s=time.time(), **fields)
    logger.info("job finished: %s", state.value)
    return state


def _hold_lock(job: JobDir, lock_fd: int | None) -> int:
    """The inherited locked descriptor, or (run by hand) a freshly taken lock."""
    if lock_fd is not None:
        return lock_fd
    fd = job.take_worker_lock()
    if fd is None:
        sys.exit(f"{job.path}: another worker holds {job.lock_file}")
    return fd


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--lock-fd", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = JobDir(args.job_dir)
    _hold_lock(job, args.lock_fd)  # never closed: the OS drops the lock when we exit
    try:
        state = run_job(job)
    except BaseException as exc:  # the status must say why, whatever went wrong
        logger.exception("job failed")
        message = f"{type(exc).__name__}: {exc}"
        job.update_status(state=JobState.FAILED.value, error_message=message,
                          finished_at_s=time.time())
        return 1
    return 0 if state is JobState.SUCCEEDED else 3


if __name__ == "__main__":
    sys.exit(main())
