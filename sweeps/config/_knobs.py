"""The ``search_space`` part of the sweep config: knob shapes and the search space model.

Split from :mod:`sweeps.config.schema` (which re-exports every name here) to keep modules small.
"""

from __future__ import annotations

import difflib
from typing import Annotated
from typing import Any
from typing import Literal

from pydantic import BaseModel
from pydantic import ConfigDict
from pydantic import Discriminator
from pydantic import Field
from pydantic import Tag
from pydantic import field_validator
from pydantic import model_validator
from pydantic_core import PydanticCustomError

from gemini_backend import CANONICAL_KNOBS
from sweeps.config._numbers import MAX_BATCH_SIZE
from sweeps.config._numbers import MAX_EPOCHS
from sweeps.config._numbers import multiplier_problems
from sweeps.config._numbers import number_problems
from sweeps.config._numbers import raise_problems
from sweeps.config._numbers import whole_number_problems

STRICT = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True,
                    allow_inf_nan=False)


class Strict(BaseModel):
    """Base of the user-facing config models: unknown keys are errors, inputs never echoed,
    numbers finite and never ``true``/``false`` (which pydantic would read as 1 and 0)."""

    model_config = STRICT

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        raise_problems(cls.__name__, number_problems(cls, data))
        return data


# --- search space -------------------------------------------------------------------------


class Fixed(Strict):
    """A knob held at one value: ``{value: 4}``."""

    value: int | float | str


class Choices(Strict):
    """A knob chosen from a list: ``{choices: [2, 4, 8]}``."""

    choices: list[int | float | str] = Field(min_length=1)

    @field_validator("choices", mode="before")
    @classmethod
    def _no_bools(cls, choices: Any) -> Any:
        # pydantic would read true as 1 before any knob's own check could see it.
        if isinstance(choices, list) and any(isinstance(c, bool) for c in choices):
            raise ValueError("choices must be numbers or names, not true or false")
        return choices


class IntRange(Strict):
    """An integer knob in ``[low, high]``: ``{low: 1, high: 10}``."""

    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self


