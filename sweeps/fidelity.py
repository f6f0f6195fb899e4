"""Epochs as fidelity: run every trial at the maximum epochs and pick the epoch from its curve.

A sweep that searches ``epochs`` pays for a 2-epoch job, a 4-epoch job and an 8-epoch job of
nearly the same configuration, although the 8-epoch job's curve already shows epochs 1-8.
With ``search_space.epochs: {mode: from_curve, max: 8}`` epochs is not an Optuna parameter:
every trial runs ``max`` epochs, its objective is taken at its plateau epoch, and that epoch
is what ``recommended_epochs`` and the export recommend (on Vertex, the checkpoint at that
epoch; reference/anchors.md (d) item 4).

With ``patience: p`` a job is cancelled once its plateau epoch (the epoch the export would
recommend, by the plateau rule the trial is scored with) is ``p`` epochs behind its last
ended epoch, and its trial completes on the epochs it ran: the epochs after a plateau only
confirm it (or the overfitting), and they are paid for. Counting from the plateau epoch
rather than from the lowest loss also stops a tail that still improves, but by less than
the plateau rule's tolerance: the rule already calls those epochs "the same performance".
On the local backend the checkpoints of a cancelled job are kept; whether Vertex keeps those
of a cancelled job is not documented, so the export then says to tune again with the
recommended epochs.

Caveat: epoch k of an N-epoch job is a k-epoch job only when the learning-rate schedule does
not depend on N. The local backend trains at a constant rate, so they are the same there; a
service that decays the rate over the job's length (Vertex and the Gemini API do not document
their schedule) trains epoch k of a long job at a higher rate than the end of a k-epoch job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sweeps.config import FromCurve
from sweeps.config import PlateauConfig
from sweeps.plateau import find_plateau

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


def curve_epochs(spec: FromCurve) -> int:
    """The epochs every trial of a from_curve sweep runs."""
    return int(spec.max)


def curve_patience(spec: Any) -> int | None:
    """Epochs past its plateau epoch after which a from_curve job is stopped (None: never)."""
    return spec.patience if isinstance(spec, FromCurve) else None


def plateau_passed(epoch_losses: Mapping[int, float], patience: int | None,
                   plateau: PlateauConfig) -> bool:
    """Is the curve's plateau epoch ``patience`` epochs behind its last ended epoch, so that
    what follows could only confirm the plateau or the overfitting? ``epoch_losses`` holds
    the epochs that ended; ``plateau`` is the sweep's plateau rule."""
    if patience is None or len(epoch_losses) <= patience:
        return False
    epochs = sorted(epoch_losses)
    found = find_plateau([epoch_losses[epoch] for epoch in epochs], **plateau.model_dump())
    return epochs[-1] - epochs[found.epoch - 1] >= patience


__all__ = ["ATTR_EPOCHS_MODE", "FROM_CURVE", "FromCurve", "curve_epochs", "curve_patience",
           "is_from_curve", "plateau_passed", "schedule_caveat"]


def schedule_caveat(*, epochs: int, max_epochs: int) -> str:
    """The learning-rate schedule warning for an epoch chosen from a longer job's curve."""
    return SCHEDULE_CAVEAT.format(epochs=epochs, max_epochs=max_epochs)
