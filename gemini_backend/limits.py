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


#: Vertex adapter sizes each Gemini base model takes, by model name prefix (longest match
#: wins). Vertex docs, "About supervised fine-tuning for Gemini models": Gemini 2.5 Flash and
#: Flash-Lite take 1, 2, 4, 8 and 16; Gemini 1.5 Pro 1 and 4 ("using higher values ... will
#: result in failure"); Gemini 1.5 Flash 1, 4, 8 and 16. Models not listed get every value
#: of the API's ``AdapterSize`` enum: the docs give no list for them.
VERTEX_ADAPTER_SIZES: dict[str, tuple[int, ...]] = {
    "gemini-2.5-flash": (1, 2, 4, 8, 16),
    "gemini-2.5-flash-lite": (1, 2, 4, 8, 16),
    "gemini-1.5-pro": (1, 4),
    "gemini-1.5-flash": (1, 4, 8, 16),
}


def vertex_adapter_sizes(base_model: str) -> tuple[int, ...] | None:
    """The adapter sizes the docs list for ``base_model`` (any path prefix), or ``None``."""
    name = base_model.strip().lower().rsplit("/", 1)[-1]
    matches = [prefix for prefix in VERTEX_ADAPTER_SIZES if name.startswith(prefix)]
    return VERTEX_ADAPTER_SIZES[max(matches, key=len)] if matches else None
