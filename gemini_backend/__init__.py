"""Tuning-job backends behind one interface: local, gemini-api, vertex, replay.

This package knows nothing of Optuna or MLflow. Other code imports only from here (or from a
public backend module such as ``gemini_backend.vertex.backend``), never a ``_private`` module:
``tests/test_layout.py`` enforces it.
"""

from gemini_backend.base import CANONICAL_KNOBS
from gemini_backend.base import BackendConfig
from gemini_backend.base import BaseBackend
from gemini_backend.base import Capabilities
from gemini_backend.base import Checkpoint
from gemini_backend.base import CreateCall
from gemini_backend.base import Example
from gemini_backend.base import JobRef
from gemini_backend.base import JobRequest
from gemini_backend.base import JobState
from gemini_backend.base import JobStatus
from gemini_backend.base import LossSnapshot
from gemini_backend.base import check_request
from gemini_backend.errors import AuthError
from gemini_backend.errors import BackendError
from gemini_backend.errors import CreateUnsettled
from gemini_backend.errors import InvalidRequestError
from gemini_backend.errors import JobNotFound
from gemini_backend.errors import QuotaError
from gemini_backend.errors import TransientError
from gemini_backend.limits import LIMITS
from gemini_backend.limits import DatasetLimits
from gemini_backend.limits import limits_for
from gemini_backend.registry import BUILTIN_BACKENDS
from gemini_backend.registry import backend_class
from gemini_backend.registry import config_model
from gemini_backend.registry import create_backend
from gemini_backend.transport.retry import Backoff
from gemini_backend.transport.retry import retry_call

__all__ = [
    "AuthError",
    "BUILTIN_BACKENDS",
    "Backoff",
    "BackendConfig",
    "BackendError",
    "BaseBackend",
    "CANONICAL_KNOBS",
    "Capabilities",
    "Checkpoint",
    "CreateCall",
    "DatasetLimits",
    "Example",
    "InvalidRequestError",
    "JobNotFound",
    "JobRef",
    "JobRequest",
    "JobState",
    "JobStatus",
    "LIMITS",
    "LossSnapshot",
    "QuotaError",
    "CreateUnsettled",
    "TransientError",
    "backend_class",
    "check_request",
    "config_model",
    "create_backend",
    "limits_for",
    "retry_call",
]
