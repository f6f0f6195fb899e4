"""How much validation loss the plateau pick gives up, on recorded fine-tuning curves.

For every recorded run of the given curve sets (``configs/data/curves_*.json`` by default),
each rule picks an epoch from the run's per-epoch curves, as
``sweeps.plateau.analysis.find_plateau``
sees them; its regret is the run's loss at that epoch minus the run's best loss over its
epochs (raw validation loss; also the held-out ``test_loss`` where recorded). Rules:

* ``shipped``: ``find_plateau`` with the shipped ``PlateauConfig`` (earliest epoch whose
  smoothed validation loss is within ``validation_tolerance`` of the loss range above the
  smoothed minimum);
* ``tolerance T``: the same rule, flags and all, with ``validation_tolerance`` T (0: the
  smoothed minimum itself, the "near-minimum" rule);
* ``smoothed argmin``: the epoch of the smoothed curve's minimum, no flags (reference).

``--leave-one-out`` chooses the tolerance on the other sets (lowest mean regret on the
held-out test loss where recorded) and reports
each set on that choice only, so a default is never judged on the curves that picked it.

Pure functions on stored curves: seconds of CPU. Run:
``python benchmarks/plateau_regret.py [--curves FILE...] [--leave-one-out]``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path

from gemini_backend import LossSnapshot
from gemini_backend.replay.backend import ReplayRecord
from gemini_backend.replay.backend import load_curves
from sweeps.config.schema import PlateauConfig
from sweeps.plateau.analysis import epoch_means
from sweeps.plateau.analysis import find_plateau

DATA_DIR = Path(__file__).resolve().parent.parent / "configs" / "data"
TOLERANCES = (0.0, 0.005, 0.01, 0.03)
Rule = Callable[[list[float], list[float] | None], int]


def plateau_rule(tolerance: float | None = None) -> Rule:
    """``find_plateau`` with the shipped options, ``validation_tolerance`` replaced when
    given (the curves are validation-guided)."""
    options = PlateauConfig().model_dump()
    if tolerance is not None:
        options["validation_tolerance"] = tolerance

    def pick(train: list[float], evals: list[float] | None) -> int:
        return find_plateau(train, evals, **options).epoch

    return pick


def smoothed_argmin(train: list[float], evals: list[float] | None) -> int:
    smoothed = find_plateau(train, evals, **PlateauConfig().model_dump()).smoothed
    return min(range(len(smoothed)), key=smoothed.__getitem__) + 1


def rules() -> dict[str, Rule]:
    named: dict[str, Rule] = {"shipped": plateau_rule()}
    named.update({f"tolerance {t:g}": plateau_rule(t) for t in TOLERANCES})
    named["smoothed argmin"] = smoothed_argmin
    return named


def curves_of(record: ReplayRecord) -> tuple[list[float], list[float] | None]:
    """The per-epoch training and validation losses, as the runner scores a job."""
    return epoch_means([LossSnapshot(step=p.step, epoch=p.epoch, loss=p.loss,
                                     eval_loss=p.eval_loss) for p in record.curve])


def regret(record: ReplayRecord, epoch: int, field: str) -> float | None:
    """The run's ``field`` loss at ``epoch`` minus its best epoch's (None: not recorded)."""
    by_epoch = {p.epoch: getattr(p, field) for p in record.curve
                if p.eval_loss is not None and getattr(p, field) is not None}
    if epoch not in by_epoch:
        return None
    return by_epoch[epoch] - min(by_epoch.values())


def mean_regret(records: Sequence[ReplayRecord], rule: Rule, field: str) -> float | None:
    values = [regret(r, rule(*curves_of(r)), field) for r in records]
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def choose_tolerance(sets: Mapping[str, Sequence[ReplayRecord]], held_out: str) -> float:
    """The ``validation_tolerance`` with the lowest mean regret over every set but
    ``held_out``: on the held-out test loss where every such set records one (validation
    regret favours the smallest tolerance by construction: it is measured on the curve
    the rule reads), else on the validation loss."""
    others = [r for name, records in sets.items() if name != held_out for r in records]
    field = "test_loss" if all(_has_test(r) for r in others) else "eval_loss"
    return min(TOLERANCES, key=lambda t: mean_regret(others, plateau_rule(t), field) or 0.0)


def _has_test(record: ReplayRecord) -> bool:
    return any(p.test_loss is not None for p in record.curve)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--curves", nargs="+", type=Path,
                        default=sorted(DATA_DIR.glob("curves_*.json")))
    parser.add_argument("--leave-one-out", action="store_true")
    args = parser.parse_args()
    sets = {path.stem.removeprefix("curves_"): load_curves(path) for path in args.curves}
    print("mean regret per run (loss at the picked epoch minus the run's best): "
          "validation / test (test: where recorded); a later epoch costs tokens in "
          "from_curve sweeps")
    for name, records in sets.items():
        print(f"\n{name} ({len(records)} runs)")
        for label, rule in rules().items():
            val = mean_regret(records, rule, "eval_loss")
            test = mean_regret(records, rule, "test_loss")
            epochs = statistics.fmean(rule(*curves_of(r)) for r in records)
            print(f"  {label:>16}: {_fmt(val)} / {_fmt(test)}; mean epoch picked {epochs:.1f}")
    if args.leave_one_out and len(sets) > 1:
        print("\nleave-one-set-out: tolerance chosen on the other sets, regret on this one")
        for name, records in sets.items():
            tolerance = choose_tolerance(sets, name)
            rule = plateau_rule(tolerance)
            print(f"  {name}: tolerance {tolerance:g}: "
                  f"{_fmt(mean_regret(records, rule, 'eval_loss'))} / "
                  f"{_fmt(mean_regret(records, rule, 'test_loss'))}"
                  f" (shipped: {_fmt(mean_regret(records, plateau_rule(), 'eval_loss'))})")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    main()
