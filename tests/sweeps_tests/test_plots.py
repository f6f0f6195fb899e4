"""Plots: each writes a PNG that reads back with the expected size, and thin data gives a figure
that says why instead of an exception (a sweep with one trial must still export)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from matplotlib.figure import Figure
from PIL import Image

from gemini_backend import LossSnapshot
from sweeps.plateau.analysis import PlateauResult
from sweeps.plateau.analysis import find_plateau
from sweeps.tracking.plots import PNG_DPI
from sweeps.tracking.plots import plot_curves_overlay
from sweeps.tracking.plots import plot_loss_curve
from sweeps.tracking.plots import plot_sweep
from sweeps.tracking.plots import save_png

SEED_CURVE = [1.9, 2.6, 0.9, 0.35, 0.33, 0.32, 0.32]
SWEEP_KINDS = ("optimization_history", "parallel_coordinate", "param_importances")


def _texts(fig: Figure) -> str:
    """Every piece of text drawn in the figure (titles, annotations, messages)."""
    parts = [t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text"))]
    return "\n".join(p for p in parts if isinstance(p, str))


def _read_png(path: Path, fig_size_in: tuple[float, float]) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 1000
    image = Image.open(path)
    image.load()
    expected = (round(fig_size_in[0] * PNG_DPI), round(fig_size_in[1] * PNG_DPI))
    assert image.format == "PNG"
    assert image.size == expected
    return image


def _study(n_trials: int, *, params: tuple[str, ...] = ("epochs", "learning_rate_multiplier")):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=optuna.storages.InMemoryStorage(),
                                sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(n_trials):
        trial = study.ask()
        value = 1.0
        if "epochs" in params:
            value += abs(trial.suggest_int("epochs", 1, 10) - 4) * 0.1
        if "learning_rate_multiplier" in params:
            value += trial.suggest_float("learning_rate_multiplier", 0.1, 10.0, log=True)
        if "batch_size" in params:
            trial.suggest_categorical("batch_size", [4])
        study.tell(trial, value)
    return study


def test_loss_curve_png_marks_the_plateau_with_its_loss(tmp_path: Path) -> None:
    # Three steps per epoch around each epoch mean.
    steps = [LossSnapshot(step=i + 1, epoch=i // 3 + 1, loss=v * f)
             for i, (v, f) in enumerate((v, f) for v in SEED_CURVE for f in (1.1, 1.0, 0.9))]
    evaluation = [v + 0.05 for v in SEED_CURVE]
    plateau = find_plateau(SEED_CURVE, evaluation)
    fig = plot_loss_curve(SEED_CURVE, evaluation, plateau, title="trial 3", step_losses=steps)

    ax = fig.axes[0]
    plateau_lines = [line for line in ax.get_lines() if line.get_label() == "plateau epoch"]
    assert plateau_lines and list(plateau_lines[0].get_xdata()) == [4, 4]
    text = _texts(fig)
    assert f"plateau: epoch 4\nloss {plateau.loss:.4g}" in text
    assert "trial 3 [spike]" in text
    size = tuple(fig.get_size_inches())
    _read_png(save_png(fig, tmp_path / "sub" / "curve.png"), size)


def test_loss_curve_title_lists_every_flag_and_accepts_plain_step_losses(tmp_path: Path) -> None:
    plateau = find_plateau([2.0, 1.6, 1.3, 1.05, 0.85, 0.7])
    step_losses = [2.1, 1.9, 1.7, 1.5, 1.3, 1.2, 1.0, 0.9, 0.8, 0.75, 0.7, 0.65]
    fig = plot_loss_curve([2.0, 1.6, 1.3, 1.05, 0.85, 0.7], None, plateau, title="t",
                          step_losses=step_losses)
    assert "t [not converged]" in _texts(fig)
    _read_png(save_png(fig, tmp_path / "c.png"), tuple(fig.get_size_inches()))


def test_overlay_png_stars_each_plateau(tmp_path: Path) -> None:
    curves = {
        "trial 0": (SEED_CURVE, None, 4),
        "trial 1": ([2.0, 1.2, 0.8, 0.6, 0.5], [2.1, 1.3, 0.9, 0.8, 0.85], 4),
        "trial 2": ([1.5, math.nan, 0.9], None, None),
    }
    fig = plot_curves_overlay(curves)

    stars = [line for line in fig.axes[0].get_lines() if line.get_marker() == "*"]
    assert sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in stars) == [
        (4, 0.35), (4, 0.8)]
    _read_png(save_png(fig, tmp_path / "overlay.png"), tuple(fig.get_size_inches()))


def test_overlay_of_no_curves_says_so() -> None:
    assert "No trial has reported a loss curve yet." in _texts(plot_curves_overlay({}))


@pytest.mark.parametrize("kind", SWEEP_KINDS)
def test_sweep_plots_from_a_real_study(kind: str, tmp_path: Path) -> None:
    fig = plot_sweep(_study(6), kind, target_name="plateau_loss")  # type: ignore[arg-type]

    assert fig.axes and fig.axes[0].has_data()
    assert "plateau_loss" in _texts(fig)
    _read_png(save_png(fig, tmp_path / f"{kind}.png"), tuple(fig.get_size_inches()))


@pytest.mark.parametrize(
    ("n_trials", "params", "kind", "why"),
    [
        (0, ("epochs",), "optimization_history", "No completed trial yet"),
        (1, ("epochs",), "parallel_coordinate", "at least 2 completed trials"),
        (1, ("epochs",), "param_importances", "at least 2 completed trials"),
        (3, ("batch_size",), "param_importances", "varies across completed trials"),
    ],
)
def test_degenerate_sweeps_give_a_figure_that_says_why(
    n_trials, params, kind, why, tmp_path
) -> None:
    fig = plot_sweep(_study(n_trials, params=params), kind)

    assert why in _texts(fig)
    _read_png(save_png(fig, tmp_path / "why.png"), tuple(fig.get_size_inches()))


def test_single_param_sweep_still_draws_importances() -> None:
    fig = plot_sweep(_study(4, params=("epochs",)), "param_importances")
    assert fig.axes[0].has_data()
    assert "epochs" in _texts(fig)


def test_unknown_sweep_plot_kind_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="choose one of optimization_history"):
        plot_sweep(_study(2), "contour")  # type: ignore[arg-type]


def test_loss_curve_from_a_stored_plateau_without_smoothed_curve(tmp_path: Path) -> None:
    # Tracking rebuilds a PlateauResult from the trial's stored epoch and loss only.
    fig = plot_loss_curve(SEED_CURVE, None, PlateauResult(epoch=4, loss=0.35), title="trial 1",
                          step_losses=[])

    assert "plateau: epoch 4\nloss 0.35" in _texts(fig)
    _read_png(save_png(fig, tmp_path / "stored.png"), tuple(fig.get_size_inches()))
