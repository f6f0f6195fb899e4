"""What every command shares: the app, the consoles, logging set-up and error handling."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler

from gemini_backend import BackendError
from sweeps.errors import ServiceUnavailable
from sweeps.errors import SweepError

#: Exit codes: 0 ok, 1 the sweep failed, 2 bad config / input / usage, 3 a service is
#: unreachable or failing (tuning service, study storage, MLflow: try again later),
#: 130 interrupted.
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130
EXIT_CODES_HELP = ("Exit codes: 0 ok, 1 the sweep stopped on failures, 2 bad config or input, "
                   "3 a service is unreachable or failing (try again later), 130 interrupted.")

app = typer.Typer(
    name="gemini-sweep",
    help="Find the best fine-tuning hyperparameters for Gemini models, tracked in MLflow.\n\n"
    + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks with locals could print API keys (typer < 0.23 default): never show them.
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True)
# A pipe or a log file gets whole lines (rich would wrap them at 80 columns); a terminal
# keeps rich's word wrapping. Tables still fit the width.
console.soft_wrap = not console.is_terminal
err_console.soft_wrap = not err_console.is_terminal


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Configure logging once, in the CLI only; library modules never add handlers.

    On a terminal, rich's aligned records; elsewhere (a log file, CI) one plain line per
    record with its time, never wrapped.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, show_time=False,
                              markup=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for name in ("sweeps", "gemini_backend"):
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected errors into a clear message and an exit code, never a traceback."""
    try:
        yield
    except (SweepError, BackendError) as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True,
                          soft_wrap=True)
        raise typer.Exit(exit_code_of(exc)) from None
    except KeyboardInterrupt:
        err_console.print("interrupted: jobs in flight keep running; "
                          "run the same command again to collect them")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def exit_code_of(exc: SweepError | BackendError) -> int:
    """A service that is unreachable or failing after its retries (a transient backend
    error: timeout, refused connection, 5xx, quota; the study storage; MLflow) is 3; any
    other error is about what the user gave (config, dataset, credentials, a request the
    service rejects, a job root that cannot be written) and is 2. A script can then retry
    the one and stop on the other."""
    is_outage = isinstance(exc, ServiceUnavailable) or (
        isinstance(exc, BackendError) and exc.retryable)
    return EXIT_UNAVAILABLE if is_outage else EXIT_BAD_INPUT
