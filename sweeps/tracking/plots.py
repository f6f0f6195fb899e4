"""Loss-curve and sweep plots as matplotlib figures (PNG for MLflow, exports and notebooks).

Our own figures are built with the object API on an Agg canvas, so importing or calling this
module never switches the user's backend and never opens a window. Sweep plots come from
``optuna.visualization.matplotlib``; they are detached from pyplot at once so that repeated
calls do not pile up figures. A plot that has too little data says why in the figure instead
of raising: a sweep with one finished trial must still export.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import optuna
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from optuna.trial import TrialState

from gemini_backend import LossSnapshot
from sweeps.plateau.analysis import PlateauResult

logger = logging.getLogger(__name__)

SweepPlotKind = Literal["optimization_history", "parallel_coordinate", "param_importances"]
SWEEP_PLOT_KINDS: tuple[str, ...] = (
    "optimization_history", "parallel_coordinate", "param_importances",
)
PNG_DPI = 110
CURVE_FIGSIZE_IN = (8.0, 4.5)
# Beyond this many trials the overlay legend would cover the curves.
MAX_LEGEND_ENTRIES = 12

Curve = tuple[Sequence[float], Sequence[float] | None, int | None]


def plot_loss_curve(
    train_per_epoch: Sequence[float],
    eval_per_epoch: Sequence[float] | None,
    plateau: PlateauResult | None,
    *,
    title: str,
    step_losses: Sequence[LossSnapshot] | Sequence[float] | None = None,
) -> Figure:
    """One trial's curve: step losses (thin), epoch means and eval loss (markers), the
    smoothed curve the plateau rule ran on, and the plateau epoch with its loss."""
    fig, ax = _new_figure()
    if step_losses:
        xs, ys = _step_positions(step_losses, epochs=len(train_per_epoch))
        ax.plot(xs, ys, lw=0.7, alpha=0.45, color="tab:blue", label="training loss (step)")
    epochs = list(range(1, len(train_per_epoch) + 1))
    ax.plot(epochs, train_per_epoch, "o-", color="tab:blue", label="training loss (epoch mean)")
    if eval_per_epoch is not None:
        ax.plot(epochs, eval_per_epoch, "s-", color="tab:orange", label="validation loss")
    if plateau is not None:
        _mark_plateau(ax, plateau, n_epochs=len(train_per_epoch))
    ax.set_title(_title_with_flags(title, plateau))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize="small")
    return fig


def plot_curves_overlay(curves: Mapping[str, Curve], *, title: str = "Loss curves") -> Figure:
    """Every trial's per-epoch curve on one axes (validation dashed), plateau epochs starred.

    ``curves`` maps a label (e.g. "trial 3") to (train, eval or None, plateau epoch or None).
    """
    if not curves:
        return message_figure(title, "No trial has reported a loss curve yet.")
    fig, ax = _new_figure()
    colors = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for i, (label, (train, evaluation, plateau_epoch)) in enumerate(curves.items()):
        color = colors(i % colors.N)
        epochs = list(range(1, len(train) + 1))
        # Small markers keep an epoch visible when NaN neighbours break its line.
        ax.plot(epochs, train, ".-", color=color, lw=1.2, ms=5, label=label)
        if evaluation is not None:
            ax.plot(epochs, evaluation, ".--", color=color, lw=1.2, ms=5)
        marked = evaluation if evaluation is not None else train
        if plateau_epoch is not None and 1 <= plateau_epoch <= len(marked):
            ax.plot([plateau_epoch], [marked[plateau_epoch - 1]], "*", color=color, ms=13,
                    markeredgecolor="black", zorder=5)
    ax.set_title(f"{title} (solid: training, dashed: validation, star: plateau epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    if len(curves) <= MAX_LEGEND_ENTRIES:
        ax.legend(loc="upper right", fontsize="small")
    return fig


def plot_sweep(
    study: optuna.Study, kind: SweepPlotKind, *, target_name: str = "Objective Value"
) -> Figure:
    """An Optuna sweep plot, or a figure saying why it cannot be drawn yet.

    ``target_name`` labels the objective axis, e.g. the config's objective "plateau_loss".
    """
    if kind not in SWEEP_PLOT_KINDS:
        choices = ", ".join(SWEEP_PLOT_KINDS)
        raise ValueError(f"unknown sweep plot {kind!r}; choose one of {choices}")
    title = kind.replace("_", " ")
    why_not = _why_not_plottable(study, kind)
    if why_not:
        return message_figure(title, why_not)
    draw = getattr(optuna.visualization.matplotlib, f"plot_{kind}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = draw(study, target_name=target_name)
    except (ValueError, RuntimeError) as exc:  # Optuna rejects a study shape we did not foresee
        logger.warning("sweep plot %s failed: %s", kind, exc)
        return message_figure(title, f"Optuna could not draw this plot: {exc}")
    fig = _figure_of(axes)
    plt.close(fig)  # detach from pyplot's registry; the figure itself stays usable
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not compatible with tight_layout"
        fig.tight_layout()  # Optuna leaves long parameter names cut off at the edges
    return fig


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (parent folders created) and close it; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(target, format="png", dpi=PNG_DPI)
    finally:
        plt.close(fig)
    return target


def message_figure(title: str, message: str) -> Figure:
    """A figure that only states why the real plot is missing."""
    fig, ax = _new_figure()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize="large",
            transform=ax.transAxes)
    return fig


def _new_figure() -> tuple[Figure, Axes]:
    # Fixed margins, not layout="constrained": that engine draws every figure twice, and the
    # sweep writes one curve PNG per trial (about 4% of a fast sweep's wall time).
    fig = Figure(figsize=CURVE_FIGSIZE_IN)
    fig.subplots_adjust(left=0.09, right=0.97, bottom=0.11, top=0.9)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _figure_of(axes: object) -> Figure:
    """Optuna returns one Axes, or an array of them for some layouts."""
    first = axes if isinstance(axes, Axes) else next(iter(axes))  # type: ignore[call-overload]
    fig = first.get_figure(root=True)
    if not isinstance(fig, Figure):
        raise ValueError("the plot has no figure")
    return fig


def _step_positions(
    step_losses: Sequence[LossSnapshot] | Sequence[float], *, epochs: int
) -> tuple[list[float], list[float]]:
    """x positions in epochs: a step's loss sits inside its epoch, the epoch mean at its end.

    Plain floats (e.g. a metric history read back from MLflow) are spread evenly.
    """
    snapshots = [s for s in step_losses if isinstance(s, LossSnapshot)]
    if not snapshots:
        values = [float(v) for v in step_losses if not isinstance(v, LossSnapshot)]
        per_step = max(epochs, 1) / len(values)
        return [(i + 1) * per_step for i in range(len(values))], values
    by_step = {s.step: s for s in snapshots}  # a re-polled step counts once
    ordered = [by_step[step] for step in sorted(by_step)]
    steps_in_epoch = Counter(s.epoch for s in ordered)
    seen: Counter[int] = Counter()
    xs = []
    for s in ordered:
        seen[s.epoch] += 1
        xs.append(s.epoch - 1 + seen[s.epoch] / steps_in_epoch[s.epoch])
    return xs, [s.loss for s in ordered]


def _mark_plateau(ax: Axes, plateau: PlateauResult, *, n_epochs: int) -> None:
    """The smoothed curve, a vertical line at the plateau epoch and its loss written next to it."""
    if plateau.smoothed:
        label = "smoothed " + ("validation" if plateau.used_validation else "training")
        ax.plot(range(1, len(plateau.smoothed) + 1), plateau.smoothed, ":", color="black",
                lw=1.0, label=label)
    ax.axvline(plateau.epoch, color="tab:red", ls="--", lw=1.4, label="plateau epoch")
    if math.isfinite(plateau.loss):
        ax.plot([plateau.epoch], [plateau.loss], "D", color="tab:red", ms=8, zorder=5)
        ax.annotate(
            f"plateau: epoch {plateau.epoch}\nloss {plateau.loss:.4g}",
            xy=(plateau.epoch, plateau.loss), xytext=(12, 28), textcoords="offset points",
            ha="left" if plateau.epoch < max(n_epochs, 2) * 0.7 else "right",
            arrowprops={"arrowstyle": "->", "color": "tab:red"}, color="tab:red",
            bbox={"boxstyle": "round", "fc": "white", "ec": "tab:red", "alpha": 0.9},
        )


def _title_with_flags(title: str, plateau: PlateauResult | None) -> str:
    if plateau is None:
        return title
    flags = [name for name, is_set in (
        ("spike", plateau.spike), ("overfitting", plateau.overfitting),
        ("not converged", plateau.not_converged), ("flat", plateau.flat),
    ) if is_set]
    return f"{title} [{', '.join(flags)}]" if flags else title


def _why_not_plottable(study: optuna.Study, kind: str) -> str | None:
    """None if ``kind`` can be drawn; else a sentence for the user."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return "No completed trial yet: run the sweep longer."
    if kind == "optimization_history":
        return None
    if len(complete) < 2:
        return f"Needs at least 2 completed trials; this sweep has {len(complete)}."
    values: dict[str, set[str]] = {}
    for trial in complete:
        for name, value in trial.params.items():
            values.setdefault(name, set()).add(repr(value))
    if kind == "parallel_coordinate" and not values:
        return "The trials have no hyperparameters to draw."
    if kind == "param_importances" and not any(len(v) > 1 for v in values.values()):
        return "Needs at least one hyperparameter that varies across completed trials."
    return None
