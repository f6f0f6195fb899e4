"""Vertex AI ``tuningJobs`` wire format: pure functions, no network.

Request side: the training JSONL (reference/tuning_api.md section 2.6), the exact
``tuningJobs.create`` body (section 2.4) and label sanitising. Response side: pydantic models of
the ``TuningJob`` fields we read (section 2.5), int64-as-string parsing and the explicit
``JOB_STATE_*`` table. Kept apart from the backend class so ``gemini-sweep export --format
vertex`` builds the same body the backend sends.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field

from gemini_backend.base import Example
from gemini_backend.base import JobRequest
from gemini_backend.base import JobState
from gemini_backend.errors import InvalidRequestError
from gemini_backend.limits import DatasetLimits
from gemini_backend.limits import vertex_adapter_sizes

logger = logging.getLogger(__name__)

#: The Gemini model the docs' limits (section 2.7) are written for, and a tunable one today.
DEFAULT_BASE_MODEL = "gemini-2.5-flash"
#: Label keys we set on every job so a restarted sweep can find it (``find``).
KEY_LABEL = "gemini-sweep-key"
MAX_LABEL_CHARS = 63
MAX_DISPLAY_NAME_CHARS = 128

#: Adapter size (the knob's integer) -> the v1 enum value (section 2.4).
ADAPTER_SIZES: dict[int, str] = {
    1: "ADAPTER_SIZE_ONE",
    2: "ADAPTER_SIZE_TWO",
    4: "ADAPTER_SIZE_FOUR",
    8: "ADAPTER_SIZE_EIGHT",
    16: "ADAPTER_SIZE_SIXTEEN",
    32: "ADAPTER_SIZE_THIRTY_TWO",
}

#: ``JOB_STATE_*`` -> our state (section 2.5). The aiplatform SDK's pending set (QUEUED,
#: PENDING, RUNNING, CANCELLING, UPDATING) stays in progress, and so does PAUSED: the API
#: describes it as "stopped; can be resumed", so the job is still in flight (never cancelled
#: or scored as over). EXPIRED and PARTIALLY_SUCCEEDED are terminal (``endTime`` is set).
REMOTE_STATES: dict[str, JobState] = {
    "JOB_STATE_UNSPECIFIED": JobState.QUEUED,
    "JOB_STATE_QUEUED": JobState.QUEUED,
    "JOB_STATE_PENDING": JobState.QUEUED,
    "JOB_STATE_RUNNING": JobState.RUNNING,
    "JOB_STATE_CANCELLING": JobState.RUNNING,
    "JOB_STATE_UPDATING": JobState.RUNNING,
    "JOB_STATE_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_PARTIALLY_SUCCEEDED": JobState.SUCCEEDED,
    "JOB_STATE_FAILED": JobState.FAILED,
    "JOB_STATE_EXPIRED": JobState.FAILED,
    "JOB_STATE_CANCELLED": JobState.CANCELLED,
    "JOB_STATE_PAUSED": JobState.RUNNING,
}

_LABEL_BAD_CHARS = re.compile(r"[^a-z0-9_-]+")
_LABEL_VALUE = re.compile(r"[a-z0-9_-]{1,63}")


def map_state(remote: str | None, *, job_id: str = "") -> JobState:
    """Our state for a ``JOB_STATE_*`` value; an unknown one is in progress (and logged)."""
    state = REMOTE_STATES.get(remote or "JOB_STATE_UNSPECIFIED")
    if state is None:
        logger.warning("job=%s: unknown Vertex state %r, treated as running", job_id, remote)
        return JobState.RUNNING
    return state


def parse_int64(value: object) -> int | None:
    """An int64 field: JSON strings in responses (``"12"``), numbers tolerated."""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        return None
    try:
        return int(value)
    except ValueError:
        return None


def is_gemini_model(base_model: str) -> bool:
    """Whether ``base_model`` is a first-party Gemini model (which takes no batch size).

    ``gemini-2.5-flash``, ``publishers/google/models/gemini-2.5-flash`` and a tuned model
    (``projects/.../models/...``, continuous tuning of a Gemini) count; open models such as
    ``meta/llama3_1@llama-3.1-8b`` or ``google/gemma...`` do not.
    """
    name = base_model.strip().lower()
    return name.startswith("projects/") or name.rsplit("/", 1)[-1].startswith("gemini")


def label_value(text: str, *, always_hash: bool = True) -> str:
    """``text`` under the label rules (lowercase, ``[a-z0-9_-]``, <= 63 chars), unique.

    A short hash of the original text is appended (always, or with ``always_hash=False``
    only when the text had to change), so two keys that sanitise to the same letters
    (``Sweep:1`` and ``sweep-1``) still get different labels.
    """
    max_chars = MAX_LABEL_CHARS
    if not always_hash and _LABEL_VALUE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    readable = _LABEL_BAD_CHARS.sub("-", text.lower()).strip("-")
    readable = readable[: max_chars - len(digest) - 1].rstrip("-")
    return f"{readable}-{digest}" if readable else digest


def label_key(text: str) -> str:
    """A label key: the value rules, and it must start with a letter. No hash: keys are
    names we or the user chose and must stay readable."""
    key = _LABEL_BAD_CHARS.sub("-", text.lower()).strip("-")[:MAX_LABEL_CHARS]
    return key if key[:1].isalpha() else f"k-{key}"[:MAX_LABEL_CHARS]


def job_labels(idempotency_key: str, extra: Mapping[str, str]) -> dict[str, str]:
    """The job's labels: the request's own, sanitised, plus the idempotency-key label."""
    labels = {label_key(k): label_value(str(v), always_hash=False) for k, v in extra.items()}
    labels[KEY_LABEL] = label_value(idempotency_key)
    return labels


def examples_to_jsonl(
    examples: Sequence[Example], *, system_instruction: str | None = None
) -> bytes:
    """The training (or validation) file: one ``contents`` line per example (section 2.6).

    Raises:
        InvalidRequestError: an example without input or output text. Vertex needs a user
            turn before each model turn, and an empty text part is not a documented turn;
            the example is named so the dataset can be fixed before anything is paid for.
    """
    system = (
        {"systemInstruction": {"role": "system", "parts": [{"text": system_instruction}]}}
        if system_instruction
        else {}
    )
    lines = []
    for number, example in enumerate(examples, start=1):
        if not (example.text_input or "").strip() or not example.output.strip():
            missing = "text_input" if not (example.text_input or "").strip() else "output"
            raise InvalidRequestError(
                f"dataset: example {number} of the split has an empty {missing}; Vertex "
                "tunes on user/model turns and takes no empty text part. Give every example "
                "a non-empty text_input and output (output-only examples work only with the "
                "Gemini API)")
        record = {
            **system,
            "contents": [
                {"role": "user", "parts": [{"text": example.text_input}]},
                {"role": "model", "parts": [{"text": example.output}]},
            ],
        }
        lines.append(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode("utf-8")


def tuning_job_body(
    *,
    base_model: str,
    training_dataset_uri: str,
    epochs: int,
    learning_rate_multiplier: float,
    validation_dataset_uri: str | None = None,
    adapter_size: int | None = None,
    batch_size: int | None = None,
    tuned_model_display_name: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The exact ``tuningJobs.create`` body (reference section 2.4), canonical knobs in.

    ``batchSize`` exists only in v1beta1 and only for open models, so it is refused for a
    Gemini base model. Intermediate checkpoints are always kept
    (``exportLastCheckpointOnly: false``) so the plateau epoch can be deployed later.

    Raises:
        InvalidRequestError: an adapter size the base model does not take (or Vertex has no
            enum for), or a batch size with a Gemini base model.
    """
    hyper: dict[str, Any] = {
        "epochCount": str(epochs),  # int64: the canonical JSON form is a string
        "learningRateMultiplier": float(learning_rate_multiplier),
    }
    if adapter_size is not None:
        allowed = vertex_adapter_sizes(base_model) or tuple(sorted(ADAPTER_SIZES))
        if adapter_size not in allowed or adapter_size not in ADAPTER_SIZES:
            raise InvalidRequestError(
                f"adapter_size: {adapter_size} is not an adapter size Vertex documents for "
                f"{base_model!r}; use one of {list(allowed)} in search_space.adapter_size"
            )
        hyper["adapterSize"] = ADAPTER_SIZES[adapter_size]
    if batch_size is not None:
        if is_gemini_model(base_model):
            raise InvalidRequestError(batch_size_message(base_model))
        hyper["batchSize"] = str(batch_size)
    spec: dict[str, Any] = {"trainingDatasetUri": training_dataset_uri}
    if validation_dataset_uri:
        spec["validationDatasetUri"] = validation_dataset_uri
    spec["hyperParameters"] = hyper
    spec["exportLastCheckpointOnly"] = False
    body: dict[str, Any] = {"baseModel": base_model, "supervisedTuningSpec": spec}
    if tuned_model_display_name:
        body["tunedModelDisplayName"] = tuned_model_display_name[:MAX_DISPLAY_NAME_CHARS]
    if labels:
        body["labels"] = dict(labels)
    return body


