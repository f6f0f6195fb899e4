"""Scoring a finished local job's checkpoints on examples it never trained or selected on.

The recording script keeps a held-out test loss beside the validation loss; it must be the
same loss the job computes for validation, on the same weights, so it lives beside the
training code rather than in the script.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gemini_backend.base import Example


def checkpoint_losses(job_path: Path, examples: Sequence[Example]) -> dict[int, float]:
    """Each saved epoch's weights of the job in ``job_path`` scored on ``examples`` as the
    job scores its validation split (mean token loss), keyed by epoch."""
    import torch

    from gemini_backend.local import _models
    from gemini_backend.local import _train
    from gemini_backend.local._jobdir import JobDir

    torch.set_num_threads(1)
    job = JobDir(job_path)
    _, settings = job.read_job()
    losses = {}
    for checkpoint in job.read_status()["checkpoints"]:
        model = _models.load_tuned_model(settings, job.path / checkpoint["path"])
        batches = _train.make_batches([model.encode(e) for e in examples], settings.batch_size,
                                      pad_id=model.pad_id)
        losses[checkpoint["epoch"]] = _train.validation_loss(model, batches)
    return losses
