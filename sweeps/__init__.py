"""gemini-sweep: hyperparameter sweeps for Gemini fine-tuning, tracked in MLflow.

The public names are imported on first use (PEP 562): importing one light module such as
``sweeps.errors`` -- which every CLI command does -- must not pull in MLflow, Optuna and
plotting through the runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from sweeps.config import SweepConfig
    from sweeps.config import load_config
    from sweeps.dataset import Dataset
    from sweeps.dataset import load_dataset
    from sweeps.errors import ConfigError
    from sweeps.errors import DatasetError
    from sweeps.errors import ServiceUnavailable
    from sweeps.errors import SweepError
    from sweeps.errors import TrackingError
    from sweeps.runner import SweepResult
    from sweeps.runner import run_sweep

_HOMES = {
    "ConfigError": "sweeps.errors",
    "Dataset": "sweeps.dataset",
    "DatasetError": "sweeps.errors",
    "ServiceUnavailable": "sweeps.errors",
    "SweepConfig": "sweeps.config",
    "SweepError": "sweeps.errors",
    "TrackingError": "sweeps.errors",
    "load_config": "sweeps.config",
    "load_dataset": "sweeps.dataset",
    "run_sweep": "sweeps.runner",
    "SweepResult": "sweeps.runner",
}

__all__ = [
    "ConfigError",
    "Dataset",
    "DatasetError",
    "ServiceUnavailable",
    "SweepConfig",
    "SweepError",
    "TrackingError",
    "load_config",
    "load_dataset",
    "run_sweep",
    "SweepResult",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sweeps' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
