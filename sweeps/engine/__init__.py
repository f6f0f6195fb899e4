"""The sweep engine: ask -> submit -> poll -> record -> tell, with the trial bookkeeping (leases,
the study lock, the budget) that lets a killed sweep resume without paying twice.

The only package that talks to both Optuna and a backend.
"""

from typing import TYPE_CHECKING

from sweeps._lazy import lazy_exports

if TYPE_CHECKING:
    from sweeps.engine.budget import cost_of as cost_of
    from sweeps.engine.budget import token_limit as token_limit
    from sweeps.engine.runner import SweepProgress as SweepProgress
    from sweeps.engine.runner import SweepResult as SweepResult
    from sweeps.engine.runner import open_study as open_study
    from sweeps.engine.runner import prepare_data as prepare_data
    from sweeps.engine.runner import run_sweep as run_sweep

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "run_sweep": "sweeps.engine.runner",
        "open_study": "sweeps.engine.runner",
        "prepare_data": "sweeps.engine.runner",
        "SweepResult": "sweeps.engine.runner",
        "SweepProgress": "sweeps.engine.runner",
        "cost_of": "sweeps.engine.budget",
        "token_limit": "sweeps.engine.budget",
    },
)
