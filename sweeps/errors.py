"""Errors of the sweep layer.

::

    SweepError
      ConfigError      the sweep YAML is invalid; names the key path and its line (ValueError)
      DatasetError     the dataset is invalid; lists every problem with file, line and field
      ServiceUnavailable  a service the sweep needs is unreachable or failing (not the
                          user's input): the study's storage, MLflow, the tuning service
        TrackingError     MLflow could not be written after retries
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


class ServiceUnavailable(SweepError):
    """A service the sweep needs is unreachable or failing; trying again later may work.

    The CLI exits with its own code for it (``EXIT_UNAVAILABLE``), distinct from bad input,
    so a script can retry an outage and stop on a config error.
    """


class TrackingError(ServiceUnavailable):
    """MLflow could not be written."""


__all__ = ["ConfigError", "DatasetError", "ServiceUnavailable", "SweepError", "TrackingError"]
