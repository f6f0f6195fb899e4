"""What a recorded curve set offers a benchmark, read from its recordings: the grid it covers,
the loss that judges quality, and the target a sweep must reach, all fixed before any method
runs (pure functions; ``cost_efficiency.py`` and its leave-one-set-out driver use them).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemini_backend.replay.backend import ReplayRecord

VERTEX_BATCH_SIZE = 16  # what the Vertex-like space fixes when the grid has it
TARGET_GAP = 0.02
SMOOTHING_WIDTH = 3  # epochs in the centred moving mean that damps one-epoch dips


@dataclass(frozen=True, slots=True)
class Grid:
    """The knobs a set's recordings cover: a sweep over it searches exactly these."""

    max_epochs: int
    batch_sizes: tuple[int, ...]
    multiplier_low: float
    multiplier_high: float

    @property
    def vertex_batch_size(self) -> int:
        """Batch 16 where recorded (Vertex picks its own; 16 stands in), else the middle one."""
        if VERTEX_BATCH_SIZE in self.batch_sizes:
            return VERTEX_BATCH_SIZE
        return self.batch_sizes[len(self.batch_sizes) // 2]

    def spaces(self) -> dict[str, dict[str, Any]]:
        multiplier = {"low": self.multiplier_low, "high": self.multiplier_high, "log": True}
        return {
            "vertex": {"batch_size": {"value": self.vertex_batch_size},
                       "learning_rate_multiplier": multiplier},
            "all": {"batch_size": {"choices": list(self.batch_sizes)},
                    "learning_rate_multiplier": multiplier},
        }


def grid_of(records: Sequence[ReplayRecord], path: Path | str = "curves") -> Grid:
    """The grid every record of a set shares.

    Raises:
        ValueError: a record has no batch size, or records stop at different epochs (a
            replayed job could then ask for epochs some cells never ran); names the file.
    """
    epochs = {r.max_epochs for r in records}
    if len(epochs) != 1:
        raise ValueError(f"{path}: records end at different epochs {sorted(epochs)}; "
                         "record every cell for the same number of epochs")
    try:
        batch_sizes = sorted({int(r.params["batch_size"]) for r in records})
    except KeyError:
        raise ValueError(f"{path}: a record has no params.batch_size; the benchmark's "
                         "spaces need one on every record") from None
    multipliers = [float(r.params["learning_rate_multiplier"]) for r in records]
    return Grid(max_epochs=epochs.pop(), batch_sizes=tuple(batch_sizes),
                multiplier_low=min(multipliers), multiplier_high=max(multipliers))


def quality_field(records: Sequence[ReplayRecord]) -> str:
    """``test_loss`` when every epoch-end point has one (held out, nothing selects on it),
    else ``eval_loss`` (the loss that sweeps select on: an optimistic judge)."""
    ends = [p for r in records for p in r.curve if p.eval_loss is not None]
    has_test = bool(ends) and all(p.test_loss is not None for p in ends)
    return "test_loss" if has_test else "eval_loss"


def loss_by_epoch(record: ReplayRecord, field: str) -> dict[int, float]:
    """The record's per-epoch ``field`` (``eval_loss`` or ``test_loss``), epoch-end points."""
    return {p.epoch: getattr(p, field) for p in record.curve
            if p.eval_loss is not None and getattr(p, field) is not None}


def cell_of(record: ReplayRecord) -> tuple[Any, ...]:
    return record.params["batch_size"], record.params["learning_rate_multiplier"]


def cell_means(records: Sequence[ReplayRecord], field: str) -> dict[tuple[Any, ...],
                                                                      dict[int, float]]:
    """Per cell (batch size, multiplier): the mean over its seeds at every epoch."""
    runs: dict[tuple[Any, ...], list[dict[int, float]]] = {}
    for record in records:
        runs.setdefault(cell_of(record), []).append(loss_by_epoch(record, field))
    return {cell: {e: statistics.fmean(run[e] for run in seeds if e in run) for e in seeds[0]}
            for cell, seeds in runs.items()}


def smoothed(curve: dict[int, float], width: int = SMOOTHING_WIDTH) -> dict[int, float]:
    """Centred moving mean over ``width`` epochs (shorter at the ends)."""
    epochs = sorted(curve)
    half = width // 2
    return {e: statistics.fmean(curve[x] for x in epochs[max(0, i - half): i + half + 1])
            for i, e in enumerate(epochs)}


def target_of(records: Sequence[ReplayRecord], field: str, *, gap: float = TARGET_GAP,
              batch_size: int | None = None) -> float:
    """``gap`` above the best value of any cell's smoothed seed-mean curve (cells of
    ``batch_size`` only, when given): what the space can offer, read from the recordings
    before any method runs, so a one-epoch dip of one run cannot set it."""
    means = cell_means(records, field)
    best = min(value for cell, curve in means.items()
               if batch_size is None or cell[0] == batch_size
               for value in smoothed(curve).values())
    return best * (1 + gap)
