"""The fake Gemini API's state: tuned models whose training advances with the clock.

Everything is plain JSON so ``--state-file`` can keep it (and the request log) across a
restart of the fake, and so ``GET /_admin/requests`` can hand it to another process.
"""

from __future__ import annotations

import json
import math
import random
import re
import string
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ID = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")
_METADATA_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.CreateTunedModelMetadata"
_MODEL_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.TunedModel"
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ALREADY_EXISTS",
                 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 502: "UNAVAILABLE",
                 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


class ServiceError(Exception):
    """An error answer in the ``google.rpc.Status`` JSON shape."""

    def __init__(self, code: int, status: str, message: str, *, reason: str | None = None,
                 retry_delay_s: float | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message
        self.details: list[dict[str, Any]] = []
        self.headers: dict[str, str] = {}
        if reason:
            self.details.append({"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                 "reason": reason, "domain": "googleapis.com",
                                 "metadata": {"service": "generativelanguage.googleapis.com"}})
        if retry_delay_s is not None:
            self.details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                 "retryDelay": f"{retry_delay_s:g}s"})
        if field:
            self.details.append({"@type": "type.googleapis.com/google.rpc.BadRequest",
                                 "fieldViolations": [{"field": field, "description": message}]})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message,
                                 "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


@dataclass
class Fault:
    """Answer the next ``count`` matching calls with ``status``.

    ``after``: run the call first, then answer the error (an ambiguous failure: the create
    happened but the client saw a 503).
    """

    status: int
    count: int = 1
    retry_delay_s: float | None = None
    method: str | None = None
    path_contains: str | None = None
    scopes: bool = False
    after: bool = False
    field: str | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.count > 0 and (self.method is None or self.method == method)
                and (self.path_contains is None or self.path_contains in path))

    def error(self) -> ServiceError:
        if self.scopes:
            return ServiceError(403, "PERMISSION_DENIED",
                                "Request had insufficient authentication scopes.",
                                reason="ACCESS_TOKEN_SCOPE_INSUFFICIENT")
        name = _STATUS_NAMES.get(self.status, "UNKNOWN")
        if self.field is not None:
            return ServiceError(self.status, name, "Request contains an invalid argument.",
                                field=self.field)
        message = ("Resource has been exhausted (e.g. check quota)." if self.status == 429
                   else f"The service is currently unavailable ({name}).")
        return ServiceError(self.status, name, message, retry_delay_s=self.retry_delay_s)


