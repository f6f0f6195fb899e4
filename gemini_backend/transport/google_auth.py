"""Authenticated ``requests`` sessions for Google REST APIs: an API key or google-auth OAuth.

Shared by the HTTP backends (the Gemini API uses both kinds; Vertex AI uses OAuth only).
Nothing here runs at import time or touches the network when a session is built: an OAuth
token is fetched by google-auth on the first request, and an API key travels only in the
``x-goog-api-key`` header (never in a URL, so it cannot land in a logged address).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import google.auth
import google.auth.exceptions
import requests
from google.auth.credentials import Credentials
from google.auth.transport.requests import AuthorizedSession
from google.oauth2 import service_account

from gemini_backend.errors import AuthError

logger = logging.getLogger(__name__)

API_KEY_HEADER = "x-goog-api-key"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
#: tunedModels.create needs this one (reference/tuning_api.md section 1.3).
TUNING_SCOPE = "https://www.googleapis.com/auth/generative-language.tuning"


@dataclass(frozen=True, slots=True)
class AuthenticatedSession:
    """A session plus the headers to send on every call, and a description safe to log."""

    session: requests.Session
    headers: Mapping[str, str]
    description: str


def api_key_from_env(
    variable: str | None,
    *,
    defaults: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> tuple[str, str] | None:
    """``(name, key)`` of the first environment variable holding a key, or ``None``.

    Args:
        variable: a variable the user named explicitly; when set, only it is read and it
            must be set (a typo must not silently fall back to other credentials).
        defaults: variables tried in order when ``variable`` is ``None``.

    Raises:
        AuthError: ``variable`` is named but empty or unset.
    """
    env = os.environ if environ is None else environ
    if variable is not None:
        value = env.get(variable, "").strip()
        if not value:
            raise AuthError(
                f"api_key_env: the environment variable {variable} is not set; export it "
                "with your API key, or remove api_key_env to use other credentials"
            )
        return variable, value
    for name in defaults:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def api_key_session(api_key: str, *, source: str) -> AuthenticatedSession:
    """A plain session that sends ``api_key`` in the ``x-goog-api-key`` header."""
    return AuthenticatedSession(
        session=requests.Session(),
        headers={API_KEY_HEADER: api_key},
        description=f"API key from {source}",
    )


def oauth_session(
    *,
    scopes: Sequence[str],
    credentials_file: Path | None = None,
    credentials: Credentials | None = None,
) -> AuthenticatedSession:
    """An ``AuthorizedSession`` over explicit, file-based or application default credentials.

    google-auth refreshes the token on first use and adds ``x-goog-user-project`` itself
    when the credentials carry a quota project (user credentials need it for billing).

    Raises:
        AuthError: the file cannot be read or no default credentials are configured.
    """
    if credentials is not None:
        source = "injected credentials"
    elif credentials_file is not None:
        credentials = _from_file(credentials_file, scopes)
        source = f"credentials_file {credentials_file}"
    else:
        credentials = _application_default(scopes)
        source = "application default credentials"
    quota_project = getattr(credentials, "quota_project_id", None)
    if quota_project:
        source += f" (quota project {quota_project})"
    return AuthenticatedSession(
        session=AuthorizedSession(credentials), headers={}, description=f"OAuth, {source}"
    )


def _from_file(path: Path, scopes: Sequence[str]) -> Credentials:
    try:
        return service_account.Credentials.from_service_account_file(str(path), scopes=scopes)
    except FileNotFoundError as exc:
        raise AuthError(f"credentials_file: {path} does not exist") from exc
    except (ValueError, KeyError) as exc:
        # The message of a malformed key file may quote it; keep only the exception type.
        raise AuthError(
            f"credentials_file: {path} is not a service-account JSON key "
            f"({type(exc).__name__}); download one from the Cloud console "
            "(IAM > Service accounts > Keys)"
        ) from None


def _application_default(scopes: Sequence[str]) -> Credentials:
    try:
        credentials, _project = google.auth.default(scopes=list(scopes))
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise AuthError(
            "no credentials found: set an API key (GEMINI_API_KEY), name a service-account "
            "file in credentials_file, or run `gcloud auth application-default login "
            f"--scopes={','.join(scopes)}`"
        ) from exc
    return credentials
