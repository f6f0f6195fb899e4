"""The figures the tracker stores as artifacts: one loss curve per trial, plots per sweep.

Drawing is :mod:`sweeps.tracking.plots`' job; this only picks what to draw for a run and keeps
a failing plot from failing the record (a plot is a degraded feature, never the outcome).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from matplotlib.figure import Figure

from sweeps.plateau.analysis import PlateauResult
from sweeps.tracking import plots
from sweeps.trial_record import TrialOutcome

logger = logging.getLogger(__name__)


def loss_curve_figure(outcome: TrialOutcome) -> Figure:
    """The trial's per-epoch loss curve with the plateau epoch marked."""
    plateau = None
    if outcome.plateau_epoch is not None and outcome.loss_at_plateau is not None:
        plateau = PlateauResult(epoch=outcome.plateau_epoch, loss=outcome.loss_at_plateau,
                                used_validation=bool(outcome.eval_epoch_loss))
    return plots.plot_loss_curve(
        list(outcome.train_epoch_loss),
        list(outcome.eval_epoch_loss) if outcome.eval_epoch_loss else None,
        plateau,
        title=f"trial {outcome.number} ({outcome.state.name.lower()})",
        step_losses=list(outcome.snapshots),
    )


def write_loss_curve_png(outcome: TrialOutcome, path: Path) -> Path:
    """Draw the trial's loss curve and write it as a PNG."""
    return plots.save_png(loss_curve_figure(outcome), path)


def sweep_figures(study: optuna.Study, curves: dict[int, plots.Curve]) -> dict[str, Figure]:
    """Optimization history, parallel coordinates, importances and all curves overlaid.

    A plot that cannot be drawn (too few trials, one parameter) is skipped with a warning.
    """
    makers: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: plots.plot_sweep(study, "optimization_history"),
        "parallel_coordinate": lambda: plots.plot_sweep(study, "parallel_coordinate"),
        "param_importances": lambda: plots.plot_sweep(study, "param_importances"),
        "loss_curves": lambda: plots.plot_curves_overlay(
            {f"trial {number}": curve for number, curve in sorted(curves.items())}),
    }
    searched = {name for trial in study.get_trials(deepcopy=False) for name in trial.params}
    if len(searched) < 2:
        del makers["param_importances"]  # one searched knob is always 100% important
    figures: dict[str, Figure] = {}
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on plots
                figure = make()
        except Exception as exc:  # a plot is optional: never lose the sweep for it
            logger.warning("sweep plot %s skipped: %s", name, exc)
            continue
        if figure is not None:
            figures[name] = figure
    return figures


def save_figure(figure: Figure, path: Path) -> None:
    """Write ``figure`` as a PNG and release it."""
    plots.save_png(figure, path)