class FakeState:
    """Tuned models, faults and the request log, behind one lock."""

    def __init__(self, *, tunable_models: tuple[str, ...], other_models: tuple[str, ...],
                 epoch_s: float, queue_s: float, clock: Any, state_file: Path | None) -> None:
        self.models = [{"name": n, "supportedGenerationMethods":
                        ["generateContent", "countTokens", "createTunedModel"]}
                       for n in tunable_models]
        self.models += [{"name": n, "supportedGenerationMethods": ["generateContent"]}
                        for n in other_models]
        self.epoch_s, self.queue_s, self.clock = epoch_s, queue_s, clock
        self.state_file = state_file
        self.lock = threading.RLock()
        self.faults: list[Fault] = []
        self.tuned: dict[str, dict[str, Any]] = {}
        self.log: list[dict[str, Any]] = []
        self.failures: list[str] = []
        if state_file is not None and state_file.exists():
            saved = json.loads(state_file.read_text())
            self.tuned, self.log, self.failures = saved["tuned"], saved["log"], saved["failures"]

    # --- bookkeeping ---------------------------------------------------------------------

    def record(self, method: str, path: str, query: dict, headers: dict, body: Any) -> None:
        with self.lock:
            self.log.append({"method": method, "path": path, "query": query,
                             "headers": headers, "body": body})
            self._save()

    def requests(self, *, method: str | None = None, path: str | None = None) -> list[dict]:
        with self.lock:
            return [dict(r) for r in self.log if (method is None or r["method"] == method)
                    and (path is None or r["path"] == path)]

    def add_fault(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def take_fault(self, method: str, path: str, *, after: bool) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.after == after and fault.matches(method, path):
                    fault.count -= 1
                    return fault
        return None

    def raise_fault(self, method: str, path: str, *, after: bool = False) -> None:
        fault = self.take_fault(method, path, after=after)
        if fault is not None:
            raise fault.error()

    def fail_next(self, count: int, message: str) -> None:
        with self.lock:
            self.failures.extend([message] * count)
            self._save()

    def reset(self) -> None:
        with self.lock:
            self.tuned.clear()
            self.log.clear()
            self.faults.clear()
            self.failures.clear()
            self._save()

    def _save(self) -> None:
        if self.state_file is None:
            return
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"tuned": self.tuned, "log": self.log,
                                   "failures": self.failures}))
        tmp.replace(self.state_file)

    @staticmethod
    def page(key: str, items: list[dict], query: dict[str, str]) -> dict[str, Any]:
        size = max(1, min(int(query.get("pageSize") or 10), 1000))
        start = int(query.get("pageToken") or 0)
        result: dict[str, Any] = {key: items[start:start + size]}
        if start + size < len(items):
            result["nextPageToken"] = str(start + size)
        return result

    # --- the API -------------------------------------------------------------------------

    def list_models(self) -> list[dict]:
        return list(self.models)

    def create(self, model_id: str | None, body: Any) -> dict[str, Any]:
        hyper, count = _validate(body, {m["name"] for m in self.models
                                        if "createTunedModel" in m["supportedGenerationMethods"]})
        with self.lock:
            if model_id is None:
                slug = re.sub(r"[^a-z0-9]+", "-", str(body.get("displayName", "model")).lower())
                model_id = f"{slug.strip('-')[:30] or 'model'}-{_random(6)}"
            if not _ID.match(model_id):
                raise ServiceError(400, "INVALID_ARGUMENT", "tuned_model_id must match "
                                   "[a-z]([a-z0-9-]{0,38}[a-z0-9])?", field="tuned_model_id")
            if model_id in self.tuned:
                raise ServiceError(409, "ALREADY_EXISTS",
                                   f"Tuned model tunedModels/{model_id} already exists.")
            self.tuned[model_id] = {
                "id": model_id, "displayName": body.get("displayName", ""),
                "baseModel": body["baseModel"], "hyper": hyper, "examples": count,
                "created": self.clock(), "op": _random(12), "cancelled": None,
                "fail": self.failures.pop(0) if self.failures else None}
            self._save()
            return self._operation_view(self.tuned[model_id])

    def get(self, model_id: str) -> dict[str, Any]:
        return self._model_view(self._find(model_id))

    def list_tuned(self) -> list[dict]:
        with self.lock:
            return [self._model_view(r) for r in self.tuned.values()]

    def delete(self, model_id: str) -> dict:
        with self.lock:
            self._find(model_id)
            del self.tuned[model_id]
            self._save()
        return {}

    def operations(self, model_id: str) -> list[dict]:
        return [self._operation_view(self._find(model_id))]

    def operation(self, model_id: str, op: str) -> dict[str, Any]:
        record = self._find(model_id)
        if record["op"] != op:
            raise ServiceError(404, "NOT_FOUND", f"Operation {op} not found.")
        return self._operation_view(record)

    def cancel(self, model_id: str, op: str, *, version: str) -> dict:
        if version != "v1":  # like the real v1beta: no cancel rule for tuned models
            raise ServiceError(404, "NOT_FOUND", "The requested URL was not found.")
        record = self._find(model_id)
        with self.lock:
            if record["op"] == op and self._progress(record)[1] == "CREATING":
                record["cancelled"] = self.clock()
                self._save()
        return {}

    def generate(self, model_id: str, body: Any) -> dict[str, Any]:
        record = self._find(model_id)
        if self._progress(record)[1] != "ACTIVE":
            raise ServiceError(400, "FAILED_PRECONDITION",
                               f"Tuned model tunedModels/{model_id} is not ACTIVE.")
        prompt = body["contents"][-1]["parts"][0]["text"].strip()
        answer = str(int(prompt) + 1) if re.fullmatch(r"-?\d+", prompt) else prompt.upper()
        return {"candidates": [{"content": {"parts": [{"text": answer}], "role": "model"},
                                "finishReason": "STOP", "index": 0}]}

    # --- simulated training --------------------------------------------------------------

    def _find(self, model_id: str) -> dict[str, Any]:
        with self.lock:
            record = self.tuned.get(model_id)
        if record is None:
            raise ServiceError(404, "NOT_FOUND", f"Tuned model tunedModels/{model_id} "
                               "does not exist.")
        return record

    def _shape(self, record: dict) -> tuple[int, int]:
        steps_per_epoch = math.ceil(record["examples"] / record["hyper"].get("batchSize", 4))
        return steps_per_epoch, steps_per_epoch * record["hyper"].get("epochCount", 5)

    def _progress(self, record: dict) -> tuple[int, str, float | None]:
        """(completed steps, remote state, seconds into training or None if queued)."""
        per_epoch, total = self._shape(record)
        now = record["cancelled"] if record["cancelled"] is not None else self.clock()
        elapsed = now - record["created"] - self.queue_s
        if elapsed < 0:
            return 0, ("FAILED" if record["cancelled"] is not None else "CREATING"), None
        steps = min(total, int(elapsed / (self.epoch_s / per_epoch)))
        if record["fail"] and steps >= max(1, total // 2):
            return max(1, total // 2), "FAILED", elapsed
        if record["cancelled"] is not None:
            return steps, "FAILED", elapsed
        return steps, ("ACTIVE" if steps >= total else "CREATING"), elapsed

    def _snapshots(self, record: dict, steps: int) -> list[dict[str, Any]]:
        per_epoch, _ = self._shape(record)
        hyper = record["hyper"]
        rate = hyper.get("learningRateMultiplier", hyper.get("learningRate", 0.001) / 0.001)
        return [{"step": s, "epoch": (s - 1) // per_epoch + 1,
                 "meanLoss": round(0.2 + 2.3 * math.exp(-0.6 * rate * s / per_epoch)
                                   + 0.01 * math.sin(s), 6),
                 "computeTime": f"2026-01-01T00:{s // 60 % 60:02d}:{s % 60:02d}Z"}
                for s in range(1, steps + 1)]

    def _model_view(self, record: dict) -> dict[str, Any]:
        steps, state, elapsed = self._progress(record)
        task: dict[str, Any] = {"hyperparameters": dict(record["hyper"]),
                                "snapshots": self._snapshots(record, steps)}
        if elapsed is not None:
            task["startTime"] = "2026-01-01T00:00:00Z"
        if state == "ACTIVE":
            task["completeTime"] = "2026-01-01T01:00:00Z"
        return {"name": f"tunedModels/{record['id']}", "displayName": record["displayName"],
                "baseModel": record["baseModel"], "state": state, "tuningTask": task,
                "createTime": "2026-01-01T00:00:00Z"}

    def _operation_view(self, record: dict) -> dict[str, Any]:
        steps, state, _ = self._progress(record)
        _, total = self._shape(record)
        name = f"tunedModels/{record['id']}"
        operation: dict[str, Any] = {"name": f"{name}/operations/{record['op']}", "metadata": {
            "@type": _METADATA_TYPE, "totalSteps": total, "completedSteps": steps,
            "completedPercent": round(100.0 * steps / total, 2), "tunedModel": name,
            "snapshots": self._snapshots(record, steps)}}
        if state == "ACTIVE":
            operation["done"] = True
            operation["response"] = {"@type": _MODEL_TYPE, **self._model_view(record)}
        elif state == "FAILED":
            operation["done"] = True
            cancelled = record["cancelled"] is not None
            operation["error"] = {"code": 1 if cancelled else 13,
                                  "message": "Operation cancelled." if cancelled
                                  else record["fail"]}
        return operation


def _validate(body: Any, tunable: set[str]) -> tuple[dict[str, Any], int]:
    if not isinstance(body, dict):
        raise ServiceError(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
    if body.get("baseModel") not in tunable:
        raise ServiceError(404, "NOT_FOUND", f"{body.get('baseModel')} is not found for API "
                           "version v1beta, or is not supported for createTunedModel.")
    if len(str(body.get("displayName", ""))) > 40:
        raise ServiceError(400, "INVALID_ARGUMENT", "display_name is longer than 40 characters",
                           field="tuned_model.display_name")
    task = body.get("tuningTask") or {}
    hyper = dict(task.get("hyperparameters") or {})
    if "learningRate" in hyper and "learningRateMultiplier" in hyper:
        raise ServiceError(400, "INVALID_ARGUMENT", "only one of learning_rate and "
                           "learning_rate_multiplier may be set",
                           field="tuned_model.tuning_task.hyperparameters")
    examples = ((task.get("trainingData") or {}).get("examples") or {}).get("examples") or []
    if not examples or any("output" not in e for e in examples):
        raise ServiceError(400, "INVALID_ARGUMENT", "training examples must each have an output",
                           field="tuned_model.tuning_task.training_data")
    return hyper, len(examples)


def _random(length: int) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=length))
