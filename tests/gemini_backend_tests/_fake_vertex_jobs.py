"""The simulated tuning jobs behind :mod:`tests.gemini_backend_tests.fake_vertex`.

A job's state and curve are a pure function of simulated time since it was created, so a
test either lets real time run (fast timings) or freezes the clock and advances it.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Any

#: "About supervised fine-tuning for Gemini models": the sizes each model takes.
MODEL_ADAPTER_SIZES = {
    model: {"ADAPTER_SIZE_ONE", "ADAPTER_SIZE_TWO", "ADAPTER_SIZE_FOUR", "ADAPTER_SIZE_EIGHT",
            "ADAPTER_SIZE_SIXTEEN"}
    for model in ("gemini-2.5-flash", "gemini-2.5-flash-lite")}
ADAPTER_SIZES = {"ADAPTER_SIZE_ONE", "ADAPTER_SIZE_TWO", "ADAPTER_SIZE_FOUR",
                 "ADAPTER_SIZE_EIGHT", "ADAPTER_SIZE_SIXTEEN", "ADAPTER_SIZE_THIRTY_TWO"}
_LABEL = re.compile(r"^[a-z0-9_-]{0,63}$")
TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Timing:
    """Simulated seconds per phase. Defaults finish a small job in well under a second."""

    queued_s: float = 0.05
    pending_s: float = 0.05
    step_s: float = 0.01
    cancelling_s: float = 0.05


STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}

class FakeError(Exception):
    """An error answer: a ``google.rpc.Status`` body."""

    def __init__(self, code: int, message: str, *, retry_after_s: float | None = None,
                 status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after_s = code, message, retry_after_s
        self.status = status or STATUS_NAMES.get(code, "UNKNOWN")

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message,
                                 "status": self.status}
        if self.retry_after_s is not None:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                 "retryDelay": f"{self.retry_after_s}s"}]
        return {"error": error}


def _error(code: int, message: str) -> FakeError:
    return FakeError(code, message)


def validate_create(body: Any, *, is_object: Callable[[str], bytes | None]) -> tuple[str, str]:
    """Check a create body as Vertex would; ``(train_uri, validation_uri or "")``."""
    if not isinstance(body, dict) or not body.get("baseModel"):
        raise _error(400, "baseModel is required")
    spec = body.get("supervisedTuningSpec") or {}
    hyper = spec.get("hyperParameters") or {}
    train_uri, val_uri = spec.get("trainingDatasetUri", ""), spec.get("validationDatasetUri", "")
    for uri in filter(None, (train_uri, val_uri)):
        data = is_object(uri)
        if data is None:
            raise _error(400, f"Dataset {uri} does not exist or is not readable")
        _check_jsonl(uri, data)
    if not train_uri:
        raise _error(400, "supervisedTuningSpec.trainingDatasetUri is required")
    try:
        if int(hyper.get("epochCount", "1")) < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise _error(400, "epochCount must be a positive integer") from None
    if "batchSize" in hyper and body["baseModel"].startswith("gemini"):
        raise _error(400, "batch_size is only supported for open source models")
    if "adapterSize" in hyper and hyper["adapterSize"] not in ADAPTER_SIZES:
        raise _error(400, f"Invalid adapterSize {hyper['adapterSize']}")
    model_sizes = MODEL_ADAPTER_SIZES.get(body["baseModel"].rsplit("/", 1)[-1])
    if "adapterSize" in hyper and model_sizes and hyper["adapterSize"] not in model_sizes:
        raise _error(400, f"adapterSize {hyper['adapterSize']} is not supported for "
                     f"{body['baseModel']}")
    for key, value in (body.get("labels") or {}).items():
        if not (_LABEL.match(key) and key[:1].isalpha() and _LABEL.match(str(value))):
            raise _error(400, f"Invalid label {key}={value}")
    return train_uri, val_uri


def _check_jsonl(uri: str, data: bytes) -> None:
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        record = json.loads(line)
        roles = [c["role"] for c in record["contents"]]
        if roles[-1] != "model" or not set(roles) <= {"user", "model"}:
            raise _error(400, f"{uri} line {number}: contents must end with a model turn")
        # The docs show text parts with text and say nothing of empty ones: refuse them.
        for turn in record["contents"]:
            if any(not str(part.get("text", "")).strip() for part in turn.get("parts") or [{}]):
                raise _error(400, f"{uri} line {number}: a {turn['role']} turn has an empty "
                             "text part")


@dataclass
class FakeJob:
    job_id: str
    name: str
    body: dict[str, Any]
    created_at: float
    n_train: int
    n_validation: int
    epochs: int
    learning_rate_multiplier: float
    steps_per_epoch: int
    billable_tokens: int
    fail_message: str | None = None
    fail_after_step: int | None = None
    cancel_at: float | None = None
    pause: tuple[float, float] | None = None  # (from, until) in simulated seconds
    # Ids Vertex picks: nothing documents how they relate to the job's or to each other.
    experiment_id: str = field(default_factory=lambda: f"tuning-exp-{uuid.uuid4().hex[:10]}")
    run_id: str = field(default_factory=lambda: f"run-{uuid.uuid4().hex[:12]}")
    tb_experiment_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    tb_run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])

    @classmethod
    def create(cls, *, job_id: str, parent: str, body: dict[str, Any], created_at: float,
               train: bytes, validation: bytes | None, batch_size: int,
               fail: tuple[str, int] | None, steps_per_epoch: int | None = None) -> FakeJob:
        hyper = body["supervisedTuningSpec"].get("hyperParameters") or {}
        n_train = len(train.splitlines())
        epochs = int(hyper.get("epochCount", "3"))
        per_epoch = steps_per_epoch or math.ceil(n_train / batch_size)
        return cls(
            job_id=job_id, name=f"{parent}/tuningJobs/{job_id}", body=body,
            created_at=created_at, n_train=n_train,
            n_validation=len(validation.splitlines()) if validation else 0, epochs=epochs,
            learning_rate_multiplier=float(hyper.get("learningRateMultiplier", 1.0)),
            steps_per_epoch=per_epoch, billable_tokens=len(train) // 4 * epochs,
            fail_message=fail[0] if fail else None,
            fail_after_step=fail[1] * per_epoch if fail else None,
        )

    # Resource names derived from the job ----------------------------------------------------

    @property
    def _parent(self) -> str:
        return self.name.rsplit("/tuningJobs/", 1)[0]

    @property
    def experiment(self) -> str:
        return f"{self._parent}/metadataStores/default/contexts/{self.experiment_id}"

    @property
    def run_context(self) -> str:
        return f"{self._parent}/metadataStores/default/contexts/{self.run_id}"

    @property
    def tb_run_artifact(self) -> str:
        """The artifact linking the experiment run to its TensorBoard run (SDK: ``-tb-run``)."""
        return f"{self._parent}/metadataStores/default/artifacts/{self.run_id}-tb-run"

    @property
    def tensorboard(self) -> str:
        return f"{self._parent}/tensorboards/77"

    @property
    def tensorboard_run(self) -> str:
        return f"{self.tensorboard}/experiments/{self.tb_experiment_id}/runs/{self.tb_run_id}"

    @property
    def endpoint(self) -> str:
        return f"{self._parent}/endpoints/{9000 + int(self.job_id)}"

    # Simulated progress ----------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def _paused_s(self, now: float) -> float:
        if self.pause is None:
            return 0.0
        start, end = self.pause
        return min(max(0.0, now - start), end - start)

    def _steps_at(self, now: float, timing: Timing) -> int:
        running_s = (now - self.created_at - timing.queued_s - timing.pending_s
                     - self._paused_s(now))
        return max(0, min(self.total_steps, math.floor(running_s / timing.step_s + 1e-9)))

    def state_at(self, now: float, timing: Timing) -> tuple[str, int]:
        """``(JOB_STATE_*, steps done)`` at simulated time ``now``."""
        if self.cancel_at is not None and now >= self.cancel_at:
            steps = self._steps_at(self.cancel_at, timing)
            done = now >= self.cancel_at + timing.cancelling_s
            return ("JOB_STATE_CANCELLED" if done else "JOB_STATE_CANCELLING"), steps
        age_s = now - self.created_at
        if age_s < timing.queued_s:
            return "JOB_STATE_QUEUED", 0
        if age_s < timing.queued_s + timing.pending_s:
            return "JOB_STATE_PENDING", 0
        steps = self._steps_at(now, timing)
        if self.pause is not None and self.pause[0] <= now < self.pause[1]:
            return "JOB_STATE_PAUSED", steps  # "stopped; can be resumed": it resumes
        if self.fail_after_step is not None and steps >= self.fail_after_step:
            return "JOB_STATE_FAILED", self.fail_after_step
        if steps >= self.total_steps:
            return "JOB_STATE_SUCCEEDED", steps
        return "JOB_STATE_RUNNING", steps

    @property
    def checkpoint_epochs(self) -> list[int]:
        """The tuning-checkpoints page: up to 10 epochs about one checkpoint each; beyond,
        about ten evenly spread plus the final one (12 epochs: 1 2 4 5 6 7 8 10 11 12)."""
        if self.epochs <= 10:
            return list(range(1, self.epochs + 1))
        spread = {max(1, round(i * self.epochs / 10)) for i in range(1, 11)}
        return sorted(spread | {self.epochs})

    def epoch_of(self, step: int) -> int:
        return (step - 1) // self.steps_per_epoch + 1

    def has_started(self, now: float, timing: Timing) -> bool:
        return self.state_at(now, timing)[0] not in ("JOB_STATE_QUEUED", "JOB_STATE_PENDING")

    def train_loss(self, step: int) -> float:
        progress = self.learning_rate_multiplier * step / self.steps_per_epoch
        return 0.3 + 1.7 * math.exp(-1.1 * progress) + 0.01 * math.sin(step)

    def eval_loss(self, epoch: int) -> float:
        return 0.38 + 1.6 * math.exp(-1.1 * self.learning_rate_multiplier * epoch) \
            + 0.015 * (epoch - 1) ** 2

    def series(self, now: float, timing: Timing) -> dict[str, list[tuple[int, float]]]:
        """The TensorBoard scalars written so far (the eval series only with validation)."""
        steps = self.state_at(now, timing)[1]
        train = [(s, self.train_loss(s)) for s in range(1, steps + 1)]
        evals = [(e * self.steps_per_epoch, self.eval_loss(e)) for e in range(1, self.epochs + 1)
                 if e * self.steps_per_epoch <= steps] if self.n_validation else []
        return {"/train_total_loss": train, "/eval_total_loss": evals}

    def resource(self, now: float, timing: Timing) -> dict[str, Any]:
        """The ``TuningJob`` JSON at ``now``: int64 fields as strings, as the real API."""
        state, steps = self.state_at(now, timing)
        spec = json.loads(json.dumps(self.body["supervisedTuningSpec"]))
        spec.setdefault("hyperParameters", {})["epochCount"] = str(self.epochs)
        job: dict[str, Any] = {
            "name": self.name, "baseModel": self.body["baseModel"],
            "tunedModelDisplayName": self.body.get("tunedModelDisplayName", f"job-{self.job_id}"),
            "supervisedTuningSpec": spec, "labels": self.body.get("labels", {}),
            "state": state, "createTime": "2026-11-23T10:00:00Z",
        }
        if state not in ("JOB_STATE_QUEUED", "JOB_STATE_PENDING") or steps:
            job["experiment"] = self.experiment
            job["tuningDataStats"] = {"supervisedTuningDataStats": {
                "tuningDatasetExampleCount": str(self.n_train),
                "totalBillableTokenCount": str(self.billable_tokens),
                "tuningStepCount": str(self.total_steps)}}
        if state == "JOB_STATE_SUCCEEDED":
            job["tunedModel"] = {
                "model": f"{self._parent}/models/{5000 + int(self.job_id)}@1",
                "endpoint": self.endpoint,
                "checkpoints": [
                    {"checkpointId": str(e), "epoch": str(e),
                     "step": str(e * self.steps_per_epoch), "endpoint": self.endpoint}
                    for e in self.checkpoint_epochs],
            }
        if state == "JOB_STATE_FAILED":
            job["error"] = {"code": 13, "message": self.fail_message or "failed"}
        if state == "JOB_STATE_CANCELLED":
            job["error"] = {"code": 1, "message": "CANCELED"}
        return job
