"""Gemini API backend: ``tunedModels`` (v1beta) over REST with requests + google-auth.

Service: ``https://generativelanguage.googleapis.com`` (``base_url`` points elsewhere, e.g. a
fake on 127.0.0.1), docs https://ai.google.dev/api/tuning. Auth: an API key in the
``x-goog-api-key`` header, or OAuth through google-auth with the ``generative-language.tuning``
scope. Dependencies (requests, google-auth) are core dependencies of the package.

The service has had no tunable base model since May 2025; :meth:`GeminiApiBackend.preflight`
says so before any trial and points to the Vertex backend. Wire details live in
:mod:`gemini_backend.gemini_api._wire` (``tuned_model_body`` builds the exact create body).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import Literal

from google.auth.credentials import Credentials
from pydantic import Field
from pydantic import SecretStr
from pydantic import field_validator
from pydantic import model_validator

from gemini_backend.base import BackendConfig
from gemini_backend.base import BaseBackend
from gemini_backend.base import Capabilities
from gemini_backend.base import CreateCall
from gemini_backend.base import JobRef
from gemini_backend.base import JobRequest
from gemini_backend.base import JobStatus
from gemini_backend.base import check_request
from gemini_backend.errors import AuthError
from gemini_backend.errors import BackendError
from gemini_backend.errors import InvalidRequestError
from gemini_backend.errors import JobNotFound
from gemini_backend.gemini_api._wire import candidate_text
from gemini_backend.gemini_api._wire import check_examples
from gemini_backend.gemini_api._wire import check_size
from gemini_backend.gemini_api._wire import encode_body
from gemini_backend.gemini_api._wire import model_name
from gemini_backend.gemini_api._wire import parse_status
from gemini_backend.gemini_api._wire import tuned_model_body
from gemini_backend.gemini_api._wire import tuned_model_id
from gemini_backend.limits import limits_for
from gemini_backend.transport.google_auth import CLOUD_PLATFORM_SCOPE
from gemini_backend.transport.google_auth import TUNING_SCOPE
from gemini_backend.transport.google_auth import AuthenticatedSession
from gemini_backend.transport.google_auth import api_key_from_env
from gemini_backend.transport.google_auth import api_key_session
from gemini_backend.transport.google_auth import oauth_session
from gemini_backend.transport.http import RestClient
from gemini_backend.transport.retry import Backoff

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
DEFAULT_BASE_MODEL = "models/gemini-1.5-flash-001-tuning"
DEFAULT_API_KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
OAUTH_SCOPES = (TUNING_SCOPE, CLOUD_PLATFORM_SCOPE)
TUNABLE_METHOD = "createTunedModel"
_JSON = {"Content-Type": "application/json"}
_SCOPES_ADVICE = (
    "The credentials lack the tuning scope. Either set up OAuth user credentials with it "
    "(`gcloud auth application-default login --scopes="
    f"{CLOUD_PLATFORM_SCOPE},{TUNING_SCOPE}` and a quota project), or use an API key "
    "(export GEMINI_API_KEY=...)."
)


class GeminiApiBackendConfig(BackendConfig):
    """The ``backend:`` section for ``kind: gemini-api``.

    Credentials, first match wins: ``api_key``; ``credentials_file`` (a service-account
    JSON key); the variable ``api_key_env`` names (default ``GEMINI_API_KEY``, then
    ``GOOGLE_API_KEY``); application default credentials.
    """

    kind: Literal["gemini-api"] = "gemini-api"
    base_model: str = DEFAULT_BASE_MODEL
    base_url: str = Field(default=DEFAULT_BASE_URL, pattern=r"^https?://[^\s?#]+$")
    api_key: SecretStr | None = None
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    credentials_file: Path | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    poll_interval_s: float = Field(default=30.0, gt=0)
    max_poll_interval_s: float = Field(default=300.0, gt=0)
    use_learning_rate: float | None = Field(
        default=None, gt=0, description="send learningRate = this x multiplier instead of "
        "learningRateMultiplier (never both)")
    max_retries: int = Field(default=5, ge=0, le=20)

    @field_validator("base_model")
    @classmethod
    def _models_prefix(cls, value: str) -> str:
        return value if "/" in value else f"models/{value}"

    @model_validator(mode="after")
    def _one_credential(self) -> GeminiApiBackendConfig:
        given = [name for name in ("api_key", "api_key_env", "credentials_file")
                 if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(f"set only one of {', '.join(given)}: they are alternative "
                             "credentials")
        return self


class GeminiApiBackend(BaseBackend):
    """Tuning jobs as Gemini API tuned models; the job id is ``tunedModels/<id>``.

    Args:
        config: the validated config section.
        base_dir: the sweep config's folder; a relative ``credentials_file`` resolves here.
        credentials: google-auth credentials to use instead of the configured ones (tests).
        sleep: injected so tests do not wait out retry delays.
        environ: the environment to read API keys from (default ``os.environ``).

    Raises:
        InvalidRequestError, AuthError, QuotaError, TransientError, JobNotFound: as each
        method documents; service messages are kept.

    Example:
        >>> backend = GeminiApiBackend(GeminiApiBackendConfig())  # no network yet
    """

    kind = "gemini-api"
    config_model = GeminiApiBackendConfig

    def __init__(
        self,
        config: GeminiApiBackendConfig,
        *,
        base_dir: Path = Path("."),
        credentials: Credentials | None = None,
        sleep: Callable[[float], None] = time.sleep,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._base_dir = base_dir
        self._credentials = credentials
        self._sleep = sleep
        self._environ = environ
        self._client: RestClient | None = None
        self._lock = threading.Lock()

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(
            knobs=frozenset({"epochs", "batch_size", "learning_rate_multiplier"}),
            has_validation_loss=False,  # the Gemini API reports training loss only
            can_generate=True,
            poll_interval_s=self.config.poll_interval_s,
            max_poll_interval_s=max(self.config.max_poll_interval_s,
                                    self.config.poll_interval_s),
            bills_jobs=True,
        )

    # --- jobs ----------------------------------------------------------------------------

    def create_call(self, request: JobRequest) -> CreateCall:
        """The ``tunedModels.create`` body ``submit`` sends (examples inline, no files)."""
        body = tuned_model_body(request, base_model=request.base_model or
                                self.config.base_model,
                                learning_rate=self.config.use_learning_rate)
        return CreateCall(body=body)

    def upload_bytes(self, request: JobRequest) -> int | None:
        """Bytes of the create body ``submit`` sends, examples inline (its request limit)."""
        return len(encode_body(self.create_call(request).body))

    def submit(self, request: JobRequest) -> JobRef:
        """Create the tuned model under the id derived from the key; 409 means it exists.

        Raises:
            InvalidRequestError: a seed limit is broken (before any HTTP) or the service
                rejected the body, naming the field.
        """
        check_request(request, self.capabilities)
        limits = limits_for(self.kind)
        check_examples(request, limits)
        model_id = tuned_model_id(request.idempotency_key)
        payload = encode_body(self.create_call(request).body)
        check_size(payload, limits)
        ref = JobRef(backend=self.kind, job_id=f"tunedModels/{model_id}",
                     idempotency_key=request.idempotency_key)
        try:
            # The fixed tunedModelId makes create safe to retry: a repeat answers 409.
            self._call("POST", "v1beta/tunedModels", what=f"create {ref.job_id}",
                       params={"tunedModelId": model_id}, data=payload, headers=_JSON)
        except BackendError as exc:
            if exc.status_code != 409 or exc.service_status not in (None, "ALREADY_EXISTS"):
                raise
            logger.info("job=%s key=%s already exists; attaching to it", ref.job_id,
                        request.idempotency_key)
            return ref
        logger.info("job=%s key=%s submitted (%d examples, %d bytes)", ref.job_id,
                    request.idempotency_key, len(request.train), len(payload))
        return ref

    def poll(self, ref: JobRef) -> JobStatus:
        """The model's state and loss curve; a FAILED model's operation tells a cancel apart.

        Raises:
            JobNotFound: the tuned model does not exist (or was deleted).
        """
        name = model_name(ref.job_id)
        model = self._call("GET", f"v1beta/{name}", what=f"get {name}")
        operation = self._latest_operation(name) if model.get("state") == "FAILED" else None
        return parse_status(model, operation)

    def cancel(self, ref: JobRef) -> None:
        """Cancel the creating model's operation (v1, then v1beta); finished jobs are left."""
        name = model_name(ref.job_id)
        model = self._call("GET", f"v1beta/{name}", what=f"get {name}")
        if model.get("state") != "CREATING":
            return
        pending = [op for op in self._operations(name) if not op.get("done")]
        if not pending:
            raise BackendError(f"cancel {name}: the service lists no running operation")
        for operation in pending:
            self._cancel_operation(str(operation["name"]))
        logger.info("job=%s cancel requested", name)

    def find(self, idempotency_key: str) -> JobRef | None:
        """The job created for ``idempotency_key`` (one GET of its derived id), or ``None``."""
        name = f"tunedModels/{tuned_model_id(idempotency_key)}"
        try:
            self._call("GET", f"v1beta/{name}", what=f"get {name}")
        except JobNotFound:
            return None
        return JobRef(backend=self.kind, job_id=name, idempotency_key=idempotency_key)

    def delete_tuned_model(self, ref: JobRef) -> None:
        """Delete the tuned model (advised for cancelled ones: their quality is unpredictable).

        Deleting a model that is already gone is not an error.
        """
        name = model_name(ref.job_id)
        try:
            self._call("DELETE", f"v1beta/{name}", what=f"delete {name}")
        except JobNotFound:
            logger.info("job=%s already deleted", name)
            return
        logger.info("job=%s deleted", name)

    def generate(self, ref: JobRef, prompts: Sequence[str]) -> list[str]:
        """The tuned model's answer to each prompt (``tunedModels/{id}:generateContent``)."""
        name = model_name(ref.job_id)
        answers = []
        for prompt in prompts:
            body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
            reply = self._call("POST", f"v1beta/{name}:generateContent",
                               what=f"generate with {name}", json_body=body)
            answers.append(candidate_text(reply))
        return answers

    # --- discovery -----------------------------------------------------------------------

    def list_tuned_models(self, *, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every tuned model the credentials can see, following ``nextPageToken``."""
        yield from self._pages("v1beta/tunedModels", "tunedModels", page_size=page_size,
                               what="list tuned models")

    def tunable_base_models(self, *, page_size: int = 1000) -> list[str]:
        """Names of the models whose ``supportedGenerationMethods`` include createTunedModel."""
        return [str(model.get("name")) for model in
                self._pages("v1beta/models", "models", page_size=page_size, what="list models")
                if TUNABLE_METHOD in (model.get("supportedGenerationMethods") or [])]

    def preflight(self) -> None:
        """Fail before the first trial when no base model (or not ours) can be tuned.

        Raises:
            InvalidRequestError: naming the tunable models, or pointing to Vertex when none.
            AuthError: the credentials do not work, with what to do.
        """
        tunable = self.tunable_base_models()
        if not tunable:
            raise InvalidRequestError(
                f"backend.base_model: no model at {self.config.base_url} supports tuning "
                f"({TUNABLE_METHOD}). The Gemini API has had no tunable base model since "
                "May 2025; tune on Vertex AI instead with `backend: {kind: vertex}` "
                "(see docs/gemini_api.md)."
            )
        if self.config.base_model not in tunable:
            raise InvalidRequestError(
                f"backend.base_model: {self.config.base_model} cannot be tuned at "
                f"{self.config.base_url}; tunable models: {', '.join(sorted(tunable))}"
            )
        logger.info("gemini-api: %s is tunable", self.config.base_model)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- plumbing ------------------------------------------------------------------------

    def _rest(self) -> RestClient:
        with self._lock:
            if self._client is None:
                auth = self._authenticate()
                logger.debug("gemini-api: authenticating with %s", auth.description)
                self._client = RestClient(
                    self.config.base_url, session=auth.session, headers=auth.headers,
                    timeout_s=self.config.timeout_s,
                    backoff=Backoff(max_attempts=self.config.max_retries + 1),
                    sleep=self._sleep)
            return self._client

    def _authenticate(self) -> AuthenticatedSession:
        config = self.config
        if self._credentials is not None:
            return oauth_session(scopes=OAUTH_SCOPES, credentials=self._credentials)
        if config.api_key is not None:
            return api_key_session(config.api_key.get_secret_value(), source="api_key")
        if config.credentials_file is not None:
            path = config.credentials_file.expanduser()
            path = path if path.is_absolute() else self._base_dir / path
            return oauth_session(scopes=OAUTH_SCOPES, credentials_file=path)
        found = api_key_from_env(config.api_key_env, defaults=DEFAULT_API_KEY_ENVS,
                                 environ=self._environ)
        if found is not None:
            return api_key_session(found[1], source=f"${found[0]}")
        return oauth_session(scopes=OAUTH_SCOPES)

    def _call(self, method: str, path: str, *, what: str, **kwargs: Any) -> Any:
        """One REST call through the shared client, with auth errors explained."""
        try:
            return self._rest().request(method, path, what=what, **kwargs)
        except AuthError as exc:
            raise AuthError(_auth_advice(exc.message), status_code=exc.status_code,
                            service_status=exc.service_status) from exc
        except InvalidRequestError as exc:
            if "API_KEY_INVALID" not in exc.message:
                raise
            raise AuthError(f"{exc.message}. Check the API key (GEMINI_API_KEY or "
                            "backend.api_key_env).", status_code=exc.status_code,
                            service_status=exc.service_status) from exc

    def _pages(self, path: str, key: str, *, page_size: int, what: str
               ) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            params: dict[str, Any] = {"pageSize": page_size}
            if token:
                params["pageToken"] = token
            page = self._call("GET", path, what=what, params=params)
            yield from (item for item in page.get(key) or [] if isinstance(item, dict))
            token = page.get("nextPageToken")
            if not token:
                return

    def _operations(self, name: str) -> list[dict[str, Any]]:
        return list(self._pages(f"v1beta/{name}/operations", "operations", page_size=100,
                                what=f"list operations of {name}"))

    def _latest_operation(self, name: str) -> dict[str, Any] | None:
        """The model's last operation, for its error; best effort (absent on some servers)."""
        try:
            operations = self._operations(name)
        except (JobNotFound, InvalidRequestError) as exc:
            logger.debug("job=%s: no operations to read (%s)", name, exc.message)
            return None
        return operations[-1] if operations else None

    def _cancel_operation(self, operation: str) -> None:
        # Only v1 declares tunedModels operations :cancel; try v1beta when v1 says 404.
        for version in ("v1", "v1beta"):
            try:
                self._call("POST", f"{version}/{operation}:cancel", what=f"cancel {operation}",
                           json_body={})
                return
            except JobNotFound:
                continue
            except BackendError as exc:
                if exc.status_code != 501:
                    raise
        raise BackendError(f"cancel {operation}: the service does not support cancelling "
                           "tuning operations; delete the tuned model instead "
                           "(GeminiApiBackend.delete_tuned_model)")


def _auth_advice(message: str) -> str:
    scopes_missing = ("ACCESS_TOKEN_SCOPE_INSUFFICIENT" in message
                      or "insufficient authentication scopes" in message.lower())
    return f"{message}. {_SCOPES_ADVICE}" if scopes_missing else message


__all__ = ["GeminiApiBackend", "GeminiApiBackendConfig", "tuned_model_body", "tuned_model_id"]
