"""REST plumbing shared by the Gemini API and Vertex AI backends.

One place for: sessions (API key or google-auth credentials), timeouts, translating
``google.rpc.Status`` error bodies into :mod:`gemini_backend.errors`, and retrying idempotent
calls with backoff while honouring ``RetryInfo.retryDelay``. Requests are logged at DEBUG
(method, path, status, latency, attempt) before auth headers are attached, and never with
bodies or headers, so no key or token reaches a log.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable
from collections.abc import Mapping
from typing import Any

import google.auth.exceptions
import requests

from gemini_backend.errors import AuthError
from gemini_backend.errors import BackendError
from gemini_backend.errors import InvalidRequestError
from gemini_backend.errors import JobNotFound
from gemini_backend.errors import QuotaError
from gemini_backend.errors import TransientError
from gemini_backend.transport.retry import RETRYABLE_STATUS_CODES
from gemini_backend.transport.retry import Backoff
from gemini_backend.transport.retry import retry_call

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0
_RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
_BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)s\s*$")


def parse_duration_s(value: object) -> float | None:
    """A ``google.protobuf.Duration`` in JSON form (``"1.5s"``) as seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1))
    return None


def error_from_response(response: requests.Response, *, what: str) -> BackendError:
    """Translate an error response (a ``google.rpc.Status`` body, or anything else).

    Args:
        response: the non-2xx response.
        what: the call in words, e.g. ``"create tuned model"``, to start the message with.
    """
    status_code = response.status_code
    service_status: str | None = None
    message = response.reason or f"HTTP {status_code}"
    reason: str | None = None
    retry_after_s: float | None = None
    field_violations: list[str] = []
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        message = str(error.get("message") or message)
        service_status = error.get("status") if isinstance(error.get("status"), str) else None
        for detail in error.get("details") or []:
            if not isinstance(detail, dict):
                continue
            kind = detail.get("@type")
            if kind == _RETRY_INFO_TYPE:
                retry_after_s = parse_duration_s(detail.get("retryDelay"))
            elif kind == _ERROR_INFO_TYPE:
                reason = detail.get("reason")
            elif kind == _BAD_REQUEST_TYPE:
                for violation in detail.get("fieldViolations") or []:
                    if isinstance(violation, dict):
                        field_violations.append(
                            f"{violation.get('field', '?')}: {violation.get('description', '')}"
                        )
    if retry_after_s is None:
        retry_after_s = parse_duration_s(response.headers.get("Retry-After"))
    text = f"{what}: {status_code} {service_status or ''} {message}".replace("  ", " ").strip()
    if field_violations:
        text += " (" + "; ".join(field_violations) + ")"
    if reason:
        text += f" [reason: {reason}]"
    kwargs: dict[str, Any] = {"status_code": status_code, "service_status": service_status}
    if status_code == 429 or service_status == "RESOURCE_EXHAUSTED":
        return QuotaError(text, retry_after_s=retry_after_s, **kwargs)
    if status_code in RETRYABLE_STATUS_CODES:
        return TransientError(text, retry_after_s=retry_after_s, **kwargs)
    if status_code in (401, 403):
        return AuthError(text, **kwargs)
    if status_code == 404:
        return JobNotFound(text, **kwargs)
    if status_code == 400:
        return InvalidRequestError(text, **kwargs)
    return BackendError(text, **kwargs)


