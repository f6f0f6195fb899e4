"""`gemini-sweep cancel`: stop a sweep's spending now, or cancel some of its trials.

``cancel CONFIG --all`` stops the sweep: every job in flight is cancelled and no worker starts
a new trial; running `gemini-sweep run` processes record what they had and exit. ``cancel
CONFIG --trial N [N...]`` cancels those trials' jobs and the sweep goes on. Either way a
cancelled trial is recorded FAIL "cancelled by the user" (its curve so far kept, its MLflow
run KILLED) and never submitted again; a later `gemini-sweep run` continues the sweep with
new trials. The request goes through the study storage (:mod:`sweeps._user_cancel`), so it
reaches every worker of a sweep shared on PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from typing import Annotated

import typer

from sweeps.cli._common import EXIT_BAD_INPUT
from sweeps.cli._common import EXIT_FAILED
from sweeps.cli._common import app
from sweeps.cli._common import console
from sweeps.cli._common import err_console
from sweeps.cli._common import user_errors

if TYPE_CHECKING:
    import optuna

    from gemini_backend import BaseBackend
    from sweeps.config.schema import SweepConfig


@app.command("cancel", help="Stop a sweep's spending: cancel every job in flight and start no "
                            "new trial (--all), or cancel some trials' jobs (--trial N [N...]).")
def cancel_command(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG", help="the sweep config (YAML)")],
    numbers: Annotated[list[int] | None, typer.Argument(
        metavar="[N...]", help="with --trial: the trial numbers to cancel", show_default=False)
    ] = None,
    trial: Annotated[bool, typer.Option(
        "--trial", help="cancel the trials N... (their jobs); the sweep goes on")] = False,
    cancel_all: Annotated[bool, typer.Option(
        "--all", help="stop the sweep: cancel every job in flight and start no new trial; "
                      "a later `gemini-sweep run` continues with new trials")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")
                   ] = False,
    storage: Annotated[str | None, typer.Option(
        "--storage", help="Optuna storage URL, as given to `gemini-sweep run`")] = None,
) -> None:
    wanted = sorted(set(numbers or []))
    is_stop = cancel_all and not trial and not wanted
    if not is_stop and not (trial and wanted and not cancel_all):
        err_console.print("error: give either --all, or --trial and the trial numbers "
                          "(e.g. `gemini-sweep cancel CONFIG --trial 3 5`)", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    with user_errors():
        from sweeps.config.schema import load_config
        from sweeps.results.sweep_results import load_study

        config = load_config(config_path, storage=storage)
        study = load_study(study_name=config.name, storage=config.storage_url)
        targets = _targets(study, wanted if not cancel_all else None)
        _show(config, targets, stop=cancel_all)
        if not targets and not cancel_all:
            raise typer.Exit(EXIT_BAD_INPUT)
        if not yes and not typer.confirm("cancel?", default=False, err=True):
            console.print("nothing cancelled", markup=False)
            raise typer.Exit(EXIT_FAILED)
        _cancel(config, study, targets, stop=cancel_all)


def _targets(study: optuna.Study, wanted: list[int] | None) -> list[optuna.trial.FrozenTrial]:
    """The RUNNING trials to cancel: all (``wanted`` None) or those numbers, each other
    number named with the state that leaves nothing to cancel."""
    import optuna

    from sweeps.trial_record import is_warm_start

    trials = [t for t in study.get_trials(deepcopy=False) if not is_warm_start(t)]
    running = [t for t in trials if t.state is optuna.trial.TrialState.RUNNING]
    if wanted is None:
        return running
    by_number = {t.number: t for t in trials}
    for number in wanted:
        found = by_number.get(number)
        if found is None:
            err_console.print(f"trial {number}: no such trial in sweep {study.study_name}",
                              markup=False)
        elif found.state is not optuna.trial.TrialState.RUNNING:
            err_console.print(f"trial {number}: already {found.state.name}, nothing to cancel",
                              markup=False)
    return [t for t in running if t.number in wanted]


def _show(config: SweepConfig, targets: list[optuna.trial.FrozenTrial], *, stop: bool) -> None:
    from sweeps.trial_record import ATTR_KNOBS
    from sweeps.trial_record import stored_job_ref

    if stop:
        console.print(f"sweep {config.name}: no new trial will start; running `gemini-sweep "
                      "run` processes record their trials and exit", markup=False)
    if not targets:
        console.print("no trial is running: no job to cancel", markup=False)
    for frozen in targets:
        ref = stored_job_ref(frozen)
        knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in (frozen.user_attrs.get(ATTR_KNOBS) or {}).items())
        job = f"job {ref.job_id}" if ref else "not submitted yet"
        console.print(f"cancel trial {frozen.number}: {job} ({knobs})", markup=False,
                      highlight=False)


def _cancel(config: SweepConfig, study: optuna.Study, targets: list[optuna.trial.FrozenTrial],
            *, stop: bool) -> None:
    """Store the reason on each trial, then cancel its job (invariant 1: a restarted worker
    reads the reason back); on --all the stop mark first, so no worker starts a new trial."""
    import optuna

    from gemini_backend import create_backend
    from sweeps._replay_clock import is_simulated
    from sweeps._user_cancel import announce_cancels
    from sweeps._user_cancel import mark_cancelled
    from sweeps._user_cancel import request_stop

    if stop:
        request_stop(study)
    marked = []
    for frozen in targets:
        try:
            mark_cancelled(study, frozen)
            marked.append(frozen.number)
        except optuna.exceptions.UpdateFinishedTrialError:
            console.print(f"trial {frozen.number}: finished meanwhile, nothing to cancel",
                          markup=False)
    if not marked:
        return
    announce_cancels(study)
    # Read again: a job submitted since the list was shown has its reference stored now.
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    if is_simulated(config.backend):
        running = []  # its jobs run in the sweep's job time: the sweep cancels them there
    backend = create_backend(config.backend, base_dir=config.config_dir)
    try:
        for frozen in running:
            if frozen.number in marked:
                _cancel_job(backend, frozen)
    finally:
        backend.close()
    console.print(f"{len(marked)} trial(s) cancelled: each is recorded as failed, \"cancelled "
                  "by the user\", by the `gemini-sweep run` that holds it (or by the next "
                  "one); `gemini-sweep run` continues the sweep with new trials", markup=False)


def _cancel_job(backend: BaseBackend, frozen: optuna.trial.FrozenTrial) -> None:
    from gemini_backend import BackendError
    from sweeps.trial_record import stored_job_ref

    ref = stored_job_ref(frozen)
    if ref is None:
        return  # not submitted yet: the worker holding it drops it (or finds its job)
    try:
        backend.cancel(ref)
    except BackendError as exc:
        err_console.print(f"trial {frozen.number}: cancelling job {ref.job_id} failed "
                          f"({exc}); its reason is stored, so the `gemini-sweep run` holding "
                          "it (or the next one) cancels it", markup=False)
