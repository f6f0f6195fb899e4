"""The sweep's YAML config: its schema and knobs, read with errors that name the file,
line and field.
"""

from typing import TYPE_CHECKING

from sweeps._lazy import lazy_exports

if TYPE_CHECKING:
    from sweeps.config.schema import BudgetConfig as BudgetConfig
    from sweeps.config.schema import Choices as Choices
    from sweeps.config.schema import DatasetConfig as DatasetConfig
    from sweeps.config.schema import Fixed as Fixed
    from sweeps.config.schema import FloatRange as FloatRange
    from sweeps.config.schema import FromCurve as FromCurve
    from sweeps.config.schema import IntRange as IntRange
    from sweeps.config.schema import KnobSpec as KnobSpec
    from sweeps.config.schema import PlateauConfig as PlateauConfig
    from sweeps.config.schema import SamplerConfig as SamplerConfig
    from sweeps.config.schema import SearchSpace as SearchSpace
    from sweeps.config.schema import SweepConfig as SweepConfig
    from sweeps.config.schema import load_config as load_config

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "SweepConfig": "sweeps.config.schema",
        "load_config": "sweeps.config.schema",
        "BudgetConfig": "sweeps.config.schema",
        "DatasetConfig": "sweeps.config.schema",
        "PlateauConfig": "sweeps.config.schema",
        "SamplerConfig": "sweeps.config.schema",
        "SearchSpace": "sweeps.config.schema",
        "KnobSpec": "sweeps.config.schema",
        "IntRange": "sweeps.config.schema",
        "FloatRange": "sweeps.config.schema",
        "Choices": "sweeps.config.schema",
        "Fixed": "sweeps.config.schema",
        "FromCurve": "sweeps.config.schema",
    },
)