class FloatRange(Strict):
    """A real knob in ``[low, high]``, optionally log-scaled:
    ``{low: 0.1, high: 10, log: true}``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not be greater than high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scaled range needs low > 0")
        return self


# The knob union's tags appear in pydantic's error paths, so none may equal a YAML key (a tag
# "choices" hid the real key `choices` in 'batch_size.choices.0').
_FIXED, _CHOICES, _RANGE = "fixed-knob", "choices-knob", "range-knob"
_FROM_CURVE = "from-curve-knob"
KNOB_TAGS = (_FIXED, _CHOICES, _RANGE, _FROM_CURVE)


class FromCurve(Strict):
    """``epochs: {mode: from_curve, max: 8}``: every trial runs ``max`` epochs and its epoch is
    chosen afterwards from its curve (the plateau epoch); see :mod:`sweeps.policy.fidelity`."""

    mode: Literal["from_curve"]
    max: int = Field(ge=1, description="the epochs every trial runs")
    patience: int | None = Field(
        default=None, ge=1, description="cancel a job once its loss has gone this many "
        "epochs without a new best; the trial is scored on the epochs it ran")


def _knob_shape(value: Any) -> str:
    # Instances arrive here when pydantic serializes a model; dicts when it validates YAML.
    if isinstance(value, Fixed):
        return _FIXED
    if isinstance(value, Choices):
        return _CHOICES
    if isinstance(value, FromCurve):
        return _FROM_CURVE
    if isinstance(value, dict):
        if "mode" in value:
            return _FROM_CURVE
        if "value" in value:
            return _FIXED
        if "choices" in value:
            return _CHOICES
    return _RANGE


IntKnob = Annotated[
    Annotated[Fixed, Tag(_FIXED)] | Annotated[Choices, Tag(_CHOICES)]
    | Annotated[IntRange, Tag(_RANGE)],
    Discriminator(_knob_shape),
]
FloatKnob = Annotated[
    Annotated[Fixed, Tag(_FIXED)] | Annotated[Choices, Tag(_CHOICES)]
    | Annotated[FloatRange, Tag(_RANGE)],
    Discriminator(_knob_shape),
]
#: ``epochs`` also takes the from_curve mode (epochs as fidelity).
EpochsKnob = Annotated[
    Annotated[Fixed, Tag(_FIXED)] | Annotated[Choices, Tag(_CHOICES)]
    | Annotated[IntRange, Tag(_RANGE)] | Annotated[FromCurve, Tag(_FROM_CURVE)],
    Discriminator(_knob_shape),
]
KnobSpec = Fixed | Choices | IntRange | FloatRange | FromCurve


class SearchSpace(BaseModel):
    """What Optuna searches. A knob left out is held at the seed's default (epochs 5,
    multiplier 1.0) or, for ``batch_size``, not sent so the service picks it.

    Backend-specific knobs (Vertex ``adapter_size``) are extra keys of the same shapes.
    """

    model_config = ConfigDict(extra="allow", frozen=True, hide_input_in_errors=True,
                              allow_inf_nan=False)
    __pydantic_extra__: dict[str, IntKnob]  # type: ignore[assignment]

    epochs: EpochsKnob = Fixed(value=5)
    batch_size: IntKnob | None = None
    learning_rate_multiplier: FloatKnob = Fixed(value=1.0)

    @model_validator(mode="before")
    @classmethod
    def _no_misspelt_knobs(cls, data: Any) -> Any:
        # Extra keys are backend knobs (Vertex adapter_size), so a typo such as `epoch:` would
        # otherwise load as a new knob while `epochs` silently stays at its default.
        if isinstance(data, dict):
            for key in data:
                if key in CANONICAL_KNOBS:
                    continue
                close = difflib.get_close_matches(str(key), CANONICAL_KNOBS, n=1, cutoff=0.8)
                if close:
                    raise PydanticCustomError(
                        "misspelt_knob",
                        "unknown knob; did you mean '{suggestion}'?",
                        {"key": key, "suggestion": close[0]},
                    )
        return data

    @field_validator("epochs")
    @classmethod
    def _whole_epochs(cls, knob: KnobSpec) -> KnobSpec:
        _refuse(whole_number_problems(_values(knob), what="epoch counts", low=1,
                                      high=MAX_EPOCHS))
        return _as_whole(knob)

    @field_validator("batch_size")
    @classmethod
    def _whole_batch(cls, knob: KnobSpec | None) -> KnobSpec | None:
        if knob is not None:
            _refuse(whole_number_problems(_values(knob), what="batch sizes", low=1,
                                          high=MAX_BATCH_SIZE))
        return _as_whole(knob) if knob is not None else None

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _multiplier_in_range(cls, knob: KnobSpec) -> KnobSpec:
        _refuse(multiplier_problems(_values(knob)))
        return knob

    @model_validator(mode="after")
    def _backend_knobs_not_bools(self) -> SearchSpace:
        # Backend knobs (Vertex adapter_size) may be words; a bool is never meant.
        for name, knob in (self.__pydantic_extra__ or {}).items():
            if any(isinstance(value, bool) for value in _values(knob)):
                raise PydanticCustomError(
                    "bool_knob", "must be numbers or names, not true or false", {"key": name})
        return self

    def knobs(self) -> dict[str, KnobSpec]:
        """Every knob that is set, canonical ones first."""
        knobs: dict[str, KnobSpec] = {
            "epochs": self.epochs,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }
        if self.batch_size is not None:
            knobs["batch_size"] = self.batch_size
        knobs.update(self.__pydantic_extra__ or {})
        return knobs


def _values(knob: KnobSpec) -> list[Any]:
    """Every value a knob names: its value, its choices, or its bounds."""
    if isinstance(knob, Fixed):
        return [knob.value]
    if isinstance(knob, Choices):
        return list(knob.choices)
    if isinstance(knob, FromCurve):
        return [knob.max]
    return [knob.low, knob.high]


def _as_whole(knob: KnobSpec) -> KnobSpec:
    """A whole-number knob written ``4.0`` sends 4: services take int32 fields."""
    if isinstance(knob, Fixed):
        return Fixed(value=int(knob.value))
    if isinstance(knob, Choices):
        return Choices(choices=list(dict.fromkeys(int(c) for c in knob.choices)))
    return knob


def _refuse(reason: str | None) -> None:
    if reason is not None:
        raise ValueError(reason)
