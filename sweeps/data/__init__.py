"""Datasets: read in any supported format, checked against the service's limits, split and
hashed.
"""

from typing import TYPE_CHECKING

from sweeps._lazy import lazy_exports

if TYPE_CHECKING:
    from sweeps.data.dataset import Dataset as Dataset
    from sweeps.data.dataset import DatasetReport as DatasetReport
    from sweeps.data.dataset import estimate_tokens as estimate_tokens
    from sweeps.data.dataset import load_dataset as load_dataset
    from sweeps.data.dataset import validate_dataset as validate_dataset

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Dataset": "sweeps.data.dataset",
        "DatasetReport": "sweeps.data.dataset",
        "load_dataset": "sweeps.data.dataset",
        "validate_dataset": "sweeps.data.dataset",
        "estimate_tokens": "sweeps.data.dataset",
    },
)
