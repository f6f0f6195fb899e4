"""`gemini-sweep status`: a sweep's trials, its best trial and the budget spent.

Reads only the Optuna study (no backend call, no MLflow), so it is cheap to run while a
sweep is in progress, from any machine that reaches the storage.

The default table fits an 80-column terminal and a pipe (whose width rich takes as 80):
short state names explained under the table, no job ids and no empty cost column. `--wide`
shows every column at its full width, also in a pipe; `--json` is for scripts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from sweeps.cli._common import EXIT_BAD_INPUT
from sweeps.cli._common import app
from sweeps.cli._common import console
from sweeps.cli._common import err_console
from sweeps.cli._common import user_errors

if TYPE_CHECKING:
    from sweeps.results.sweep_results import SweepResults
    from sweeps.results.sweep_results import TrialRecord

_HEADERS = {"learning_rate_multiplier": "lr mult", "batch_size": "batch",
            "adapter_size": "adapter"}
_STATE_STYLES = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan"}
_STOPPED = "STOPPED"
_UNLIMITED = 100_000  # columns: to measure a table's natural width


@app.command("status", help="Show a sweep's trials, the best one and the budget spent.")
def status_command(
    config_path: Annotated[Path | None, typer.Argument(
        metavar="[CONFIG]", help="the sweep config (or give --study and --storage)")] = None,
    study: Annotated[str | None, typer.Option(
        "--study", help="the sweep (study) name, with --storage")] = None,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="the Optuna storage URL, e.g. sqlite:///.gemini_sweep/optuna.db")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON for scripts")] = False,
    wide: Annotated[bool, typer.Option(
        "--wide", "-w", help="every column (job ids, cost, warm-start sources) at full "
                             "width, also in a pipe")] = False,
) -> None:
    with user_errors():
        results = _results(config_path, study=study, storage=storage)
    if as_json:
        typer.echo(json.dumps(results.to_dict(), indent=2, ensure_ascii=False))
        return
    _say(f"sweep {results.study_name} ({results.storage})")
    table = trials_table(results, wide=wide)
    if wide:  # as wide as the columns need, whatever the terminal or pipe says
        needed = Console(width=_UNLIMITED).measure(table).maximum
        Console(width=max(console.width, needed), no_color=console.no_color).print(table)
    else:
        console.print(table)
        _print_legend(results)
    _print_best(results)
    if results.cheapest is not None:
        _say(results.cheapest.describe())
    _print_pareto_front(results)
    _print_budget(results)


def _results(config_path: Path | None, *, study: str | None,
             storage: str | None) -> SweepResults:
    # Optuna and the results module load here, not at start-up: `--help` does without.
    from sweeps.config.schema import load_config
    from sweeps.results.sweep_results import collect_results
    from sweeps.results.sweep_results import config_results
    from sweeps.results.sweep_results import load_study

    if config_path is not None:
        config = load_config(config_path, storage=storage)
        if study is not None and study != config.name:
            config = config.model_copy(update={"name": study})
        return config_results(config)
    if study is None or storage is None:
        err_console.print("error: give a sweep CONFIG, or both --study NAME and --storage URL",
                          markup=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    return collect_results(load_study(study_name=study, storage=storage), storage=storage)


def trials_table(results: SweepResults, *, wide: bool = False) -> Table:
    """One row per trial: knobs, plateau epoch, objective, tokens; with ``wide`` also the
    job id and cost, and states in full (``COMPLETE (stopped at 5)``)."""
    knob_names = _knob_names(results.trials)
    show_cost = wide or any(trial.cost is not None for trial in results.trials)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    fixed: dict[str, Any] = {"justify": "right", "no_wrap": True}
    table.add_column("#", **fixed)
    table.add_column("state", no_wrap=True)
    for name in knob_names:
        table.add_column(_HEADERS.get(name, name), **fixed)
    if wide:
        table.add_column("job", no_wrap=True)
    table.add_column("plateau", **fixed)
    table.add_column("objective", **fixed)
    eval_keys = _eval_keys(results.trials)
    for key in eval_keys:
        table.add_column(key.removeprefix("eval_").replace("_", " "), **fixed)
    table.add_column("tokens", **fixed)
    if show_cost:
        table.add_column("cost", **fixed)
    best_number = results.best.number if results.best else None
    for trial in results.trials:
        mark = "*" if trial.number == best_number else ""
        table.add_row(
            f"{mark}{trial.number}", _state_text(trial, wide=wide),
            *[_fmt(trial.knobs.get(name)) for name in knob_names],
            *([trial.job_id or "-"] if wide else []), _fmt(trial.plateau_epoch),
            _fmt(trial.value), *[_fmt(trial.eval_scores.get(key)) for key in eval_keys],
            _tokens(trial), *([_fmt(trial.cost)] if show_cost else []),
        )
    return table


def _state_text(trial: TrialRecord, *, wide: bool) -> str:
    # A warm-start copy was run by an earlier sweep: say so, and never star it as best.
    if trial.is_warm_start:
        return f"WARM ({trial.warm_start_from})" if wide else "WARM"
    state = trial.state
    if trial.stopped_after_epoch is not None:  # from_curve patience: done, past its plateau
        state = (f"{state} (stopped at {trial.stopped_after_epoch})" if wide
                 else f"{_STOPPED}@{trial.stopped_after_epoch}")
    style = _STATE_STYLES.get(trial.state)
    return f"[{style}]{state}[/]" if style else state


def _print_legend(results: SweepResults) -> None:
    """What the default view abbreviates, said once under the table."""
    notes = []
    if results.best is not None:
        notes.append("* best")
    if any(t.stopped_after_epoch is not None for t in results.trials if not t.is_warm_start):
        notes.append(f"{_STOPPED}@k: complete, its job stopped after epoch k, past its "
                     "plateau")
    if any(t.is_warm_start for t in results.trials):
        notes.append("WARM: run by an earlier sweep")
    notes.append("--wide: job ids and every column")
    _say("; ".join(notes), style="dim")


def _say(text: str, *, style: str | None = None) -> None:
    console.print(text, markup=False, highlight=False, style=style)


def _print_best(results: SweepResults) -> None:
    from sweeps.results.sweep_results import recommended_knobs

    best = results.best
    if best is None:
        console.print("best: no trial has completed yet", markup=False)
        return
    knobs = ", ".join(f"{k}={_fmt(v)}" for k, v in recommended_knobs(best).items())
    flags = [name for name, is_set in best.flags.items() if is_set]
    console.print(f"best: trial {best.number} objective {_fmt(best.value)} (tune with: {knobs}; "
                  f"the trial ran {_fmt(best.knobs.get('epochs'))} epochs); "
                  f"plateau at epoch {_fmt(best.plateau_epoch)}"
                  + (f" [{', '.join(flags)}]" if flags else "") + _scores(best),
                  markup=False, highlight=False)


def _print_pareto_front(results: SweepResults) -> None:
    """Multi-objective ([quality, cost]) sweeps: the trials no other beats on both."""
    if not results.pareto_front:
        return
    console.print("Pareto front (quality vs cost, cheapest first):", markup=False)
    for trial in results.pareto_front:
        values = ", ".join(_fmt(v) for v in trial.values)
        console.print(f"  trial {trial.number}: objectives [{values}]{_scores(trial)}",
                      markup=False, highlight=False)


def _scores(trial: TrialRecord) -> str:
    scores = ", ".join(f"{k} {_fmt(v)}" for k, v in trial.eval_scores.items())
    return f"; {scores}" if scores else ""


def _eval_keys(trials: tuple[TrialRecord, ...]) -> list[str]:
    keys: list[str] = []
    for trial in trials:
        keys += [key for key in trial.eval_scores if key not in keys]
    return keys


def _print_budget(results: SweepResults) -> None:
    text = (f"budget: {results.spent_tokens:,.0f} training tokens spent, "
            f"{results.committed_tokens:,.0f} committed to jobs in flight")
    if results.token_limit is not None:
        text += f", limit {results.token_limit:,.0f}"
    if results.spent_cost is not None:
        text += f"; cost {results.spent_cost:,.4g}"
    console.print(text, markup=False, highlight=False)


def _knob_names(trials: tuple[TrialRecord, ...]) -> list[str]:
    names: list[str] = []
    for trial in trials:
        names += [name for name in trial.knobs if name not in names]
    return names


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _tokens(trial: TrialRecord) -> str:
    if trial.training_tokens is not None:
        return f"{trial.training_tokens:,}"
    if trial.estimated_tokens is not None:
        return f"~{trial.estimated_tokens:,}"
    return "-"

