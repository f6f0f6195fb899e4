"""Every number of the sweep config finite and within what the services and the machine take.

A number that passed the schema once still crashed a sweep (``high: .inf`` overflows numpy,
``choices: ["1e309"]`` breaks ``int()``), hung it (``poll_interval_s: .inf`` submits a job and
never polls it) or cost money (``batch_size: 1000000000`` was submitted). The schema refuses
them here, so ``validate`` and ``run`` agree and nothing is created first.

The services document no maximum for epochs or batch size beyond their int32 fields, nor a
concurrent-job quota (reference/tuning_api.md 1.9, 2.7: "UNCONFIRMED"); the caps below are
this tool's, set far above any useful value so that only a typo meets them.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError
from pydantic_core import InitErrorDetails
from pydantic_core import PydanticCustomError

#: Epochs per job: 20x the default of 5.
MAX_EPOCHS = 100
#: Examples per step; larger than any dataset the Gemini API takes inline (4 MB).
MAX_BATCH_SIZE = 1024
#: The learning-rate multiplier: 10,000x either way of the default 1.0 already trains
#: nothing or diverges.
MIN_MULTIPLIER = 1e-4
MAX_MULTIPLIER = 1e4
#: Seconds between two polls of a job: fast enough for the local and replay backends,
#: never slower than an hour (a sweep that sleeps longer looks hung).
MIN_POLL_INTERVAL_S = 0.01
MAX_POLL_INTERVAL_S = 3600.0
#: Seconds one HTTP request may take.
MAX_TIMEOUT_S = 3600.0
#: Jobs in flight from one worker: each is a thread; the local backend trains them all on
#: this machine.
MAX_CONCURRENCY = {"local": 16}
DEFAULT_MAX_CONCURRENCY = 64
#: The most trials one sweep runs, and tokens its budget counts (a float past 1e308 overflows).
MAX_TRIALS = 100_000
MAX_TOKENS = 10**15

#: Backend fields checked by name, whatever backend declares them: (lowest, highest).
BACKEND_FIELD_RANGES: dict[str, tuple[float, float]] = {
    "poll_interval_s": (MIN_POLL_INTERVAL_S, MAX_POLL_INTERVAL_S),
    "max_poll_interval_s": (MIN_POLL_INTERVAL_S, MAX_POLL_INTERVAL_S),
    "timeout_s": (0.1, MAX_TIMEOUT_S),
    # A learning rate (the default is 0.001) times the multiplier's own range stays sane.
    "use_learning_rate": (1e-7, 1.0),
    "base_learning_rate": (1e-7, 1.0),
    "default_batch_size": (1, MAX_BATCH_SIZE),
}


def max_concurrency(backend_kind: str) -> int:
    return MAX_CONCURRENCY.get(backend_kind, DEFAULT_MAX_CONCURRENCY)


def problem(loc: tuple[Any, ...], message: str, value: Any = None) -> InitErrorDetails:
    """One schema problem at ``loc`` (relative to the model being validated)."""
    return InitErrorDetails(type=PydanticCustomError("number", message), loc=loc, input=value)


def raise_problems(title: str, problems: list[InitErrorDetails]) -> None:
    if problems:
        raise ValidationError.from_exception_data(title, problems)


def number_problems(model: type[BaseModel], data: Any,
                    ranges: Mapping[str, tuple[float, float]] = {}) -> list[InitErrorDetails]:
    """Problems with the raw values of ``model``'s numeric fields in ``data``: ``true`` or
    ``false`` where a number belongs (pydantic would read 1 or 0), a value that is not finite
    (``.inf``, ``.nan``, ``"1e309"``), or one outside ``ranges`` (by field name)."""
    if not isinstance(data, Mapping):
        return []
    problems = []
    for key, raw in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None or not _takes_numbers(field.annotation):
            continue
        if isinstance(raw, bool):
            problems.append(problem((key,), "must be a number, not true or false", raw))
            continue
        value = _as_number(raw)
        if value is None:
            continue  # not a number: pydantic says what it expected
        if not math.isfinite(value):
            problems.append(problem((key,), "must be a finite number (not .inf, .nan or "
                                    "beyond 1e308)", raw))
        elif key in ranges and not ranges[key][0] <= value <= ranges[key][1]:
            low, high = ranges[key]
            problems.append(problem((key,), f"must be between {low:g} and {high:g}, "
                                    f"got {value:g}", raw))
    return problems


def _as_number(raw: Any) -> float | None:
    if isinstance(raw, (int, float)):
        try:
            return float(raw)
        except OverflowError:  # an int past 1e308
            return math.inf
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return None
    return None


def _takes_numbers(annotation: Any) -> bool:
    """An int or float field (possibly optional or in a union) that does not take bools."""
    kinds = _leaf_types(annotation)
    return bool(kinds & {int, float}) and bool not in kinds


def _leaf_types(annotation: Any) -> set[Any]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    if origin is typing.Union or isinstance(annotation, types.UnionType):
        return set().union(*(_leaf_types(arg) for arg in typing.get_args(annotation)))
    return {annotation}


def whole_number_problems(values: list[Any], *, what: str, low: int,
                          high: int) -> str | None:
    """Why a knob's values (``epochs``, ``batch_size``) are not whole numbers in
    ``[low, high]``; None when they are."""
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{what} must be whole numbers, got {_shown(value)}{_text_hint(value)}"
        if not _is_finite(value) or value != int(value):
            return f"{what} must be whole numbers, got {_shown(value)}"
        if not low <= value <= high:
            return f"{what} must be between {low} and {high}, got {_shown(int(value))}"
    return None


def multiplier_problems(values: list[Any]) -> str | None:
    """Why learning-rate multipliers are not finite numbers in the allowed range."""
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"the multiplier must be a number, got {_shown(value)}{_text_hint(value)}"
        if not _is_finite(value) or not MIN_MULTIPLIER <= value <= MAX_MULTIPLIER:
            return (f"the multiplier must be between {MIN_MULTIPLIER:g} and "
                    f"{MAX_MULTIPLIER:g}, got {_shown(value)}")
    return None


def _is_finite(value: int | float) -> bool:
    # math.isfinite converts to float, which overflows past 1e308 for an int.
    return isinstance(value, int) or math.isfinite(value)


def _shown(value: Any) -> str:
    """The value as the message quotes it: never a whole huge string."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _text_hint(value: Any) -> str:
    if isinstance(value, str) and _as_number(value) is not None:
        return (" (text, not a number: YAML reads 1e-3 and 1.0e3 as text; write 0.001, "
                "1.0e-3 or 1.0e+3, without quotes)")
    return ""


__all__ = [
    "BACKEND_FIELD_RANGES", "DEFAULT_MAX_CONCURRENCY", "MAX_BATCH_SIZE", "MAX_EPOCHS",
    "MAX_POLL_INTERVAL_S", "MAX_TOKENS", "MAX_TRIALS", "MIN_POLL_INTERVAL_S", "max_concurrency",
    "multiplier_problems", "number_problems", "problem", "raise_problems",
    "whole_number_problems",
]
