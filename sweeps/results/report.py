"""A one-page report of a sweep: PNG plots and a Markdown summary that embeds them.

The plots are :mod:`sweeps.tracking.plots`' (optimization history, parallel coordinates, parameter
importances, every loss curve with its plateau epoch, the best trial's curve); the numbers
come from the study (:mod:`sweeps.results.sweep_results`) and the curves from the MLflow runs the
tracker wrote. Markdown renders on GitHub and in any editor, and the README embeds it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import optuna
from matplotlib.figure import Figure

from sweeps.config.schema import SweepConfig
from sweeps.errors import TrackingError
from sweeps.plateau.analysis import PlateauResult
from sweeps.results.export import Recommendation
from sweeps.results.export import recommend
from sweeps.results.sweep_results import SweepResults
from sweeps.results.sweep_results import TrialRecord
from sweeps.results.sweep_results import collect_results
from sweeps.results.sweep_results import load_config_study
from sweeps.tracking import plots
from sweeps.tracking.read import TrialCurve
from sweeps.tracking.read import trial_curves

logger = logging.getLogger(__name__)

SUMMARY_NAME = "summary.md"
_SWEEP_PLOTS = {
    "optimization_history": "Optimization history",
    "parallel_coordinate": "Parallel coordinates",
    "param_importances": "Hyperparameter importances",
}


@dataclass(frozen=True, slots=True)
class ReportFiles:
    """What :func:`write_report` wrote: the summary and each image by name."""

    summary: Path
    images: dict[str, Path]


def write_report(config: SweepConfig, out_dir: str | Path) -> ReportFiles:
    """Write the report of the sweep ``config`` describes into ``out_dir``.

    Raises:
        SweepError: the sweep has not been run (no study in its storage).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    study = load_config_study(config)
    results = collect_results(study, storage=config.storage_url, budget=config.budget)
    curves = _curves(config, results)
    images = {name: plots.save_png(figure, out / f"{name}.png")
              for name, figure in _figures(study, results, curves).items()}
    summary = out / SUMMARY_NAME
    summary.write_text(summary_markdown(config, results, images), encoding="utf-8")
    logger.info("report of sweep %s written to %s", config.name, out)
    return ReportFiles(summary=summary, images=images)


def _curves(config: SweepConfig, results: SweepResults) -> dict[int, TrialCurve]:
    """The logged curves; an unreadable MLflow store leaves the curve plots empty."""
    try:
        return trial_curves(config.tracking_url, config.name, sweep_id=results.sweep_id)
    except TrackingError as exc:
        logger.warning("loss curves left out of the report: %s", exc)
        return {}


def _figures(study: optuna.Study, results: SweepResults,
             curves: dict[int, TrialCurve]) -> dict[str, Figure]:
    figures = {name: plots.plot_sweep(study, name)  # type: ignore[arg-type]
               for name in _SWEEP_PLOTS}
    by_number = {trial.number: trial for trial in results.trials}
    overlay = {f"trial {n}": (c.train, c.evaluation, _plateau_epoch(by_number.get(n)))
               for n, c in curves.items() if c.train}
    figures["loss_curves"] = plots.plot_curves_overlay(overlay)
    best = results.best
    if best is not None and best.number in curves and curves[best.number].train:
        curve = curves[best.number]
        figures["best_trial_curve"] = plots.plot_loss_curve(
            curve.train, curve.evaluation, _plateau_of(best, curve),
            title=f"best trial {best.number}")
    return figures


def _plateau_epoch(trial: TrialRecord | None) -> int | None:
    return trial.plateau_epoch if trial is not None else None


def _plateau_of(trial: TrialRecord, curve: TrialCurve) -> PlateauResult | None:
    if trial.plateau_epoch is None:
        return None
    loss = trial.loss_at_plateau if trial.loss_at_plateau is not None else math.nan
    flags = trial.flags
    return PlateauResult(epoch=trial.plateau_epoch, loss=loss,
                         not_converged=flags.get("not_converged", False),
                         overfitting=flags.get("overfitting", False),
                         spike=flags.get("spike", False), flat=flags.get("flat", False),
                         used_validation=curve.evaluation is not None,
                         recommended_epochs=trial.recommended_epochs)


def summary_markdown(config: SweepConfig, results: SweepResults,
                     images: dict[str, Path]) -> str:
    """The one-page summary: best trial and recommendation, plots, table of trials."""
    counts = ", ".join(f"{n} {state.lower()}" for state, n in results.counts().items())
    lines = [f"# Sweep `{results.study_name}`", "",
             f"Backend `{config.backend.kind}`, objective `{config.objective}` (lower is "
             f"better); {len(results.trials)} trials: {counts or 'none'}. "
             f"{results.spent_tokens:,.0f} training tokens spent"
             + (f", {results.committed_tokens:,.0f} committed to jobs in flight."
                if results.committed_tokens else "."), ""]
    lines += _best_section(results)
    titles = {**_SWEEP_PLOTS, "loss_curves": "Loss curves (star: plateau epoch)",
              "best_trial_curve": "Best trial's loss curve"}
    for name in ("best_trial_curve", "loss_curves", *_SWEEP_PLOTS):
        if name in images:
            lines += [f"## {titles[name]}", "", f"![{titles[name]}]({images[name].name})", ""]
    lines += ["## Trials", "", *_trial_table(results), ""]
    return "\n".join(lines)


def _best_section(results: SweepResults) -> list[str]:
    best = results.best
    if best is None:
        return ["**No trial has completed yet**: nothing to recommend.", ""]
    rec: Recommendation = recommend(best)
    knobs = ", ".join(f"`{k}` = {_fmt(v)}" for k, v in {**best.knobs,
                                                          "epochs": rec.epochs}.items())
    lines = ["## Recommendation", "",
             f"Best trial **{best.number}** ({_fmt(best.value)}): {knobs}.", ""]
    lines += [f"- {note}" for note in rec.notes]
    lines += ["", "Export it with `gemini-sweep export CONFIG --format gemini-api` "
              "(or `vertex`, `python`, `curl`, `yaml`).", ""]
    return lines


def _trial_table(results: SweepResults) -> list[str]:
    names: list[str] = []
    for trial in results.trials:
        names += [name for name in trial.knobs if name not in names]
    header = ["trial", "state", *names, "plateau epoch", "objective", "training tokens"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best_number = results.best.number if results.best else None
    for trial in results.trials:
        label = f"**{trial.number}**" if trial.number == best_number else str(trial.number)
        cells = [label, trial.state, *[_fmt(trial.knobs.get(n)) for n in names],
                 _fmt(trial.plateau_epoch), _fmt(trial.value), _fmt(trial.training_tokens)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


__all__ = ["ReportFiles", "summary_markdown", "write_report"]
