"""How trials are chosen and stopped: search space, samplers and the stratified start,
pruners, fidelity (epochs from the curve), warm start from earlier sweeps.
"""

from typing import TYPE_CHECKING

from sweeps._lazy import lazy_exports

if TYPE_CHECKING:
    from sweeps.policy.pruners import LeaderGapPruner as LeaderGapPruner
    from sweeps.policy.search_space import make_pruner as make_pruner
    from sweeps.policy.search_space import make_sampler as make_sampler
    from sweeps.policy.search_space import suggest_knobs as suggest_knobs
    from sweeps.policy.warm_start import seed_from_earlier_sweeps as seed_from_earlier_sweeps

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "suggest_knobs": "sweeps.policy.search_space",
        "make_sampler": "sweeps.policy.search_space",
        "make_pruner": "sweeps.policy.search_space",
        "LeaderGapPruner": "sweeps.policy.pruners",
        "seed_from_earlier_sweeps": "sweeps.policy.warm_start",
    },
)
