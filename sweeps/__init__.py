"""gemini-sweep: hyperparameter sweeps for Gemini fine-tuning, tracked in MLflow."""

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
