"""The steps of the plateau rule (reference/plateau.md sections 1.2 and 1.10), kept apart from
:mod:`sweeps.plateau.analysis` so that each stays short. Pure functions on lists of floats."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

# Epochs the validation minimum must precede the last epoch by to call the rise overfitting.
OVERFIT_MIN_GAP_EPOCHS = 2
# Last epochs whose least-squares slope says whether the loss is still falling.
TREND_WINDOW_EPOCHS = 3
# More epochs to try when a curve did not converge (Google: "use a higher value";
# OpenAI: "increase the number of epochs by 1 or 2").
EXTRA_EPOCHS_IF_NOT_CONVERGED = 2


@dataclass(frozen=True, slots=True)
class CurveFacts:
    """What :func:`analyse_curve` found; epochs are 1-based."""

    epoch: int
    best_epoch: int
    last_epoch: int
    recommended_epochs: int
    single: bool = False
    flat: bool = False
    not_converged: bool = False
    rises_after_best: bool = False
    spike_epoch: int | None = None
    spike_resolved_epoch: int | None = None
    fall_per_epoch: float = 0.0


def ema_smooth(values: Sequence[float], weight: float, *, reverse: bool = False) -> list[float]:
    """TensorBoard's debiased EMA ("classicSmoothing"); non-finite points pass through.

    ``reverse=True`` runs it from the last point back, so each epoch is averaged with the
    epochs *after* it. The plateau rule uses that: a forward EMA lags a sharp drop by
    about ``w / (1 - w)`` epochs plus the weight of the pre-drop losses, which on a
    7-epoch curve moves the pick from Google's "epoch 4" to epoch 6 (plateau.md section 1.2,
    "Weakness: lag"); the reversed one smooths noise without that delay and only counts an
    epoch as on the plateau if the loss stays there.
    """
    w = min(max(weight, 0.0), 1.0) if math.isfinite(weight) else 0.0
    out = [float(v) for v in values]
    finite = [v for v in out if math.isfinite(v)]
    if not finite or all(v == finite[0] for v in finite):
        return out
    order = range(len(out) - 1, -1, -1) if reverse else range(len(out))
    last, count = 0.0, 0
    for i in order:
        if not math.isfinite(out[i]):
            continue
        last = last * w + (1.0 - w) * out[i]
        count += 1
        out[i] = last / (1.0 if w == 1.0 else 1.0 - w**count)
    return out


def analyse_curve(
    curve: Sequence[float],
    smoothed: Sequence[float],
    *,
    tolerance: float,
    convergence_threshold: float,
    spike_threshold: float,
    flat_tolerance: float | None = None,
) -> CurveFacts:
    """Apply the rule: earliest epoch with ``smoothed <= best + tolerance * range``, not
    before an early spike resolves; then the convergence and overfitting diagnostics. A
    curve whose whole range is within ``flat_tolerance`` (default ``tolerance``) of its
    best, relative to the loss itself, is flat: its first epoch is as good as any.

    ``curve`` must hold at least one finite value; ``smoothed`` is finite where it is.
    """
    raw = [(i + 1, v) for i, v in enumerate(curve) if math.isfinite(v)]
    points = [(i + 1, v) for i, v in enumerate(smoothed) if math.isfinite(v)]
    last_epoch = raw[-1][0]
    if len(raw) == 1:
        return CurveFacts(epoch=last_epoch, best_epoch=last_epoch, last_epoch=last_epoch,
                          recommended_epochs=last_epoch + EXTRA_EPOCHS_IF_NOT_CONVERGED,
                          single=True, not_converged=True)
    best_epoch, best = min(points, key=lambda p: p[1])
    level_range = max(v for _, v in points) - best
    if flat_tolerance is None:
        flat_tolerance = tolerance
    if level_range <= flat_tolerance * abs(best):
        # Every epoch is within tolerance of the best relative to the loss itself.
        first = points[0][0]
        return CurveFacts(epoch=first, best_epoch=best_epoch, last_epoch=last_epoch,
                          recommended_epochs=first, flat=True)
    band = best + tolerance * level_range
    spike_epoch, resolved_epoch = early_spike(raw, best_epoch, spike_threshold)
    earliest = resolved_epoch or 1
    epoch = next((e for e, v in points if e >= earliest and v <= band), best_epoch)
    is_rising_at_end = best_epoch <= last_epoch - OVERFIT_MIN_GAP_EPOCHS and points[-1][1] > band
    fall_per_epoch = relative_fall(raw[-TREND_WINDOW_EPOCHS:])
    is_still_falling = fall_per_epoch > convergence_threshold
    not_converged = epoch == last_epoch or is_still_falling
    recommended = last_epoch + EXTRA_EPOCHS_IF_NOT_CONVERGED if not_converged else epoch
    return CurveFacts(epoch=epoch, best_epoch=best_epoch, last_epoch=last_epoch,
                      recommended_epochs=recommended, not_converged=not_converged,
                      rises_after_best=is_rising_at_end, spike_epoch=spike_epoch,
                      spike_resolved_epoch=resolved_epoch, fall_per_epoch=fall_per_epoch)


def early_spike(
    raw: Sequence[tuple[int, float]], best_epoch: int, threshold: float
) -> tuple[int | None, int | None]:
    """(first spike epoch, epoch by which every early spike resolved) or (None, None).

    A spike is a rise by more than ``threshold`` relative to the previous epoch, starting
    before the best epoch (a rise after it is overfitting, not a spike). Raw values are used:
    smoothing would spread the spike and hide a third of it. A spike has resolved at the
    first later epoch whose loss is back at or below the pre-spike loss.
    """
    first_spike: int | None = None
    resolved: int | None = None
    for (start, before), (peak, after) in pairwise(raw):
        if start >= best_epoch:
            break
        if after - before <= threshold * abs(before):
            continue
        first_spike = first_spike or peak
        back = next((e for e, v in raw if e > peak and v <= before), None)
        if back is not None:
            resolved = max(resolved or back, back)
    return first_spike, resolved


def relative_fall(raw: Sequence[tuple[int, float]]) -> float:
    """Least-squares fall per epoch over ``raw``, relative to its mean level (0 if unknown)."""
    if len(raw) < 2:
        return 0.0
    epochs = [float(e) for e, _ in raw]
    values = [v for _, v in raw]
    level = abs(statistics.fmean(values))
    if level == 0.0:
        return 0.0
    return -statistics.linear_regression(epochs, values).slope / level
