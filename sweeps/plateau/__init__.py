"""The plateau epoch of a loss curve: pure functions, no I/O.
"""

from typing import TYPE_CHECKING

from sweeps._lazy import lazy_exports

if TYPE_CHECKING:
    from sweeps.plateau.analysis import PlateauResult as PlateauResult
    from sweeps.plateau.analysis import ended_epoch_losses as ended_epoch_losses
    from sweeps.plateau.analysis import epoch_means as epoch_means
    from sweeps.plateau.analysis import find_plateau as find_plateau
    from sweeps.plateau.analysis import objective_value as objective_value

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "PlateauResult": "sweeps.plateau.analysis",
        "find_plateau": "sweeps.plateau.analysis",
        "epoch_means": "sweeps.plateau.analysis",
        "ended_epoch_losses": "sweeps.plateau.analysis",
        "objective_value": "sweeps.plateau.analysis",
    },
)
