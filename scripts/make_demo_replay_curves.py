"""Write ``configs/data/replay_demo_curves.json``: synthetic recorded curves for the replay demo.

The curves are made up, not recorded: a 3 x 3 grid (batch size 2/4/8, learning-rate
multiplier 0.3/1/3), 8 epochs of 10 steps each, train loss on every step and eval loss at the
end of each epoch. They behave the way real tuning curves do, so sweep policies (pruners,
concurrency, budgets) have something plausible to act on:

* multiplier 0.3 falls slowly and is still falling at epoch 8 (not converged);
* multiplier 1 falls and plateaus after a few epochs;
* multiplier 3 falls fast, then its eval loss rises (overfitting), noisier with batch size 2.

Later sessions will replace this file with curves recorded from real local sweeps
(``gemini-sweep export-curves``). Usage::

    python scripts/make_demo_replay_curves.py [--out configs/data/replay_demo_curves.json]
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

from gemini_backend.replay.backend import ReplayPoint
from gemini_backend.replay.backend import ReplayRecord
from gemini_backend.replay.backend import write_curves_file

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "configs" / "data" / "replay_demo_curves.json"
EPOCHS = 8
STEPS_PER_EPOCH = 10
BATCH_SIZES = (2, 4, 8)
MULTIPLIERS = (0.3, 1.0, 3.0)
EXAMPLES = 100
TOKENS_PER_EXAMPLE = 30
INITIAL_LOSS = 2.4
FLOOR_LOSS = 0.35


def make_record(batch_size: int, multiplier: float, *, seed: int) -> ReplayRecord:
    """One synthetic trial: exponential fall towards a floor, noise, and overfitting."""
    rng = random.Random(seed)
    # Per-epoch decay rate: faster with a larger multiplier, a little slower with big batches.
    rate_per_epoch = 0.45 * multiplier / math.sqrt(batch_size / 4)
    noise = 0.03 * math.sqrt(4 / batch_size) * (1 + multiplier / 3)
    overfit_per_epoch = 0.06 * max(0.0, math.log(multiplier)) + 0.005
    points = []
    for index in range(EPOCHS * STEPS_PER_EPOCH):
        epoch_f = (index + 1) / STEPS_PER_EPOCH
        epoch = index // STEPS_PER_EPOCH + 1
        mean = FLOOR_LOSS + (INITIAL_LOSS - FLOOR_LOSS) * math.exp(-rate_per_epoch * epoch_f)
        # Train loss keeps creeping down below the floor when the model memorises.
        mean -= 0.5 * overfit_per_epoch * epoch_f
        loss = max(0.01, mean * (1 + rng.gauss(0.0, noise)))
        eval_loss = None
        if (index + 1) % STEPS_PER_EPOCH == 0:
            eval_loss = mean + 0.08 + overfit_per_epoch * max(0.0, epoch_f - 2) ** 1.5
            eval_loss = round(eval_loss * (1 + rng.gauss(0.0, noise / 3)), 4)
        points.append(ReplayPoint(step=index + 1, epoch=epoch, loss=round(loss, 4),
                                  eval_loss=eval_loss))
    return ReplayRecord(
        params={
            "epochs": EPOCHS,
            "batch_size": batch_size,
            "learning_rate_multiplier": multiplier,
        },
        curve=tuple(points),
        # Smaller batches take more steps over the same examples, so they take longer.
        duration_s=round(2.0 + 4.0 * (2 / batch_size) ** 0.8, 2),
        tokens_per_epoch=EXAMPLES * TOKENS_PER_EXAMPLE,
    )


def make_records(*, seed: int = 0) -> list[ReplayRecord]:
    """The whole 3 x 3 grid, deterministic for a given seed."""
    return [
        make_record(batch_size, multiplier, seed=seed * 1000 + i)
        for i, (batch_size, multiplier) in enumerate(
            (b, m) for b in BATCH_SIZES for m in MULTIPLIERS
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = make_records(seed=args.seed)
    path = write_curves_file(records, args.out)
    print(f"wrote {len(records)} recorded trials to {path}")


if __name__ == "__main__":
    main()
