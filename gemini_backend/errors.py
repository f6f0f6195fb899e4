"""Errors raised by tuning-job backends.

The tree, so an ``except`` can be written before reading the code::

    BackendError                  retryable=False; the service's message is kept
      AuthError                   401/403, missing or insufficient credentials
      InvalidRequestError         400 and local pre-submit checks (also a ValueError)
      JobNotFound                 the job (or tuned model) does not exist
      TransientError              retryable=True: timeouts, dropped connections, 408/5xx
        CreateUnsettled           a create whose outcome is not known yet: ask again later
        QuotaError                429 / RESOURCE_EXHAUSTED; carries retry_after_s when sent

Library and HTTP exceptions are translated into these at the backend boundary, always with
``raise ... from exc``, so callers never see ``requests`` or ``torch`` exceptions.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base of every error a backend raises.

    Args:
        message: what went wrong, in words a user can act on (the service's message kept).
        status_code: the HTTP status, when the error came from a response.
        service_status: the service's status string (``google.rpc.Status.status``), if any.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        service_status: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.service_status = service_status


class AuthError(BackendError):
    """Credentials are missing, invalid, or lack a scope or permission."""


class InvalidRequestError(BackendError, ValueError):
    """The request was rejected as invalid, by the service or by a local pre-submit check."""


class JobNotFound(BackendError):
    """The job, tuned model or operation does not exist (or is no longer visible)."""


class TransientError(BackendError):
    """A failure that may succeed if tried again: timeout, dropped connection, 408 or 5xx."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        service_status: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, service_status=service_status)
        self.retry_after_s = retry_after_s


class CreateUnsettled(TransientError):
    """A create may have made a job the service does not show yet: submit again later.

    Unlike other transient errors it is not a failed attempt: the backend bounds the wait
    itself (until the job shows, or is proven absent) and a caller that gave up on it could
    leave a paid job with no trial to collect it.
    """


class QuotaError(TransientError):
    """Rate limit or quota exhausted (429 / RESOURCE_EXHAUSTED); retry after a while."""


__all__ = [
    "AuthError",
    "BackendError",
    "CreateUnsettled",
    "InvalidRequestError",
    "JobNotFound",
    "QuotaError",
    "TransientError",
]
