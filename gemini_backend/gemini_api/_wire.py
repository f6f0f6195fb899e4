"""The Gemini API's ``tunedModels`` wire format as pure functions: ids, bodies, status parsing.

Kept apart from the HTTP client so ``gemini-sweep export --format gemini-api`` can build the
exact create body without a session. Field by field from ``reference/tuning_api.md`` section 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from gemini_backend.base import JobRequest
from gemini_backend.base import JobState
from gemini_backend.base import JobStatus
from gemini_backend.base import LossSnapshot
from gemini_backend.errors import BackendError
from gemini_backend.errors import InvalidRequestError
from gemini_backend.errors import JobNotFound
from gemini_backend.limits import DatasetLimits

logger = logging.getLogger(__name__)

#: ``CreateTunedModelRequest.tuned_model_id`` (GAL): up to 40 characters.
TUNED_MODEL_ID_PATTERN = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
MAX_DISPLAY_NAME_CHARS = 40
_DIGEST_CHARS = 8
_ELLIPSIS = "..."

#: Remote ``TunedModel.state`` -> ours. FAILED may really be a cancel: see ``parse_status``.
STATE_MAP: Mapping[str, JobState] = {
    "CREATING": JobState.RUNNING,
    "ACTIVE": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
}
#: ``google.rpc.Code.CANCELLED``: what a cancelled long-running operation carries.
RPC_CANCELLED = 1


def tuned_model_id(idempotency_key: str) -> str:
    """A valid, deterministic ``tunedModelId`` for a key: readable slug + hash of the key.

    The hash keeps keys that slug alike (``"A_b"``, ``"a-b"``) or share a long prefix apart.
    """
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:_DIGEST_CHARS]
    slug = re.sub(r"[^a-z0-9]+", "-", idempotency_key.lower()).strip("-")
    if not slug[:1].isalpha():
        slug = f"t-{slug}".rstrip("-")
    room = 40 - _DIGEST_CHARS - 1
    slug = slug[:room].rstrip("-")
    model_id = f"{slug}-{digest}"
    if not TUNED_MODEL_ID_PATTERN.match(model_id):  # pragma: no cover - construction above
        raise InvalidRequestError("idempotency_key: cannot derive a tunedModelId from it")
    return model_id


def model_name(job_id: str) -> str:
    """``tunedModels/<id>`` for a job id (a bare id is accepted), checked against the id rule.

    Raises:
        JobNotFound: the id cannot name a tuned model, so no such job exists.
    """
    model_id = job_id.removeprefix("tunedModels/")
    if not TUNED_MODEL_ID_PATTERN.match(model_id):
        raise JobNotFound(f"{job_id!r} is not a tuned model name (tunedModels/<id>)")
    return f"tunedModels/{model_id}"


def display_name(name: str) -> str:
    """``name`` fitted to the 40-character ``displayName`` limit, keeping its distinct tail."""
    name = " ".join(name.split())
    if len(name) <= MAX_DISPLAY_NAME_CHARS:
        return name
    tail = 12  # "..., trial 117": the part that tells trials apart
    head = MAX_DISPLAY_NAME_CHARS - tail - len(_ELLIPSIS)
    return f"{name[:head].rstrip()}{_ELLIPSIS}{name[-tail:].lstrip()}"


def tuned_model_body(
    request: JobRequest,
    *,
    base_model: str | None = None,
    learning_rate: float | None = None,
) -> dict[str, Any]:
    """The exact ``tunedModels.create`` body for ``request`` (camelCase JSON).

    Args:
        request: examples (preamble already applied) and knobs.
        base_model: overrides ``request.base_model`` when given.
        learning_rate: send ``learningRate = learning_rate * multiplier`` instead of
            ``learningRateMultiplier`` (the service takes one of the two, never both).
    """
    hyperparameters: dict[str, Any] = {"epochCount": int(request.epochs)}
    if request.batch_size is not None:
        hyperparameters["batchSize"] = int(request.batch_size)
    if learning_rate is not None:
        hyperparameters["learningRate"] = learning_rate * request.learning_rate_multiplier
    else:
        hyperparameters["learningRateMultiplier"] = float(request.learning_rate_multiplier)
    examples = []
    for example in request.train:
        item: dict[str, str] = {"output": example.output}
        if example.text_input is not None:
            item["textInput"] = example.text_input
        examples.append(item)
    return {
        "displayName": display_name(request.display_name),
        "baseModel": base_model or request.base_model,
        "tuningTask": {
            "hyperparameters": hyperparameters,
            "trainingData": {"examples": {"examples": examples}},
        },
    }


def encode_body(body: Mapping[str, Any]) -> bytes:
    """The bytes sent on the wire, so the size checked is the size sent."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def check_examples(request: JobRequest, limits: DatasetLimits) -> None:
    """The seed's per-example and dataset-size rules, naming the first offending example.

    Raises:
        InvalidRequestError: too few examples, an over-long field, or mixed example types.
    """
    count = len(request.train)
    if count < limits.min_examples:
        raise InvalidRequestError(
            f"train: {count} examples; the Gemini API needs at least {limits.min_examples} "
            f"(100-500 recommended)"
        )
    has_input = request.train[0].text_input is not None
    for index, example in enumerate(request.train):
        if (example.text_input is not None) != has_input:
            raise InvalidRequestError(
                f"train[{index}]: every example must have text_input, or none may "
                "(the Gemini API takes one example type per dataset)"
            )
        _check_length(f"train[{index}].text_input", example.text_input, limits.max_input_chars)
        _check_length(f"train[{index}].output", example.output, limits.max_output_chars)


