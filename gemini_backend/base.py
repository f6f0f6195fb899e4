"""The seam between a sweep and a tuning service: one interface, value objects, one state enum.

Every backend (local training, Gemini API, Vertex AI, replay, or a third-party class named in
the config by import path) implements :class:`BaseBackend`. A backend knows nothing of Optuna
or MLflow; the runner owns all trial state and a backend only translates requests.

Contract (every implementation keeps it; ``tests/gemini_backend_tests/contract.py`` checks it):

* Thread safety: one backend object may be used from several threads of one runner; methods
  hold no per-call state on ``self`` beyond caches that are safe to share.
* ``submit`` is idempotent by ``JobRequest.idempotency_key``: submitting the same key twice
  returns the existing job instead of creating (and paying for) a second one, wherever the
  service allows it; ``find`` looks a key up without creating anything.
* ``poll`` reports every terminal state, including jobs finished, failed or cancelled outside
  our control, and a job whose worker died is ``FAILED`` with the reason, never ``RUNNING``
  forever. Snapshots are cumulative: each poll returns all points seen so far.
* Errors are :mod:`gemini_backend.errors`; ``TransientError`` may be retried by the caller,
  everything else may not. ``close()`` is idempotent.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Collection
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from typing import ClassVar

from pydantic import BaseModel
from pydantic import ConfigDict

from gemini_backend.errors import BackendError
from gemini_backend.errors import InvalidRequestError

#: The knobs every backend understands, by their canonical names.
CANONICAL_KNOBS = ("epochs", "batch_size", "learning_rate_multiplier")


class JobState(enum.StrEnum):
    """Where a tuning job is in its life."""

    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True, slots=True)
class Example:
    """One supervised tuning example: the model should produce ``output`` given ``text_input``.

    ``text_input`` is ``None`` for output-only examples (all examples of a dataset are of the
    same type).
    """

    output: str
    text_input: str | None = None


@dataclass(frozen=True, slots=True)
class JobRequest:
    """Everything a backend needs to start one tuning job.

    The examples are sent as they are: the sweep applies the dataset's preamble before
    building the request. ``extra_knobs`` holds backend-specific knobs (Vertex:
    ``adapter_size``); ``labels`` are short key/value strings a service may attach to the job
    (Vertex labels) so it can be found again.
    """

    train: tuple[Example, ...]
    epochs: int
    learning_rate_multiplier: float
    base_model: str
    display_name: str
    idempotency_key: str
    batch_size: int | None = None
    validation: tuple[Example, ...] = ()
    extra_knobs: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    seed: int = 0

    def knobs(self) -> dict[str, Any]:
        """The canonical knobs plus the backend-specific ones, as one dict."""
        knobs: dict[str, Any] = {
            "epochs": self.epochs,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        if self.batch_size is not None:
            knobs["batch_size"] = self.batch_size
        knobs.update(self.extra_knobs)
        return knobs


@dataclass(frozen=True, slots=True)
class JobRef:
    """A handle on a submitted job: enough to poll, cancel or find it after a restart."""

    backend: str
    job_id: str
    idempotency_key: str

    def to_dict(self) -> dict[str, str]:
        return {
            "backend": self.backend,
            "job_id": self.job_id,
            "idempotency_key": self.idempotency_key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRef:
        return cls(
            backend=str(data["backend"]),
            job_id=str(data["job_id"]),
            idempotency_key=str(data["idempotency_key"]),
        )


@dataclass(frozen=True, slots=True)
class LossSnapshot:
    """One training step's mean loss. ``epoch`` is 1-based.

    ``eval_loss`` is set on the last snapshot of an epoch when the backend measured the
    validation loss at the end of that epoch.
    """

    step: int
    epoch: int
    loss: float
    eval_loss: float | None = None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tuned-model checkpoint the service kept (Vertex keeps about one per epoch)."""

    checkpoint_id: str
    epoch: int
    step: int | None = None


