"""Recorded loss curves for the replay backend: the file format, its loader and its writer.

The file is JSON, a list of recorded trials::

    [{"params": {"epochs": 8, "batch_size": 4, "learning_rate_multiplier": 1.0},
      "curve": [{"step": 1, "epoch": 1, "loss": 2.3, "eval_loss": null, "time_s": 0.1}, ...],
      "duration_s": 4.0,
      "tokens_per_epoch": 3000}]

``time_s`` (seconds since the job started) is optional on every point; without it the points
are spread evenly over ``duration_s``. ``training_tokens`` (for the whole recorded run) or
``tokens_per_epoch`` are optional. ``seed`` (optional) tells apart several recordings of the
same knobs: the replay serves each job one of them, as real training varies run to run.
``test_loss`` (optional, on a point that has ``eval_loss``) is the loss on a held-out test
split that nothing selects on: the replay never serves it; benchmarks judge quality by it.
The file is validated with pydantic at this edge and turned into frozen dataclasses inside.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Field
from pydantic import FiniteFloat
from pydantic import TypeAdapter
from pydantic import ValidationError
from pydantic import model_validator

from gemini_backend.errors import InvalidRequestError

ParamValue = int | float | str


@dataclass(frozen=True, slots=True)
class ReplayPoint:
    """One recorded training step. ``time_s`` is seconds since the job started, if recorded."""

    step: int
    epoch: int
    loss: float
    eval_loss: float | None = None
    time_s: float | None = None
    test_loss: float | None = None


@dataclass(frozen=True, slots=True)
class ReplayRecord:
    """One recorded trial: the knobs it ran with, its curve and how long it took."""

    params: Mapping[str, ParamValue]
    curve: tuple[ReplayPoint, ...]
    duration_s: float
    training_tokens: int | None = None
    tokens_per_epoch: int | None = None
    seed: int | None = None

    @property
    def max_epochs(self) -> int:
        """The last epoch the curve reaches (a replayed job can ask for at most this many)."""
        return max((p.epoch for p in self.curve), default=0)

    def point_times_s(self) -> tuple[float, ...]:
        """Each point's time since the start: recorded, or spread evenly over the duration."""
        count = len(self.curve)
        return tuple(
            p.time_s if p.time_s is not None else self.duration_s * (i + 1) / count
            for i, p in enumerate(self.curve)
        )

    def epoch_tokens(self) -> float | None:
        """Training tokens per epoch, when the record says (directly or as a run total)."""
        if self.tokens_per_epoch is not None:
            return float(self.tokens_per_epoch)
        if self.training_tokens is not None and self.max_epochs:
            return self.training_tokens / self.max_epochs
        return None

    def to_dict(self) -> dict[str, Any]:
        """The record as the curves file stores it (unset optional fields left out)."""
        data: dict[str, Any] = {
            "params": dict(self.params),
            "curve": [_point_dict(p) for p in self.curve],
            "duration_s": self.duration_s,
        }
        if self.training_tokens is not None:
            data["training_tokens"] = self.training_tokens
        if self.tokens_per_epoch is not None:
            data["tokens_per_epoch"] = self.tokens_per_epoch
        if self.seed is not None:
            data["seed"] = self.seed
        return data


def _point_dict(point: ReplayPoint) -> dict[str, Any]:
    data: dict[str, Any] = {"step": point.step, "epoch": point.epoch, "loss": point.loss}
    if point.eval_loss is not None:
        data["eval_loss"] = point.eval_loss
    if point.time_s is not None:
        data["time_s"] = point.time_s
    if point.test_loss is not None:
        data["test_loss"] = point.test_loss
    return data


# --- the file's shape (pydantic, at the edge) -------------------------------------------------

_STRICT = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class _PointModel(BaseModel):
    model_config = _STRICT

    step: int = Field(ge=0)
    epoch: int = Field(ge=1)
    loss: FiniteFloat
    eval_loss: FiniteFloat | None = None
    time_s: FiniteFloat | None = Field(default=None, ge=0)
    test_loss: FiniteFloat | None = None


