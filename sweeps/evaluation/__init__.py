"""Held-out evaluation of tuned models: the metrics, and the runner the sweep loop calls
after a job succeeds.
"""

from typing import TYPE_CHECKING

from sweeps._lazy import lazy_exports

if TYPE_CHECKING:
    from sweeps.evaluation.metrics import chrf as chrf
    from sweeps.evaluation.metrics import exact_match as exact_match
    from sweeps.evaluation.metrics import resolve_metrics as resolve_metrics
    from sweeps.evaluation.runner import EvaluationRunner as EvaluationRunner
    from sweeps.evaluation.runner import Evaluator as Evaluator
    from sweeps.evaluation.runner import build_evaluator as build_evaluator

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "resolve_metrics": "sweeps.evaluation.metrics",
        "exact_match": "sweeps.evaluation.metrics",
        "chrf": "sweeps.evaluation.metrics",
        "Evaluator": "sweeps.evaluation.runner",
        "EvaluationRunner": "sweeps.evaluation.runner",
        "build_evaluator": "sweeps.evaluation.runner",
    },
)
