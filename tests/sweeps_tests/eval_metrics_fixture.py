"""User metrics given by import path in the evaluation tests (``evaluation.metrics``)."""

from __future__ import annotations


def same_last_word(prediction: str, expected: str) -> float:
    """1.0 when the answers end with the same word (the number, in the tests' dataset)."""
    last = prediction.split()[-1:] == expected.split()[-1:]
    return 1.0 if last else 0.0


def returns_text(prediction: str, expected: str) -> str:
    """A broken metric: returns a string, not a float."""
    return "good"


def none_when_wrong(prediction: str, expected: str) -> float | None:
    """A broken metric that only shows on a wrong answer (passes the start-up probe)."""
    return 1.0 if prediction == expected else None


NOT_A_FUNCTION = 3
