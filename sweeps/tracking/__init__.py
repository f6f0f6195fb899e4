"""MLflow tracking: a parent run per sweep, a child run per trial with its curve and plot.

The only package that imports MLflow.
"""

from typing import TYPE_CHECKING

from sweeps._lazy import lazy_exports

if TYPE_CHECKING:
    from sweeps.tracking._writer import artifact_root_for as artifact_root_for
    from sweeps.tracking.plots import plot_loss_curve as plot_loss_curve
    from sweeps.tracking.plots import plot_sweep as plot_sweep
    from sweeps.tracking.read import TrialCurve as TrialCurve
    from sweeps.tracking.read import trial_curves as trial_curves
    from sweeps.tracking.tracker import MlflowTracker as MlflowTracker
    from sweeps.tracking.tracker import NullTracker as NullTracker
    from sweeps.tracking.tracker import SweepInfo as SweepInfo
    from sweeps.tracking.tracker import SweepSummary as SweepSummary
    from sweeps.tracking.tracker import Tracker as Tracker

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Tracker": "sweeps.tracking.tracker",
        "MlflowTracker": "sweeps.tracking.tracker",
        "NullTracker": "sweeps.tracking.tracker",
        "SweepInfo": "sweeps.tracking.tracker",
        "SweepSummary": "sweeps.tracking.tracker",
        "trial_curves": "sweeps.tracking.read",
        "TrialCurve": "sweeps.tracking.read",
        "plot_loss_curve": "sweeps.tracking.plots",
        "plot_sweep": "sweeps.tracking.plots",
        "artifact_root_for": "sweeps.tracking._writer",
    },
)