def check_size(payload: bytes, limits: DatasetLimits) -> None:
    """Reject an inline create request above the service's ~4 MB limit, stating its size."""
    limit = limits.max_inline_request_bytes
    if limit is not None and len(payload) > limit:
        raise InvalidRequestError(
            f"train: the create request would be {len(payload) / 1e6:.2f} MB with the examples "
            f"inline; the Gemini API takes at most {limit / 1e6:.0f} MB. Use fewer or shorter "
            "examples, or the Vertex backend (backend: {kind: vertex}), which reads a JSONL "
            "file of up to 1 GB"
        )


def _check_length(where: str, text: str | None, limit: int | None) -> None:
    if text is not None and limit is not None and len(text) > limit:
        raise InvalidRequestError(
            f"{where}: {len(text):,} characters; the Gemini API takes at most {limit:,}"
        )


def parse_snapshots(
    raw: object, *, epoch_count: int | None = None
) -> tuple[LossSnapshot, ...]:
    """``TuningSnapshot[]`` -> our snapshots, sorted by step, epochs 1-based.

    The recorded service output numbers epochs from 1 (the last snapshot of a 5-epoch job
    says ``epoch: 5``). Should a series start at epoch 0, it is shifted so ours stay
    1-based; ``epoch_count`` caps the result. int32 fields may come as numbers or strings.
    """
    points: list[tuple[int, int, float]] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, dict) or item.get("meanLoss") is None:
            continue
        try:
            points.append((int(item.get("step", 0)), int(item.get("epoch", 0)),
                           float(item["meanLoss"])))
        except (TypeError, ValueError):
            logger.warning("skipping a malformed tuning snapshot: %r", item)
    points.sort()
    shift = 1 if points and min(epoch for _, epoch, _ in points) == 0 else 0
    snapshots = []
    for step, epoch, loss in points:
        epoch = max(1, epoch + shift)
        if epoch_count:
            epoch = min(epoch, epoch_count)
        snapshots.append(LossSnapshot(step=step, epoch=epoch, loss=loss))
    return tuple(snapshots)


def parse_status(model: Mapping[str, Any], operation: Mapping[str, Any] | None) -> JobStatus:
    """A ``TunedModel`` (and, for a FAILED one, its operation) -> :class:`JobStatus`.

    There is no CANCELLED model state: a cancelled job's operation ends with
    ``error.code == 1``, which is how cancels are told apart from failures.
    """
    task = model.get("tuningTask") or {}
    hyper = task.get("hyperparameters") or {}
    epoch_count = _int_or_none(hyper.get("epochCount"))
    snapshots = parse_snapshots(task.get("snapshots"), epoch_count=epoch_count)
    remote = str(model.get("state") or "STATE_UNSPECIFIED")
    state = STATE_MAP.get(remote)
    if state is None:
        logger.warning("tuned model %s: unknown state %s, treated as running",
                       model.get("name"), remote)
        state = JobState.RUNNING
    if state is JobState.RUNNING and not snapshots and not task.get("startTime"):
        state = JobState.QUEUED
    error = (operation or {}).get("error") or {}
    message = None
    if state is JobState.FAILED:
        code = _int_or_none(error.get("code"))
        state = JobState.CANCELLED if code == RPC_CANCELLED else JobState.FAILED
        message = str(error.get("message") or "the service reported the tuned model FAILED")
    progress = None
    if state is JobState.SUCCEEDED:
        progress = 1.0
    elif epoch_count and snapshots:
        progress = min(1.0, snapshots[-1].epoch / epoch_count)
    return JobStatus(
        state=state,
        snapshots=snapshots,
        progress=progress,
        error_message=message,
        tuned_model=str(model.get("name")) if state is JobState.SUCCEEDED else None,
    )


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value is not None else None  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def candidate_text(reply: Mapping[str, Any]) -> str:
    """The text of a ``generateContent`` answer's first candidate.

    Raises:
        BackendError: no candidate came back (the prompt was blocked).
    """
    candidates = reply.get("candidates") or []
    if not candidates:
        blocked = (reply.get("promptFeedback") or {}).get("blockReason")
        raise BackendError(f"generateContent returned no candidate (block reason: {blocked})")
    parts = (candidates[0].get("content") or {}).get("parts") or []
    return "".join(str(part.get("text", "")) for part in parts if isinstance(part, dict))