def batch_size_message(base_model: str) -> str:
    return (
        f"search_space.batch_size: Vertex AI takes a batch size only for open models, not "
        f"for the Gemini base model {base_model!r}; remove batch_size from the search space "
        "(Vertex picks it for Gemini) and tune adapter_size instead, e.g. "
        "adapter_size: {choices: [1, 4, 8, 16]}"
    )


def dataset_files(
    request: JobRequest, *, system_instruction: str | None, limits: DatasetLimits
) -> tuple[bytes, bytes]:
    """The training and validation JSONL (``b""`` without validation), checked against
    Vertex's limits before anything is uploaded.

    Raises:
        InvalidRequestError: the file is too large or the validation set too long.
    """
    train = examples_to_jsonl(request.train, system_instruction=system_instruction)
    validation = (examples_to_jsonl(request.validation, system_instruction=system_instruction)
                  if request.validation else b"")
    if limits.max_jsonl_bytes is not None and len(train) > limits.max_jsonl_bytes:
        raise InvalidRequestError(
            f"dataset: the training JSONL is {len(train):,} bytes; Vertex takes at most "
            f"{limits.max_jsonl_bytes:,}. Use fewer or shorter examples")
    cap = limits.max_validation_examples
    if cap is not None and len(request.validation) > cap:
        raise InvalidRequestError(
            f"dataset.validation_split: {len(request.validation)} validation examples; "
            f"Vertex takes at most {cap}. Lower validation_split")
    return train, validation


