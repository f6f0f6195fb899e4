"""Errors of the sweep layer.

::

    SweepError
      ConfigError      the sweep YAML is invalid; names the key path and its line (ValueError)
      DatasetError     the dataset is invalid; lists every problem with file, line and field
      TrackingError    MLflow could not be written after retries
      BudgetExhausted  the next trial would exceed the budget
"""

from __future__ import annotations


class SweepError(Exception):
    """Base of every error the sweep layer raises on purpose."""


class ConfigError(SweepError, ValueError):
    """The sweep config is invalid. The message names the key path and its line."""


class DatasetError(SweepError, ValueError):
    """The dataset is invalid. ``problems`` holds one line per problem, with its location."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class TrackingError(SweepError):
    """MLflow could not be written."""


class BudgetExhausted(SweepError):
    """The next trial would spend more than the budget has left."""


__all__ = ["BudgetExhausted", "ConfigError", "DatasetError", "SweepError", "TrackingError"]
