"""Per-service dataset limits, as data: the dataset validator reads these, no scattered ifs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DatasetLimits:
    """What a service accepts. ``None`` means no limit is known.

    Args:
        min_examples: fewer is an error (the seed: at least 20).
        recommended_min_examples: fewer is a warning (the seed recommends 100-500).
        max_input_chars: per example ``text_input`` length.
        max_output_chars: per example ``output`` length.
        max_inline_request_bytes: the serialized create request with inline examples.
        max_jsonl_bytes: the uploaded JSONL training file.
        max_validation_examples: examples in the validation file.
        requires_text_input: every example needs a non-empty input (a user turn).
    """

    min_examples: int = 20
    recommended_min_examples: int = 100
    max_input_chars: int | None = 40_000
    max_output_chars: int | None = 5_000
    max_inline_request_bytes: int | None = None
    max_jsonl_bytes: int | None = None
    max_validation_examples: int | None = None
    requires_text_input: bool = False


LIMITS: dict[str, DatasetLimits] = {
    # The local backend keeps the seed's limits so a dataset that passes here passes the
    # services too.
    "local": DatasetLimits(),
    # Seed: 40,000 / 5,000 characters per example, at least 20 examples, a 4 MB request.
    "gemini-api": DatasetLimits(max_inline_request_bytes=4 * 1000 * 1000),
    # reference/tuning_api.md section 2.7: 1 GB JSONL, at most 5,000 validation examples.
    # Each example is a user turn then a model turn; a user turn with empty text is refused
    # ("empty text parameter"), so every example needs an input.
    "vertex": DatasetLimits(max_jsonl_bytes=1000 * 1000 * 1000, max_validation_examples=5000,
                            requires_text_input=True),
    "replay": DatasetLimits(),
}


def limits_for(kind: str) -> DatasetLimits:
    """The limits of backend ``kind``; a third-party backend gets the seed's limits."""
    return LIMITS.get(kind, DatasetLimits())