@dataclass(frozen=True, slots=True)
class JobStatus:
    """What a poll saw. ``progress`` is a fraction in [0, 1] when the service reports one."""

    state: JobState
    snapshots: tuple[LossSnapshot, ...] = ()
    progress: float | None = None
    error_message: str | None = None
    tuned_model: str | None = None
    checkpoints: tuple[Checkpoint, ...] = ()
    training_tokens: int | None = None

    @property
    def epochs_completed(self) -> int:
        """The last epoch with at least one snapshot (0 before the first)."""
        return max((s.epoch for s in self.snapshots), default=0)


@dataclass(frozen=True, slots=True)
class CreateCall:
    """What :meth:`BaseBackend.submit` sends to create a job, rendered without sending it:
    the create body, the files it names that are uploaded first (URI -> the exact bytes),
    and notes on anything the service takes differently from the request."""

    body: dict[str, Any]
    files: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend (as configured) can do, so the sweep can check a config before spending.

    Args:
        knobs: the knob names the service takes (canonical names plus backend-specific ones).
        has_validation_loss: reports ``eval_loss`` when a validation split is sent.
        has_checkpoints: keeps a checkpoint per epoch, so an earlier epoch can be deployed
            without tuning again.
        can_generate: ``generate`` works on a succeeded job's tuned model.
        poll_interval_s: a sensible first interval between polls of one job.
        max_poll_interval_s: the cap the interval backs off to for long jobs.
        max_epochs: the most epochs one job may run, when the backend has a limit (the
            replay backend's longest recorded curve).
        bills_jobs: a job costs money (a cloud service): nothing is submitted until every
            store the sweep writes to has answered.
    """

    knobs: frozenset[str]
    has_validation_loss: bool = False
    has_checkpoints: bool = False
    can_generate: bool = False
    poll_interval_s: float = 5.0
    max_poll_interval_s: float = 60.0
    max_epochs: int | None = None
    bills_jobs: bool = False


class BackendConfig(BaseModel):
    """Base of every backend's config section (``backend:`` in the sweep YAML).

    Subclasses set ``kind`` to a ``Literal`` and add their fields with units in the names.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    kind: str
    base_model: str | None = None


class BaseBackend(abc.ABC):
    """A tuning service. See the module docstring for the contract every method keeps."""

    #: The ``kind`` value that selects this backend in a config.
    kind: ClassVar[str] = ""
    #: The pydantic model of this backend's config section.
    config_model: ClassVar[type[BackendConfig]] = BackendConfig

    @classmethod
    def from_config(cls, config: BackendConfig, *, base_dir: Path) -> BaseBackend:
        """Build the backend from its validated config; ``base_dir`` is the config's folder.

        Must not touch the network: credentials and services are reached on first use.
        """
        return cls(config, base_dir=base_dir)  # type: ignore[call-arg]

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """What this backend, as configured, can do."""

    @abc.abstractmethod
    def submit(self, request: JobRequest) -> JobRef:
        """Start a job, or return the existing one for ``request.idempotency_key``.

        Raises:
            InvalidRequestError: the request breaks a rule of the service (before any spend
                where the rule is known locally).
            AuthError, QuotaError, TransientError: as the service answered.
        """

    @abc.abstractmethod
    def poll(self, ref: JobRef) -> JobStatus:
        """Read the job's state and every loss snapshot so far.

        Raises:
            JobNotFound: the job no longer exists.
            TransientError: try again later.
        """

    @abc.abstractmethod
    def cancel(self, ref: JobRef) -> None:
        """Ask the service to stop the job. Cancelling a finished job is not an error."""

    @abc.abstractmethod
    def find(self, idempotency_key: str) -> JobRef | None:
        """The job submitted earlier with this key, or ``None``; never creates anything."""

    def check_search_space(self, knobs: Collection[str]) -> None:
        """Reject, before any trial, a search space naming knobs this backend cannot send.

        Backends override this to explain service-specific rules (Vertex takes
        ``batch_size`` only for open models).

        Raises:
            InvalidRequestError: naming the knob and what to do instead.
        """
        unknown = sorted(set(knobs) - set(self.capabilities.knobs))
        if unknown:
            raise InvalidRequestError(
                f"search_space: the {self.kind or type(self).__name__} backend does not take "
                f"{', '.join(unknown)}; it takes {', '.join(sorted(self.capabilities.knobs))}"
            )

    def check_epochs(self, highest: int) -> None:
        """Reject, before any trial, a search space asking for more epochs than a job may run.

        Raises:
            InvalidRequestError: naming the limit.
        """
        limit = self.capabilities.max_epochs
        if limit is not None and highest > limit:
            raise InvalidRequestError(
                f"search_space.epochs: the {self.kind or type(self).__name__} backend runs at "
                f"most {limit} epochs, but the search space asks for up to {highest}; lower "
                "the epochs' high (or max) to at most that"
            )

    def preflight(self) -> None:  # noqa: B027  (an optional hook: most backends need none)
        """Checks that need the service (credentials, a tunable base model), run once before
        the first trial so a sweep that cannot work fails before spending anything."""

    def create_call(self, request: JobRequest) -> CreateCall:
        """The create call :meth:`submit` would make for ``request``, from the same encoders
        (``gemini-sweep export`` asks for it, so an export is what the backend sends).

        Raises:
            BackendError: this backend has no service call to show (local, replay).
        """
        raise BackendError(f"the {self.kind or type(self).__name__} backend has no service "
                           "request to export")

    def upload_bytes(self, request: JobRequest) -> int | None:
        """The size of what :meth:`submit` sends for ``request``'s training examples, from the
        encoders it sends them with: the number the service's size limit applies to (the
        inline create body, or the uploaded training file). None: no such limit."""
        del request
        return None

    def training_tokens_per_epoch(self, train: Sequence[Example]) -> int | None:
        """The training tokens one epoch over ``train`` is billed for, counted the way this
        backend (or its service) counts them; None when it cannot tell before a job runs.

        The sweep's budget commits ``epochs`` x this number for a job before submitting it,
        so a budget is not overrun because an estimate undercounted; with None it falls back
        to the dataset's own estimate and corrects it from what jobs report.
        """
        del train
        return None

    def generate(self, ref: JobRef, prompts: Sequence[str]) -> list[str]:
        """The tuned model's answers to ``prompts`` (for held-out evaluation)."""
        raise BackendError(f"the {self.kind or type(self).__name__} backend cannot generate text")

    def close(self) -> None:  # noqa: B027  (an optional hook)
        """Release sessions and files. Idempotent."""

    def __enter__(self) -> BaseBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def check_request(request: JobRequest, capabilities: Capabilities) -> None:
    """Reject requests no backend could run, before any process starts or money is spent.

    Raises:
        InvalidRequestError: naming the field and the rule it breaks.
    """
    if not request.train:
        raise InvalidRequestError("train: the request has no training examples")
    if request.epochs < 1:
        raise InvalidRequestError(f"epochs: must be at least 1, got {request.epochs}")
    if not request.learning_rate_multiplier > 0:
        raise InvalidRequestError(
            "learning_rate_multiplier: must be greater than 0, "
            f"got {request.learning_rate_multiplier}"
        )
    if capabilities.max_epochs is not None and request.epochs > capabilities.max_epochs:
        raise InvalidRequestError(
            f"epochs: this backend runs at most {capabilities.max_epochs} epochs, "
            f"got {request.epochs}"
        )
    if request.batch_size is not None and request.batch_size < 1:
        raise InvalidRequestError(f"batch_size: must be at least 1, got {request.batch_size}")
    if not request.idempotency_key:
        raise InvalidRequestError("idempotency_key: must not be empty")
    unknown = set(request.knobs()) - set(capabilities.knobs)
    if unknown:
        raise InvalidRequestError(
            f"knobs {sorted(unknown)} are not taken by this backend "
            f"(it takes {sorted(capabilities.knobs)})"
        )
