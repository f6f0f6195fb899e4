"""Pick the plateau epoch of a loss curve. (stub: the real rule is being built under issue #4)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gemini_backend import LossSnapshot


@dataclass(frozen=True, slots=True)
class PlateauResult:
    epoch: int
    loss: float
    not_converged: bool = False
    overfitting: bool = False
    spike: bool = False
    used_validation: bool = False
    smoothed: tuple[float, ...] = ()


def epoch_means(
    snapshots: Sequence[LossSnapshot],
) -> tuple[list[float], list[float] | None]:
    """Per-step snapshots -> (per-epoch mean training loss, per-epoch eval loss or None)."""
    by_epoch: dict[int, list[float]] = {}
    evals: dict[int, float] = {}
    for s in snapshots:
        by_epoch.setdefault(s.epoch, []).append(s.loss)
        if s.eval_loss is not None:
            evals[s.epoch] = s.eval_loss
    epochs = sorted(by_epoch)
    train = [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]
    evaluation = [evals[e] for e in epochs] if evals and all(e in evals for e in epochs) else None
    return train, evaluation


def find_plateau(
    train_loss: Sequence[float],
    eval_loss: Sequence[float] | None = None,
    *,
    smoothing: float = 0.3,
    tolerance: float = 0.03,
    convergence_threshold: float = 0.02,
    spike_threshold: float = 0.25,
) -> PlateauResult:
    curve = list(eval_loss) if eval_loss else list(train_loss)
    best = min(range(len(curve)), key=curve.__getitem__)
    return PlateauResult(epoch=best + 1, loss=curve[best], used_validation=bool(eval_loss))