class RestClient:
    """JSON over HTTP with timeouts, error translation and retries of idempotent calls.

    Args:
        base_url: scheme and host (and optional path prefix), e.g.
            ``https://generativelanguage.googleapis.com``.
        session: a ``requests.Session``; pass a google-auth ``AuthorizedSession`` for OAuth.
        headers: extra headers sent on every call (an API key header, ``x-goog-user-project``).
        timeout_s: per-request timeout.
        backoff: the retry schedule.
        sleep: injected for tests.
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: requests.Session | None = None,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self._headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        self._sleep = sleep

    def url(self, path: str) -> str:
        if path.startswith("http://") or path.startswith("https://"):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
    ) -> Any:
        """Send one call and return its decoded JSON body (``{}`` for an empty body).

        Args:
            what: the call in words, used in error messages and logs.
            retry: retry transient failures. Pass ``False`` for calls that are not
                idempotent and carry no idempotency guard.

        Raises:
            BackendError: one of its subclasses, after the retries are spent.
        """
        return self._with_retries(
            what,
            retry,
            lambda attempt: self._send_once(method, path, what, json_body, params, data,
                                            headers, attempt),
        )

    def send(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        data: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        retry: bool = True,
        accept_statuses: frozenset[int] = frozenset(),
    ) -> requests.Response:
        """Like :meth:`request` but return the response itself, for calls whose answer is
        in headers or in a status (Cloud Storage uploads: ``Location``, ``Range``, 308, 412).

        Args:
            accept_statuses: statuses of 400 or more that are returned instead of raised.

        Raises:
            BackendError: one of its subclasses, after the retries are spent.
        """

        def once(attempt: int) -> requests.Response:
            response = self._transport(method, path, what, json_body, params, data, headers,
                                       attempt)
            if response.status_code >= 400 and response.status_code not in accept_statuses:
                raise error_from_response(response, what=what)
            return response

        response: requests.Response = self._with_retries(what, retry, once)
        return response

    def _with_retries(self, what: str, retry: bool, call: Callable[[int], Any]) -> Any:
        """Run ``call(attempt)``, retrying ``TransientError`` on the backoff schedule."""
        backoff = self.backoff if retry else dataclasses.replace(self.backoff, max_attempts=1)
        return retry_call(call, what=what, backoff=backoff, sleep=self._sleep)

    def _send_once(
        self,
        method: str,
        path: str,
        what: str,
        json_body: Any,
        params: Mapping[str, Any] | None,
        data: bytes | None,
        extra_headers: Mapping[str, str] | None,
        attempt: int,
    ) -> Any:
        response = self._transport(method, path, what, json_body, params, data, extra_headers,
                                   attempt)
        if response.status_code >= 400:
            raise error_from_response(response, what=what)
        if not response.content:
            return {}
        try:
            return response.json()
        except (ValueError, json.JSONDecodeError) as exc:
            # A proxy's HTML page or a truncated body: the call may have worked, so only
            # idempotent callers retry it.
            raise TransientError(f"{what}: the answer was not valid JSON") from exc

    def _transport(
        self,
        method: str,
        path: str,
        what: str,
        json_body: Any,
        params: Mapping[str, Any] | None,
        data: bytes | None,
        extra_headers: Mapping[str, str] | None,
        attempt: int,
    ) -> requests.Response:
        """One HTTP exchange; transport and credential failures become backend errors."""
        started = time.monotonic()
        headers = {**self._headers, **(extra_headers or {})}
        try:
            response = self.session.request(
                method,
                self.url(path),
                json=json_body,
                params=params,
                data=data,
                headers=headers,
                timeout=self.timeout_s,
            )
        except requests.Timeout as exc:
            raise TransientError(f"{what}: no answer within {self.timeout_s:g}s") from exc
        except requests.ConnectionError as exc:
            raise TransientError(f"{what}: connection failed ({type(exc).__name__})") from exc
        except requests.RequestException as exc:
            raise BackendError(f"{what}: {type(exc).__name__}") from exc
        except google.auth.exceptions.RefreshError as exc:
            # An AuthorizedSession refreshes its token inside request(): a revoked or
            # expired credential surfaces here. The message names no token.
            raise AuthError(f"{what}: the credentials could not be refreshed ({exc}); "
                            "log in again or check the service-account key") from exc
        except google.auth.exceptions.TransportError as exc:
            raise TransientError(f"{what}: the token endpoint could not be reached") from exc
        logger.debug("%s %s -> %d in %.3fs (attempt %d)", method, path.split("?")[0],
                     response.status_code, time.monotonic() - started, attempt)
        return response

    def close(self) -> None:
        self.session.close()