class _RecordModel(BaseModel):
    model_config = _STRICT

    params: dict[str, ParamValue]
    curve: list[_PointModel] = Field(min_length=1)
    duration_s: FiniteFloat = Field(ge=0)
    training_tokens: int | None = Field(default=None, ge=0)
    tokens_per_epoch: int | None = Field(default=None, ge=0)
    seed: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _RecordModel:
        multiplier = self.params.get("learning_rate_multiplier")
        if not isinstance(multiplier, (int, float)) or not multiplier > 0:
            raise ValueError("params.learning_rate_multiplier must be a number greater than 0")
        epochs = self.params.get("epochs")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError("params.epochs must be an integer of at least 1")
        for i, (before, after) in enumerate(zip(self.curve, self.curve[1:], strict=False)):
            if after.step <= before.step or after.epoch < before.epoch:
                raise ValueError(
                    f"curve.{i + 1}: steps must increase and epochs must not decrease "
                    f"(step {before.step} epoch {before.epoch} is followed by "
                    f"step {after.step} epoch {after.epoch})"
                )
            if before.time_s is not None and after.time_s is not None:
                if after.time_s < before.time_s:
                    raise ValueError(f"curve.{i + 1}: time_s must not decrease")
        has_times = {p.time_s is not None for p in self.curve}
        if len(has_times) > 1:
            raise ValueError("curve: give time_s on every point or on none")
        last_time_s = self.curve[-1].time_s
        if last_time_s is not None and last_time_s > self.duration_s:
            raise ValueError(f"curve: time_s {last_time_s} is after duration_s {self.duration_s}")
        return self


_FILE_ADAPTER = TypeAdapter(list[_RecordModel], config=_STRICT)


def load_curves(path: str | Path) -> list[ReplayRecord]:
    """Read and validate a recorded-curves file.

    Raises:
        InvalidRequestError: the file is missing, is not JSON, or a record breaks the format;
            the message names the file, the record's index and the field.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidRequestError(
            f"{path}: no such replay curves file (backend.curves is relative to the config's "
            "folder)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(
            f"{path}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    try:
        models = _FILE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidRequestError(_describe(exc, path)) from None
    if not models:
        raise InvalidRequestError(f"{path}: the file holds no recorded trials")
    return [_to_record(model) for model in models]


def _describe(error: ValidationError, path: Path) -> str:
    """One line per problem: ``file: record 3: curve.2.loss: message``."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        loc = list(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not loc:
            problems.append(f"{path}: the file must be a JSON list of recorded trials")
            continue
        where = ".".join(str(part) for part in loc[1:]) or "(the record)"
        problems.append(f"{path}: record {loc[0]}: {where}: {message}")
    return "invalid replay curves file\n  " + "\n  ".join(problems)


def _to_record(model: _RecordModel) -> ReplayRecord:
    return ReplayRecord(
        params=MappingProxyType(dict(model.params)),
        curve=tuple(
            ReplayPoint(p.step, p.epoch, p.loss, p.eval_loss, p.time_s, p.test_loss)
            for p in model.curve
        ),
        duration_s=model.duration_s,
        training_tokens=model.training_tokens,
        tokens_per_epoch=model.tokens_per_epoch,
        seed=model.seed,
    )


def write_curves_file(records: Iterable[ReplayRecord], path: str | Path) -> Path:
    """Write records as a curves file, atomically (a reader never sees half a file).

    Raises:
        InvalidRequestError: a record would not load back (checked before writing).
    """
    path = Path(path)
    payload = [record.to_dict() for record in records]
    try:
        _FILE_ADAPTER.validate_python(payload)
    except ValidationError as exc:
        raise InvalidRequestError(_describe(exc, path)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=1)
            handle.write("\n")
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; a curves file is shared data
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
