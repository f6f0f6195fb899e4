"""Epochs as fidelity: run every trial at the maximum epochs and pick the epoch from its curve.

A sweep that searches ``epochs`` pays for a 2-epoch job, a 4-epoch job and an 8-epoch job of
nearly the same configuration, although the 8-epoch job's curve already shows epochs 1-8.
With ``search_space.epochs: {mode: from_curve, max: 8}`` epochs is not an Optuna parameter:
every trial runs ``max`` epochs, its objective is taken at its plateau epoch, and that epoch
is what ``recommended_epochs`` and the export recommend (on Vertex, the checkpoint at that
epoch; reference/anchors.md (d) item 4).

With ``patience: p`` a job whose loss has gone ``p`` epochs without a new best is cancelled
and its trial completes on the epochs it ran: the epochs after a plateau only confirm it (or
the overfitting), and they are paid for. Any new best resets the count, however small:
counting from the plateau epoch instead (tolerance 3% of the curve's range) stopped tails
whose small gains add up to the best configuration's edge, and the cost benchmark lost its
target on ``next_number`` (docs/cost_efficiency.md). On the local backend the checkpoints
of a cancelled job are kept; whether Vertex keeps those of a cancelled job is not
documented, so the export then says to tune again with the recommended epochs.

Caveat: epoch k of an N-epoch job is a k-epoch job only when the learning-rate schedule does
not depend on N. The local backend trains at a constant rate, so they are the same there; a
service that decays the rate over the job's length (Vertex and the Gemini API do not document
their schedule) trains epoch k of a long job at a higher rate than the end of a k-epoch job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweeps.config.schema import FromCurve

#: The ``epochs_mode`` user attribute of a trial whose epoch was chosen from its curve.
ATTR_EPOCHS_MODE = "epochs_mode"
FROM_CURVE = "from_curve"

#: Said by the export and the docs wherever a from_curve epoch is recommended.
SCHEDULE_CAVEAT = (
    "the epoch was chosen from the curve of a {max_epochs}-epoch job; it equals a "
    "{epochs}-epoch job only if the service's learning-rate schedule does not depend on the "
    "job's length (true for the local backend; Vertex and the Gemini API do not say). Prefer "
    "the checkpoint at epoch {epochs} where the service keeps one (Vertex)."
)


def is_from_curve(spec: Any) -> bool:
    """Is this ``epochs`` knob the from_curve mode (not an Optuna parameter)?"""
    return isinstance(spec, FromCurve)


def curve_patience(spec: Any) -> int | None:
    """Epochs without a new best after which a from_curve job is stopped (None: never)."""
    return spec.patience if isinstance(spec, FromCurve) else None


def plateau_passed(epoch_losses: Mapping[int, float], patience: int | None) -> bool:
    """Has the curve gone ``patience`` epochs past its best, so that what follows could only
    confirm the plateau or the overfitting? ``epoch_losses`` holds the epochs that ended."""
    if patience is None or not epoch_losses:
        return False
    best_epoch = min(epoch_losses, key=lambda epoch: (epoch_losses[epoch], epoch))
    return max(epoch_losses) - best_epoch >= patience


__all__ = ["ATTR_EPOCHS_MODE", "FROM_CURVE", "FromCurve", "curve_patience",
           "is_from_curve", "plateau_passed", "schedule_caveat"]


def schedule_caveat(*, epochs: int, max_epochs: int) -> str:
    """The learning-rate schedule warning for an epoch chosen from a longer job's curve."""
    return SCHEDULE_CAVEAT.format(epochs=epochs, max_epochs=max_epochs)