def generate_body(prompt: str, *, system_instruction: str | None = None) -> dict[str, Any]:
    """A one-turn ``generateContent`` request, with the tuning's system instruction."""
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
    if system_instruction:
        body["systemInstruction"] = {"parts": [{"text": system_instruction}]}
    return body


def reply_text(reply: Mapping[str, Any]) -> str:
    """The first candidate's text (all its text parts joined)."""
    candidates = reply.get("candidates") or [{}]
    parts = (candidates[0].get("content") or {}).get("parts") or []
    return "".join(str(part.get("text", "")) for part in parts)


# --- responses (extra fields ignored: the API adds fields) -----------------------------------


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class CheckpointPayload(_Response):
    checkpoint_id: str = Field(default="", alias="checkpointId")
    epoch: str | int | None = None
    step: str | int | None = None


class TunedModelPayload(_Response):
    model: str | None = None
    endpoint: str | None = None
    checkpoints: list[CheckpointPayload] = []


class ErrorPayload(_Response):
    code: int | None = None
    message: str = ""


class TuningJobPayload(_Response):
    """The ``TuningJob`` fields the backend reads (section 2.5)."""

    name: str
    state: str | None = None
    labels: dict[str, str] = {}
    experiment: str | None = None
    error: ErrorPayload | None = None
    tuned_model: TunedModelPayload | None = Field(default=None, alias="tunedModel")
    tuning_data_stats: dict[str, Any] = Field(default_factory=dict, alias="tuningDataStats")
    supervised_tuning_spec: dict[str, Any] = Field(
        default_factory=dict, alias="supervisedTuningSpec"
    )

    def _stats(self) -> dict[str, Any]:
        stats = self.tuning_data_stats.get("supervisedTuningDataStats")
        return stats if isinstance(stats, dict) else {}

    @property
    def epoch_count(self) -> int | None:
        return parse_int64(self.supervised_tuning_spec.get("hyperParameters", {}).get(
            "epochCount"))

    @property
    def tuning_step_count(self) -> int | None:
        """Total optimizer steps of the job (all epochs), once the data is processed."""
        return parse_int64(self._stats().get("tuningStepCount"))

    @property
    def billable_tokens(self) -> int | None:
        return parse_int64(self._stats().get("totalBillableTokenCount"))
