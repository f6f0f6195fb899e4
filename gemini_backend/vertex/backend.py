"""Vertex AI backend: Gemini supervised tuning with ``tuningJobs`` over REST.

Service: Vertex AI (Gemini Enterprise Agent Platform) ``v1/projects/{p}/locations/{l}/
tuningJobs`` on ``https://{location}-aiplatform.googleapis.com`` (``global`` ->
``https://aiplatform.googleapis.com``), as described in reference/tuning_api.md section 2 and
https://cloud.google.com/vertex-ai/generative-ai/docs/models/gemini-use-supervised-tuning.
Datasets are JSONL files uploaded to a Cloud Storage bucket (:mod:`gemini_backend.vertex._gcs`);
the loss curve is read from the job's TensorBoard (:mod:`gemini_backend.vertex._metrics`).

Auth: google-auth OAuth with the ``cloud-platform`` scope (application default credentials or
a service-account key file), sent by an ``AuthorizedSession``; google-auth adds
``x-goog-user-project`` when the credentials carry a quota project. Dependencies (``requests``,
``google-auth``) are core dependencies of the package: no extra to install.

Exactly once: ``tuningJobs.create`` takes no request id, so every job carries its idempotency
key as a label and ``submit`` looks the key up first. Every POST is written down before it
is sent (:mod:`gemini_backend.vertex._creates`), and a create whose outcome is unknown is not
sent again until the job has stayed absent from the (possibly lagging) list for
``list_lag_window_s``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Collection
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from typing import Literal

import requests
from google.auth.credentials import Credentials
from pydantic import Field
from pydantic import ValidationError
from pydantic import field_validator
from pydantic import model_validator

from gemini_backend.base import BackendConfig
from gemini_backend.base import BaseBackend
from gemini_backend.base import Capabilities
from gemini_backend.base import CreateCall
from gemini_backend.base import JobRef
from gemini_backend.base import JobRequest
from gemini_backend.base import JobState
from gemini_backend.base import JobStatus
from gemini_backend.base import check_request
from gemini_backend.errors import AuthError
from gemini_backend.errors import BackendError
from gemini_backend.errors import CreateUnsettled
from gemini_backend.errors import InvalidRequestError
from gemini_backend.errors import QuotaError
from gemini_backend.errors import TransientError
from gemini_backend.limits import limits_for
from gemini_backend.transport.google_auth import CLOUD_PLATFORM_SCOPE
from gemini_backend.transport.google_auth import oauth_session
from gemini_backend.transport.retry import Backoff
from gemini_backend.vertex._creates import CreateAttempt
from gemini_backend.vertex._creates import next_check_delay
from gemini_backend.vertex._creates import settle_time
from gemini_backend.vertex._gcs import RESUMABLE_THRESHOLD_BYTES
from gemini_backend.vertex._gcs import object_name
from gemini_backend.vertex._metrics import Curve
from gemini_backend.vertex._metrics import list_all
from gemini_backend.vertex._status import job_status
from gemini_backend.vertex._status import missing_curve_message
from gemini_backend.vertex._wire import DEFAULT_BASE_MODEL
from gemini_backend.vertex._wire import KEY_LABEL
from gemini_backend.vertex._wire import REMOTE_STATES
from gemini_backend.vertex._wire import TuningJobPayload
from gemini_backend.vertex._wire import batch_size_message
from gemini_backend.vertex._wire import dataset_files
from gemini_backend.vertex._wire import examples_to_jsonl
from gemini_backend.vertex._wire import generate_body
from gemini_backend.vertex._wire import is_gemini_model
from gemini_backend.vertex._wire import job_labels
from gemini_backend.vertex._wire import label_value
from gemini_backend.vertex._wire import map_state
from gemini_backend.vertex._wire import reply_text
from gemini_backend.vertex._wire import tuning_job_body
from gemini_backend.vertex._wiring import Wiring
from gemini_backend.vertex._wiring import build_wiring
from gemini_backend.vertex._wiring import vertex_base_url

logger = logging.getLogger(__name__)

LIST_PAGE_SIZE = 100
#: What the sweep does with the bucket, each with the call that needs it (docs/vertex.md).
BUCKET_PERMISSIONS = (
    "storage.objects.create",  # objects.insert: the datasets and the create records
    "storage.objects.get",     # objects.get: is a large dataset there; read a create record
    "storage.objects.list",    # objects.list: the create records of a key
)


class VertexBackendConfig(BackendConfig):
    """The ``backend:`` section for ``kind: vertex``. ``project`` and ``bucket`` are required."""

    kind: Literal["vertex"] = "vertex"
    project: str = Field(min_length=1, pattern=r"^[^/\s]+$", description="Cloud project id")
    location: str = Field(default="us-central1", pattern=r"^[a-z0-9-]+$")
    bucket: str = Field(min_length=3, description="Cloud Storage bucket for the JSONL files")
    base_model: str = DEFAULT_BASE_MODEL
    base_url: str | None = Field(default=None, pattern=r"^https?://")
    storage_base_url: str | None = Field(default=None, pattern=r"^https?://")
    credentials_file: Path | None = None
    system_instruction: str | None = None
    tuned_model_display_name_prefix: str = "gemini-sweep"
    dataset_prefix: str = "gemini-sweep/datasets"
    poll_interval_s: float = Field(default=60.0, gt=0)
    max_poll_interval_s: float = Field(default=300.0, gt=0)
    timeout_s: float = Field(default=60.0, gt=0)
    api_version: Literal["v1", "v1beta1"] = "v1"
    resumable_threshold_bytes: int = Field(default=RESUMABLE_THRESHOLD_BYTES, gt=0)
    create_records_prefix: str = "gemini-sweep/creates"
    #: How long a created job may take to show in ``tuningJobs.list`` (undocumented).
    list_lag_window_s: float = Field(default=60.0, ge=0)

    @field_validator("bucket")
    @classmethod
    def _bare_bucket(cls, bucket: str) -> str:
        name = bucket.removeprefix("gs://").rstrip("/")
        if "/" in name or not name:
            raise ValueError("give the bucket name only (my-bucket), not a path; objects go "
                             "under dataset_prefix")
        return name

    @model_validator(mode="after")
    def _interval_order(self) -> VertexBackendConfig:
        if self.max_poll_interval_s < self.poll_interval_s:
            raise ValueError("max_poll_interval_s must not be less than poll_interval_s")
        return self


class VertexBackend(BaseBackend):
    """Tuning jobs on Vertex AI. Thread-safe: the session and caches are shared and locked.

    Args:
        config: the validated ``backend:`` section.
        base_dir: the config's folder; a relative ``credentials_file`` resolves against it.
        session: a ready (authorised) ``requests.Session``, instead of building one.
        credentials: google-auth credentials to authorise with, instead of ADC or the file.
        sleep: injected for tests; used between retries.
        clock: wall-clock seconds, injected for tests; times the create records.

    Raises:
        AuthError: on first use, when no credentials can be found.

    Example:
        >>> config = VertexBackendConfig(project="my-proj", bucket="my-bucket")
        >>> backend = VertexBackend(config)          # no network until the first call
    """

    kind = "vertex"
    config_model = VertexBackendConfig

    def __init__(self, config: VertexBackendConfig, *, base_dir: Path = Path("."),
                 session: requests.Session | None = None,
                 credentials: Credentials | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._curve_warned: set[str] = set()
        self._base_dir = base_dir
        self._session = session
        self._credentials = credentials
        self._sleep = sleep
        self._backoff = Backoff()
        self._wiring: Wiring | None = None
        self._label_filter_works = True
        self._lock = threading.Lock()
        v = config.api_version
        self._parent = f"projects/{config.project}/locations/{config.location}"
        self._jobs_path = f"{v}/{self._parent}/tuningJobs"

    @classmethod
    def from_config(cls, config: BackendConfig, *, base_dir: Path) -> VertexBackend:
        if not isinstance(config, VertexBackendConfig):
            config = VertexBackendConfig.model_validate(config.model_dump())
        return cls(config, base_dir=base_dir)

    @property
    def capabilities(self) -> Capabilities:
        knobs = {"epochs", "learning_rate_multiplier", "adapter_size"}
        if not is_gemini_model(self.config.base_model):
            knobs.add("batch_size")
        return Capabilities(
            knobs=frozenset(knobs), has_validation_loss=True, has_checkpoints=True,
            can_generate=True, poll_interval_s=self.config.poll_interval_s,
            max_poll_interval_s=self.config.max_poll_interval_s, bills_jobs=True,
        )

    def check_search_space(self, knobs: Collection[str]) -> None:
        """Vertex takes ``batch_size`` only for open models, and only in ``v1beta1``."""
        if "batch_size" in knobs and is_gemini_model(self.config.base_model):
            raise InvalidRequestError(batch_size_message(self.config.base_model))
        if "batch_size" in knobs and self.config.api_version == "v1":
            raise InvalidRequestError(
                "search_space.batch_size: batchSize exists only in the v1beta1 API; set "
                "backend.api_version: v1beta1 to tune it for an open model"
            )
        super().check_search_space(knobs)

    def preflight(self) -> None:
        """Credentials, the API and the bucket, checked with cheap calls the documented roles
        allow: a one-item job list, and ``testIamPermissions`` on the bucket (no
        ``buckets.get``, which the object roles do not grant).

        Raises:
            AuthError: a permission the sweep needs is missing, named with the role to grant.
            JobNotFound: no such bucket.
        """
        wiring = self._wire()
        wiring.vertex.request("GET", self._jobs_path, what="list tuning jobs",
                              params={"pageSize": 1})
        missing = wiring.uploader.missing_permissions(list(BUCKET_PERMISSIONS))
        if missing:
            raise AuthError(
                f"bucket {self.config.bucket}: the credentials lack {', '.join(missing)}; "
                "grant roles/storage.objectAdmin (or roles/storage.objectCreator plus "
                "roles/storage.objectViewer) on the bucket (see docs/vertex.md, IAM)")

    # --- submit / find ------------------------------------------------------------------------

    def submit(self, request: JobRequest) -> JobRef:
        if request.batch_size is not None:
            self.check_search_space(["batch_size"])
        check_request(request, self.capabilities)
        train, validation = dataset_files(
            request, system_instruction=self.config.system_instruction,
            limits=limits_for(self.kind))
        self._body(request, "gs://check/train.jsonl", None)  # knob errors before any spend
        existing = self.find(request.idempotency_key)
        if existing is not None:
            logger.info("job=%s already exists for key %s", existing.job_id,
                        request.idempotency_key)
            return existing
        wiring = self._wire()
        last = wiring.creates.last_attempt(request.idempotency_key)
        if last is not None:
            self._wait_until_proven_absent(request.idempotency_key, last)
        prefix = self.config.dataset_prefix
        train_uri = wiring.uploader.upload_once(train, prefix=prefix)
        val_uri = wiring.uploader.upload_once(validation, prefix=prefix) if validation else None
        return self._create(self._body(request, train_uri, val_uri), request.idempotency_key,
                            first_number=last.number + 1 if last else 1)

    def _wait_until_proven_absent(self, key: str, attempt: CreateAttempt) -> None:
        """Raise (retry later) while an earlier POST's job could still be missing from the
        list; return once the window has passed with the job still absent."""
        timing = {"request_timeout_s": self.config.timeout_s,
                  "window_s": self.config.list_lag_window_s}
        now = self._clock()
        remaining = settle_time(attempt, **timing) - now
        if remaining <= 0:
            logger.warning("key %s: create %d (%.0fs ago) made no job the list shows; "
                           "creating again", key, attempt.number, now - attempt.posted_at)
            return
        raise CreateUnsettled(
            f"create tuning job: create {attempt.number} for key {key} may have made a job "
            f"the list does not show yet; not creating again for {remaining:.0f}s "
            f"(list_lag_window_s)",
            retry_after_s=next_check_delay(attempt, now, **timing))

    def create_call(self, request: JobRequest) -> CreateCall:
        """The ``tuningJobs.create`` body ``submit`` sends, with the JSONL files it uploads
        first under their content-addressed names (so a sweep's uploads are reused). A batch
        size on a Gemini model, which ``submit`` rejects, is left out with a note."""
        notes: tuple[str, ...] = ()
        model = request.base_model or self.config.base_model
        if request.batch_size is not None and is_gemini_model(model):
            notes = (f"batch_size {request.batch_size} is left out: Vertex takes a batch size "
                     f"only for open models and picks one for {model}.",)
            request = dataclasses.replace(request, batch_size=None)
        train, validation = dataset_files(
            request, system_instruction=self.config.system_instruction,
            limits=limits_for(self.kind))
        prefix, bucket = self.config.dataset_prefix, self.config.bucket
        files = {f"gs://{bucket}/{object_name(data, prefix=prefix)}": data
                 for data in (train, validation) if data}
        uris = list(files)
        body = self._body(request, uris[0], uris[1] if validation else None)
        return CreateCall(body=body, files=files, notes=notes)

    def upload_bytes(self, request: JobRequest) -> int | None:
        """Bytes of the training JSONL ``submit`` uploads (Vertex's file-size limit)."""
        return len(examples_to_jsonl(request.train,
                                     system_instruction=self.config.system_instruction))

    def find(self, idempotency_key: str) -> JobRef | None:
        """The job labelled with this key: listed with a label filter, matched client-side."""
        wanted = label_value(idempotency_key)
        params = {"filter": f'labels.{KEY_LABEL}="{wanted}"', "pageSize": LIST_PAGE_SIZE}
        vertex = self._wire().vertex
        try:
            if not self._label_filter_works:
                raise InvalidRequestError("label filter refused earlier")
            jobs = list(list_all(vertex, self._jobs_path, "tuningJobs", what="list tuning jobs",
                                 params=params))
        except InvalidRequestError:
            # The label filter is not documented (reference section 2.4): fall back to all.
            if self._label_filter_works:
                logger.warning("the label filter was refused; listing every tuning job")
                self._label_filter_works = False
            jobs = list(list_all(vertex, self._jobs_path, "tuningJobs", what="list tuning jobs",
                                 params={"pageSize": LIST_PAGE_SIZE}))
        matches = [j for j in jobs if (j.get("labels") or {}).get(KEY_LABEL) == wanted]
        if not matches:
            return None
        matches.sort(key=lambda j: str(j.get("createTime", "")))
        if len(matches) > 1:
            logger.warning("key %s labels %d jobs; using the first, %s", idempotency_key,
                           len(matches), matches[0]["name"])
        return JobRef(backend=self.kind, job_id=str(matches[0]["name"]),
                      idempotency_key=idempotency_key)

    def _create(self, body: dict[str, Any], key: str, *, first_number: int) -> JobRef:
        """POST, each time written down first. A refusal (429: nothing was created) is
        posted again after a backoff; any other failure leaves the outcome unknown, so the
        next try waits until the list proves the job absent."""
        wiring = self._wire()
        delays = self._backoff.delays()
        number = first_number
        while True:
            attempt = CreateAttempt(number, self._clock())
            if not wiring.creates.record(key, attempt.number, attempt.posted_at):
                raise CreateUnsettled(f"create tuning job: another worker is creating the job "
                                     f"for key {key}; looking it up later",
                                     retry_after_s=self.config.list_lag_window_s or 1.0)
            try:
                job = wiring.vertex.request("POST", self._jobs_path, what="create tuning job",
                                            json_body=body, retry=False)
            except QuotaError as error:
                delay = next(delays, None)
                if delay is None:
                    raise
                logger.warning("create tuning job: %s; nothing was created for key %s, "
                               "retrying in %.1fs", error.message, key, delay)
                self._sleep(max(delay, error.retry_after_s or 0.0))
                number += 1
                continue
            except TransientError as error:
                found = self.find(key)
                if found is not None:
                    logger.warning("job=%s was created despite: %s", found.job_id,
                                   error.message)
                    return found
                raise CreateUnsettled(
                    f"{error.message}; whether the job for key {key} was created is unknown "
                    "until the job list shows it or list_lag_window_s has passed",
                    status_code=error.status_code, service_status=error.service_status,
                    retry_after_s=next_check_delay(
                        attempt, self._clock(), request_timeout_s=self.config.timeout_s,
                        window_s=self.config.list_lag_window_s)) from error
            logger.info("job=%s submitted for key %s", job.get("name"), key)
            return JobRef(backend=self.kind, job_id=str(job["name"]), idempotency_key=key)

    # --- poll / cancel / generate -------------------------------------------------------------

    def poll(self, ref: JobRef) -> JobStatus:
        job = self._get_job(ref)
        state = map_state(job.state, job_id=ref.job_id)
        if state is JobState.QUEUED:
            return job_status(job, state, Curve([], []))
        if job.experiment:
            curve = self._wire().curves.read(job.experiment)
        elif state in (JobState.RUNNING, JobState.SUCCEEDED):
            curve = Curve([], [], "experiment field on the job")
        else:  # failed or cancelled before it ran: there is no curve to look for
            curve = Curve([], [])
        self._warn_once_about_curve(ref, job.state, curve)
        return job_status(job, state, curve)

    def _warn_once_about_curve(self, ref: JobRef, remote_state: str | None,
                               curve: Curve) -> None:
        """Say at once (not at the job's end) when the curve cannot be found, and once."""
        with self._lock:
            if curve.missing is None:
                self._curve_warned.discard(ref.job_id)
                return
            if ref.job_id in self._curve_warned:
                return
            self._curve_warned.add(ref.job_id)
        logger.warning("job=%s (%s): %s; still looking on every poll, and the trial fails "
                       "with this reason if it is still missing when the job ends",
                       ref.job_id, remote_state, missing_curve_message(curve.missing))

    def cancel(self, ref: JobRef) -> None:
        try:
            self._wire().vertex.request("POST", f"{self._job_path(ref.job_id)}:cancel",
                                        what="cancel tuning job", json_body={})
        except BackendError as error:
            if error.status_code not in (400, 409):
                raise
            # Vertex refuses to cancel a job that has already ended: that is not an error.
            state = map_state(self._get_job(ref).state, job_id=ref.job_id)
            if not state.is_terminal():
                raise
            logger.debug("job=%s already %s; nothing to cancel", ref.job_id, state.value)
            return
        logger.info("job=%s cancel requested", ref.job_id)

    def generate(self, ref: JobRef, prompts: Sequence[str]) -> list[str]:
        """Answers from the tuned model's endpoint (``:generateContent``, section 2.9)."""
        job = self._get_job(ref)
        endpoint = job.tuned_model.endpoint if job.tuned_model else None
        if not endpoint:
            raise InvalidRequestError(f"job {ref.job_id} has no tuned model endpoint yet "
                                      f"(state {job.state}); wait until it has succeeded")
        system = self.config.system_instruction
        return [
            reply_text(self._wire().vertex.request(
                "POST", f"{self.config.api_version}/{endpoint}:generateContent",
                what="generate with tuned model",
                json_body=generate_body(prompt, system_instruction=system)))
            for prompt in prompts
        ]

    def close(self) -> None:
        with self._lock:
            wiring, self._wiring = self._wiring, None
        if wiring is not None:
            wiring.vertex.close()  # one session, shared by both clients

    # --- helpers ------------------------------------------------------------------------------

    def _body(self, request: JobRequest, train_uri: str, val_uri: str | None) -> dict[str, Any]:
        adapter = request.extra_knobs.get("adapter_size")
        try:
            adapter_size = int(adapter) if adapter is not None else None
        except (TypeError, ValueError):
            raise InvalidRequestError(f"adapter_size: {adapter!r} is not a number") from None
        prefix = self.config.tuned_model_display_name_prefix
        return tuning_job_body(
            base_model=request.base_model or self.config.base_model,
            training_dataset_uri=train_uri, validation_dataset_uri=val_uri,
            epochs=request.epochs, learning_rate_multiplier=request.learning_rate_multiplier,
            adapter_size=adapter_size, batch_size=request.batch_size,
            tuned_model_display_name=f"{prefix}-{request.display_name}" if prefix
            else request.display_name,
            labels=job_labels(request.idempotency_key, request.labels),
        )

    def _job_path(self, job_id: str) -> str:
        if job_id.startswith("projects/"):
            return f"{self.config.api_version}/{job_id}"
        return f"{self._jobs_path}/{job_id}"

    def _get_job(self, ref: JobRef) -> TuningJobPayload:
        payload = self._wire().vertex.request("GET", self._job_path(ref.job_id),
                                              what=f"get tuning job {ref.job_id}")
        try:
            return TuningJobPayload.model_validate(payload)
        except ValidationError as exc:
            raise BackendError(f"get tuning job {ref.job_id}: unexpected answer "
                               f"({exc.error_count()} problems)") from exc

    def _wire(self) -> Wiring:
        with self._lock:
            if self._wiring is None:
                self._wiring = build_wiring(
                    self.config, session=self._session or self._authorised_session(),
                    backoff=self._backoff, sleep=self._sleep)
            return self._wiring


    def _authorised_session(self) -> requests.Session:
        path = self.config.credentials_file
        if path is not None:
            path = path.expanduser()
            path = path if path.is_absolute() else self._base_dir / path
        try:
            auth = oauth_session(scopes=[CLOUD_PLATFORM_SCOPE], credentials_file=path,
                                 credentials=self._credentials)
        except AuthError as error:
            if path is not None or self._credentials is not None:
                raise
            raise AuthError(
                "vertex: no Google Cloud credentials found; run `gcloud auth "
                "application-default login`, or set backend.credentials_file to a "
                "service-account key (see docs/vertex.md)") from error
        logger.debug("vertex: authenticating with %s", auth.description)
        return auth.session


__all__ = [
    "DEFAULT_BASE_MODEL",
    "REMOTE_STATES",
    "VertexBackend",
    "VertexBackendConfig",
    "examples_to_jsonl",
    "tuning_job_body",
    "vertex_base_url",
]
