"""Pick the plateau epoch of a loss curve (reference/plateau.md section 1.10).

Google's tuning guide says to "stop training at the lowest point in the curve right before it
plateaus": a curve that plateaus at about epochs 4-6 means epochs=4 gives "the same
performance". We read that as a tolerance rule, not a knee: the earliest epoch whose smoothed
loss is within ``tolerance`` x (loss range) of the best smoothed loss, on validation loss when
there is one (training loss cannot show overfitting). Knee detectors such as Kneedle pick epochs
far too early on these curves (plateau.md section 1.9), so none is used.

Pure functions on per-epoch curves (index 0 is epoch 1): no Optuna, MLflow or backend here.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from gemini_backend import LossSnapshot
from sweeps.plateau._rules import CurveFacts
from sweeps.plateau._rules import analyse_curve
from sweeps.plateau._rules import ema_smooth

logger = logging.getLogger(__name__)

ObjectiveKind = Literal["plateau_loss", "final_loss", "eval_loss"]
OBJECTIVE_KINDS: tuple[str, ...] = ("plateau_loss", "final_loss", "eval_loss")
# Validation loss needs this many finite epochs to be worth more than the training loss.
MIN_VALIDATION_EPOCHS = 3


@dataclass(frozen=True, slots=True)
class PlateauResult:
    """Where a loss curve plateaus, with the diagnostics users see in exports.

    ``epoch`` is 1-based; ``loss`` is the smoothed loss there (the value the rule compared),
    ``raw_loss`` the reported one. ``smoothed`` is the whole smoothed curve the rule ran on
    (validation loss when ``used_validation``). ``recommended_epochs`` is what to set on the
    next job: ``epoch``, or more epochs than were run when the curve did not converge.
    """

    epoch: int
    loss: float
    not_converged: bool = False
    overfitting: bool = False
    spike: bool = False
    used_validation: bool = False
    smoothed: tuple[float, ...] = ()
    flat: bool = False
    raw_loss: float = math.nan
    recommended_epochs: int | None = None
    reason: str = ""


def epoch_means(
    snapshots: Sequence[LossSnapshot],
) -> tuple[list[float], list[float] | None]:
    """Per-step snapshots -> (per-epoch mean training loss, per-epoch eval loss or None).

    The eval list is None unless every epoch has one. See :func:`_per_epoch` for how steps
    become epochs; :func:`ended_epoch_losses` reads the same table while a job runs.
    """
    train, evals = _per_epoch(snapshots)
    epochs = sorted(train)
    has_every_eval = bool(epochs) and all(e in evals for e in epochs)
    return [train[e] for e in epochs], [evals[e] for e in epochs] if has_every_eval else None


def ended_epoch_losses(
    snapshots: Sequence[LossSnapshot], *, is_terminal: bool, use_eval: bool
) -> dict[int, float]:
    """The loss of each epoch that has ended, as pruners and patience see it: its eval loss
    when validating, else its mean training loss, both from :func:`_per_epoch`, so a pruner
    reads exactly the numbers the recorded curve and the objective are made of.

    An epoch has ended when a later one started or the job is terminal; when validating,
    also as soon as its eval loss arrived, since backends measure it at the end of the epoch
    (the :class:`LossSnapshot` contract). That lets a pruner or patience cancel the job at
    the end of epoch k instead of one poll into epoch k + 1, which is paid for.
    """
    train, evals = _per_epoch(snapshots)
    if use_eval:
        return dict(sorted(evals.items()))
    last_epoch = max(train, default=0)
    return {e: loss for e, loss in sorted(train.items()) if e < last_epoch or is_terminal}


def _per_epoch(snapshots: Sequence[LossSnapshot]) -> tuple[dict[int, float], dict[int, float]]:
    """The one place that turns a backend's step curve into epochs, so every consumer
    (pruners, patience, the recorded curve, the objective) agrees.

    A step reported twice (re-polled) counts once, its last report kept; non-finite step
    losses are left out of the mean; an epoch with no finite step at all is NaN (and an
    epoch with no step at all too, so that every epoch from 1 to the last has an entry).
    The eval loss of an epoch is the value reported for it (the last, if several).
    """
    by_step: dict[int, LossSnapshot] = {}
    for snapshot in snapshots:
        by_step[snapshot.step] = snapshot
    if not by_step:
        return {}, {}
    too_early = [s for s in by_step.values() if s.epoch < 1]
    if too_early:
        raise ValueError(
            f"loss snapshot at step {too_early[0].step} has epoch {too_early[0].epoch}; "
            "epochs are 1-based (LossSnapshot contract): fix the backend that reported it"
        )
    losses: dict[int, list[float]] = {}
    evals: dict[int, float] = {}
    for snapshot in sorted(by_step.values(), key=lambda s: s.step):
        if math.isfinite(snapshot.loss):
            losses.setdefault(snapshot.epoch, []).append(snapshot.loss)
        if snapshot.eval_loss is not None:
            evals[snapshot.epoch] = snapshot.eval_loss
    epochs = range(1, max(s.epoch for s in by_step.values()) + 1)
    train = {e: statistics.fmean(losses[e]) if e in losses else math.nan for e in epochs}
    return train, evals


def find_plateau(
    train_loss: Sequence[float],
    eval_loss: Sequence[float] | None = None,
    *,
    smoothing: float = 0.3,
    tolerance: float = 0.03,
    validation_tolerance: float | None = None,
    convergence_threshold: float = 0.02,
    spike_threshold: float = 0.25,
) -> PlateauResult:
    """The earliest epoch from which the loss stays within ``tolerance`` of its best.

    Args:
        train_loss: per-epoch mean training loss (index 0 is epoch 1). NaN/inf are ignored.
        eval_loss: per-epoch validation loss, same length; used instead of ``train_loss``
            when it has at least 3 finite epochs.
        smoothing: EMA weight in [0, 1): TensorBoard's debiased formula, run from the last
            epoch back so that it does not delay the pick (see ``ema_smooth``).
        tolerance: fraction of the smoothed loss range above the minimum that still counts
            as "the same performance", on training loss.
        validation_tolerance: the same on validation loss (default ``tolerance``; 0 picks
            the smoothed minimum). A training loss falls to the end, so only a tolerance
            finds where it levels off; a validation loss has a real minimum, and an epoch
            picked before it gives up held-out quality (benchmarks/plateau_regret.py). A
            curve is flat by ``tolerance`` either way.
        convergence_threshold: relative fall per epoch at the end that means "still falling".
        spike_threshold: relative rise between two epochs, before the minimum, that counts as
            a spike; no epoch before the spike resolves is picked.

    Raises:
        ValueError: empty input, no finite loss, mismatched lengths, or an option out of range.
    """
    if validation_tolerance is None:
        validation_tolerance = tolerance
    _check_options(smoothing, tolerance, convergence_threshold, spike_threshold,
                   validation_tolerance)
    curve, used_validation = _choose_curve(train_loss, eval_loss)
    flat_tolerance = tolerance
    if used_validation:
        tolerance = validation_tolerance
    smoothed = ema_smooth(curve, smoothing, reverse=True)
    facts = analyse_curve(
        curve, smoothed, tolerance=tolerance, convergence_threshold=convergence_threshold,
        spike_threshold=spike_threshold, flat_tolerance=flat_tolerance,
    )
    overfitting = used_validation and facts.rises_after_best
    result = PlateauResult(
        epoch=facts.epoch, loss=smoothed[facts.epoch - 1], not_converged=facts.not_converged,
        overfitting=overfitting, spike=facts.spike_epoch is not None,
        used_validation=used_validation, smoothed=tuple(smoothed), flat=facts.flat,
        raw_loss=curve[facts.epoch - 1], recommended_epochs=facts.recommended_epochs,
        reason=_reason(facts, used_validation=used_validation, has_eval=eval_loss is not None,
                       overfitting=overfitting, tolerance=tolerance,
                       flat_tolerance=flat_tolerance),
    )
    logger.debug("plateau: %s", result.reason)
    return result


def objective_value(
    kind: str,
    train_loss: Sequence[float],
    eval_loss: Sequence[float] | None,
    plateau: PlateauResult,
) -> float:
    """The number a trial reports to Optuna (lower is better) for objective ``kind``.

    ``plateau_loss``: the smoothed loss at the plateau epoch (validation loss when there is a
    validation split); ``final_loss``: the last finite epoch's loss, validation if present;
    ``eval_loss``: the minimum validation loss.
    """
    if kind == "plateau_loss":
        return plateau.loss
    finite_eval = [v for v in eval_loss or () if math.isfinite(v)]
    if kind == "final_loss":
        finite = finite_eval or [v for v in train_loss if math.isfinite(v)]
        if not finite:
            raise ValueError("objective final_loss: the job reported no finite loss")
        return finite[-1]
    if kind == "eval_loss":
        if not finite_eval:
            raise ValueError(
                "objective eval_loss needs a validation loss, but this job reported none: "
                "add a validation split to the dataset or use objective: plateau_loss"
            )
        return min(finite_eval)
    raise ValueError(f"unknown objective {kind!r}; choose one of {', '.join(OBJECTIVE_KINDS)}")


def _check_options(smoothing: float, tolerance: float, convergence: float, spike: float,
                   validation_tolerance: float) -> None:
    """Same bounds as PlateauConfig, for callers that build the options themselves."""
    problems = []
    if not 0.0 <= smoothing < 1.0:
        problems.append(f"smoothing={smoothing} must be in [0, 1)")
    if not 0.0 < tolerance < 1.0:
        problems.append(f"tolerance={tolerance} must be in (0, 1)")
    if not 0.0 <= validation_tolerance < 1.0:
        problems.append(f"validation_tolerance={validation_tolerance} must be in [0, 1)")
    if not convergence > 0.0:
        problems.append(f"convergence_threshold={convergence} must be > 0")
    if not spike > 0.0:
        problems.append(f"spike_threshold={spike} must be > 0")
    if problems:
        raise ValueError("plateau options: " + "; ".join(problems))


def _choose_curve(
    train_loss: Sequence[float], eval_loss: Sequence[float] | None
) -> tuple[list[float], bool]:
    """Validation loss when it has enough finite epochs, else training loss."""
    train = [float(v) for v in train_loss]
    if not train:
        raise ValueError("find_plateau needs at least one epoch of training loss; got none")
    if eval_loss is not None and len(eval_loss) != len(train):
        raise ValueError(
            f"train_loss has {len(train)} epochs but eval_loss has {len(eval_loss)}; "
            "pass one value per epoch for both (use NaN for a missing one)"
        )
    evaluation = [float(v) for v in eval_loss or ()]
    if sum(math.isfinite(v) for v in evaluation) >= MIN_VALIDATION_EPOCHS:
        return evaluation, True
    if not any(math.isfinite(v) for v in train):
        raise ValueError(
            f"no finite training loss in {len(train)} epochs (all NaN/inf): the job diverged "
            "or reported nothing; lower the learning-rate multiplier and rerun"
        )
    return train, False


def _reason(
    facts: CurveFacts, *, used_validation: bool, has_eval: bool, overfitting: bool,
    tolerance: float, flat_tolerance: float,
) -> str:
    """One line for exports: what was picked, on which curve, and every flag raised."""
    name = "validation loss" if used_validation else "training loss"
    percent = f"{tolerance * 100:.3g}%"
    if facts.single:
        parts = [f"only epoch {facts.epoch} has a finite {name}: cannot tell where it "
                 "plateaus; train for more epochs"]
    elif facts.flat:
        parts = [f"flat from epoch {facts.epoch}: {name} varies by under "
                 f"{flat_tolerance * 100:.3g}% over {facts.last_epoch} epochs"]
    elif facts.epoch == facts.last_epoch:
        parts = [f"no plateau yet: {name} is lowest at the last epoch ({facts.last_epoch})"]
    elif tolerance == 0.0:
        parts = [f"{name} (smoothed) lowest at epoch {facts.epoch} of {facts.last_epoch}"]
    else:
        parts = [f"{name} within {percent} of its best from epoch {facts.epoch} "
                 f"of {facts.last_epoch} (best at epoch {facts.best_epoch})"]
    if facts.spike_epoch is not None:
        parts.append(f"spike at epoch {facts.spike_epoch}, resolved by epoch "
                     f"{facts.spike_resolved_epoch or 'never'}")
    if overfitting:
        parts.append(f"overfitting: validation loss rises after epoch {facts.best_epoch}")
    if facts.not_converged and not facts.single:
        falling = (f"still falling {facts.fall_per_epoch:.1%} per epoch at the end"
                   if facts.fall_per_epoch > 0 else "lowest at the last epoch")
        parts.append(f"not converged: {falling}; try {facts.recommended_epochs} epochs")
    if has_eval and not used_validation:
        parts.append(f"validation loss has under {MIN_VALIDATION_EPOCHS} finite epochs, so "
                     "training loss was used: overfitting cannot be detected")
    elif not used_validation:
        parts.append("no validation split: overfitting cannot be detected")
    return "; ".join(parts)
