"""`gemini-sweep run`: run or resume a sweep, with a live view of its jobs.

On a terminal a rich Live panel shows trials finished / running / pruned / failed, the best
so far and each running job's state and epoch; elsewhere (CI, a log file) the runner's log
lines are the progress. Exit codes: 0 done, 1 stopped on failures, 2 bad config or input,
3 a service unreachable or failing, 130 interrupted (jobs in flight keep running; the same
command collects them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from sweeps.cli._common import EXIT_FAILED
from sweeps.cli._common import app
from sweeps.cli._common import console
from sweeps.cli._common import err_console
from sweeps.cli._common import setup_logging
from sweeps.cli._common import user_errors

if TYPE_CHECKING:
    from sweeps.config.schema import SweepConfig
    from sweeps.engine.runner import ProgressCallback
    from sweeps.engine.runner import SweepProgress
    from sweeps.engine.runner import SweepResult

_QUIET_LOGGERS = ("mlflow", "alembic", "optuna")


@app.command("run", help="Run a sweep: submit, poll and record trials until n_trials are done. "
                         "Safe to stop at any time: run it again to continue.")
def run_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="the sweep config (YAML)")],
    storage: Annotated[str | None, typer.Option(
        "--storage", help="Optuna storage URL (default: SQLite in .gemini_sweep/ next to "
                          "the config; PostgreSQL to share a sweep between machines)")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow tracking URI (default: SQLite in .gemini_sweep/)")] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="debug logging")] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="warnings only")] = False,
) -> None:
    setup_logging(verbose, quiet)
    with user_errors():
        # MLflow and Optuna set their own log levels when imported: import, then quieten.
        import sweeps.engine.runner  # noqa: F401
        _quiet_libraries(verbose)
        from sweeps.config.schema import load_config

        config = load_config(config_path, storage=storage, tracking_uri=tracking_uri)
        with _progress_view(is_live=err_console.is_terminal and not quiet) as view:

            def show_summary(result: SweepResult) -> None:
                view.stop()
                _print_summary(config_path, config, result)

            # The summary is printed as soon as the last trial is told; the sweep plots are
            # drawn and the parent run finished after it.
            result = run_sweep(config, progress=view.progress, on_stopped=show_summary)
    if result.is_failed:
        raise typer.Exit(EXIT_FAILED)


def run_sweep(config: SweepConfig, *, progress: ProgressCallback | None,
              on_stopped: Callable[[SweepResult], None]) -> SweepResult:
    """The runner, imported here: it pulls in Optuna and the backends (and, on its tracking
    thread, MLflow), which the other commands (and ``--help``) do without."""
    from sweeps.engine.runner import run_sweep as run

    return run(config, progress=progress, on_stopped=on_stopped)


def _quiet_libraries(verbose: bool) -> None:
    """Their INFO lines (table creation, new study) are noise here."""
    import optuna

    level = logging.DEBUG if verbose else logging.WARNING
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)
    optuna.logging.set_verbosity(level)


class _ProgressView:
    """A rich Live panel on a terminal; nothing otherwise (log lines are the progress)."""

    def __init__(self, live: Live | None) -> None:
        self._live = live
        self.progress: ProgressCallback | None = self._show if live is not None else None

    def _show(self, progress: SweepProgress) -> None:
        if self._live is not None:
            self._live.update(_render(progress))

    def stop(self) -> None:
        """Remove the panel (the summary takes its place)."""
        if self._live is not None:
            self._live.stop()
            self._live = None


@contextmanager
def _progress_view(*, is_live: bool) -> Iterator[_ProgressView]:
    if not is_live:
        yield _ProgressView(None)
        return
    with Live(console=err_console, refresh_per_second=4, transient=True) as live:
        view = _ProgressView(live)
        try:
            yield view
        finally:
            view.stop()


def _render(progress: SweepProgress) -> Group:
    finished = progress.n_complete + progress.n_pruned + progress.n_failed
    best = ("best: none yet" if progress.best_number is None
            else f"best: trial {progress.best_number} = {progress.best_value:.4g}")
    header = Text(f"trials {finished}/{progress.n_trials} finished "
                  f"({progress.n_complete} complete, {progress.n_pruned} pruned, "
                  f"{progress.n_failed} failed) | {len(progress.jobs)} running | {best} | "
                  f"tokens spent {progress.spent_tokens:,.0f}, "
                  f"committed {progress.committed_tokens:,.0f}")
    table = Table(box=None, show_edge=False, pad_edge=False)
    for column in ("trial", "job state", "epoch", "knobs"):
        table.add_column(column)
    for job in progress.jobs:
        knobs = ", ".join(f"{k}={_short(v)}" for k, v in job.knobs.items())
        table.add_row(str(job.number), job.state, f"{job.epoch}/{job.epochs}", knobs)
    return Group(header, table) if progress.jobs else Group(header)


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_summary(config_path: Path, config: SweepConfig, result: SweepResult) -> None:
    style = "bold red" if result.is_failed else "bold green"
    console.print(f"[{style}]sweep {result.study_name} stopped:[/] {result.stop_reason}",
                  highlight=False)
    console.print(f"  trials: {result.n_complete} complete, {result.n_pruned} pruned, "
                  f"{result.n_failed} failed (n_trials {result.n_trials})", highlight=False)
    if result.best_number is not None and result.best_value is not None:
        knobs = ", ".join(f"{k}={_short(v)}" for k, v in result.best_params.items())
        ran = result.best_params_run.get("epochs")
        console.print(f"  best: trial {result.best_number}, {config.objective} = "
                      f"{result.best_value:.4g}, plateau at epoch {result.best_plateau_epoch}"
                      f"\n        tune with: {knobs} (the trial ran {ran} epochs)",
                      highlight=False)
    cost = f" (cost {result.spent_cost:.2f})" if result.spent_cost is not None else ""
    console.print(f"  budget: {result.spent_tokens:,.0f} training tokens spent{cost}",
                  highlight=False)
    if result.n_in_flight:
        console.print(f"  [yellow]{result.n_in_flight} jobs still in flight keep running; "
                      "run the same command again to collect them[/]", highlight=False)
    if result.n_unrecorded:
        console.print(f"  [yellow]{result.n_unrecorded} finished trials are not recorded in "
                      "MLflow yet; run the same command again to record them[/]",
                      highlight=False)
    _print_where(config_path, config, result)


def _print_where(config_path: Path, config: SweepConfig, result: SweepResult) -> None:
    tracking = result.tracking_uri or config.tracking_url
    console.print(f"  open it in MLflow: gemini-sweep ui {config_path}\n"
                  f"                 or: mlflow ui --backend-store-uri {tracking}",
                  highlight=False, soft_wrap=True)
    console.print(f"  files: study {result.storage}\n"
                  f"         state folder {config.state_dir}", highlight=False, soft_wrap=True)
