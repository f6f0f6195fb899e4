"""A sweep read back from its Optuna study: status, export, report and the cost frontier.
"""

from typing import TYPE_CHECKING

from sweeps._lazy import lazy_exports

if TYPE_CHECKING:
    from sweeps.results.cost_frontier import cheapest_within as cheapest_within
    from sweeps.results.export import best_config as best_config
    from sweeps.results.report import write_report as write_report
    from sweeps.results.sweep_results import SweepResults as SweepResults
    from sweeps.results.sweep_results import TrialRecord as TrialRecord
    from sweeps.results.sweep_results import collect_results as collect_results
    from sweeps.results.sweep_results import config_results as config_results
    from sweeps.results.sweep_results import load_study as load_study
    from sweeps.results.sweep_results import pick_best as pick_best

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "load_study": "sweeps.results.sweep_results",
        "config_results": "sweeps.results.sweep_results",
        "collect_results": "sweeps.results.sweep_results",
        "SweepResults": "sweeps.results.sweep_results",
        "TrialRecord": "sweeps.results.sweep_results",
        "pick_best": "sweeps.results.sweep_results",
        "best_config": "sweeps.results.export",
        "write_report": "sweeps.results.report",
        "cheapest_within": "sweeps.results.cost_frontier",
    },
)
