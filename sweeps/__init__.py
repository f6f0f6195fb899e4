"""gemini-sweep: hyperparameter sweeps for Gemini fine-tuning, tracked in MLflow.

The public names are imported on first use (PEP 562): importing one light module such as
``sweeps.errors`` -- which every CLI command does -- must not pull in MLflow, Optuna and
plotting through the runner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sweeps._lazy import lazy_exports

if TYPE_CHECKING:
    from sweeps.config.schema import SweepConfig as SweepConfig
    from sweeps.config.schema import load_config as load_config
    from sweeps.data.dataset import Dataset as Dataset
    from sweeps.data.dataset import load_dataset as load_dataset
    from sweeps.engine.runner import SweepResult as SweepResult
    from sweeps.engine.runner import run_sweep as run_sweep
    from sweeps.errors import ConfigError as ConfigError
    from sweeps.errors import DatasetError as DatasetError
    from sweeps.errors import ServiceUnavailable as ServiceUnavailable
    from sweeps.errors import SweepError as SweepError
    from sweeps.errors import TrackingError as TrackingError

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ConfigError": "sweeps.errors",
    "Dataset": "sweeps.data.dataset",
    "DatasetError": "sweeps.errors",
    "ServiceUnavailable": "sweeps.errors",
    "SweepConfig": "sweeps.config.schema",
    "SweepError": "sweeps.errors",
    "TrackingError": "sweeps.errors",
    "load_config": "sweeps.config.schema",
    "load_dataset": "sweeps.data.dataset",
    "run_sweep": "sweeps.engine.runner",
    "SweepResult": "sweeps.engine.runner",
})
