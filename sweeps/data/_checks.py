"""The rules a tuning dataset must keep (errors) and should keep (warnings).

Each check returns message lines that start with the location of the problem (see
:mod:`sweeps.data._formats`) and name the field, so a user can go straight to it. Limits
come from :mod:`gemini_backend.limits` as data, never as per-backend ifs here.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gemini_backend import DatasetLimits
from gemini_backend import Example
from sweeps.data._formats import FIELDS
from sweeps.data._formats import RawRecord
from sweeps.data._formats import json_type

#: Per-example warnings of one kind beyond this many are summarised in one line.
MAX_WARNINGS_PER_KIND = 20

# A "label:" at the start of a line, as in "question: ...\ncontext: ...". The colon must be
# followed by a space or the line end, so times (10:30) and URLs (http://) do not count.
_LABEL = re.compile(r"^[ \t]*([A-Za-z][A-Za-z0-9 _-]{0,24}):(?=[ \t]|$)", re.MULTILINE)


_KEY_REPR = reprlib.Repr()
_KEY_REPR.maxstring = 60


@dataclass(frozen=True, slots=True)
class Located:
    """An example that passed the field rules, and where it came from."""

    where: str
    example: Example


def check_record(record: RawRecord, limits: DatasetLimits, *,
                 preamble: str = "") -> tuple[Example | None, list[str]]:
    """The field rules of one record: an object with a non-empty string ``output`` and an
    optional string ``text_input``, both within the service's length limits.

    ``text_input`` is measured with the preamble in front, as it will be sent.
    """
    where, data = record.where, record.data
    if not isinstance(data, dict):
        return None, [f'{where}: must be an object with "text_input" and "output", '
                      f"got {json_type(data)}"]
    problems = _unknown_fields(where, data) + _unencodable_fields(where, data)
    output = data.get("output")
    if output is None or (isinstance(output, str) and not output.strip()):
        problems.append(f"{where}: output: missing or empty")
    elif not isinstance(output, str):
        problems.append(f"{where}: output: must be a string, got {json_type(output)}")
    else:
        problems += _over_limit(where, "output", len(output), limits.max_output_chars)
    text_input = data.get("text_input")
    if isinstance(text_input, str) and not text_input.strip():
        text_input = None  # an empty input means an output-only example
    if text_input is not None and not isinstance(text_input, str):
        problems.append(f"{where}: text_input: must be a string, got {json_type(text_input)}")
    elif text_input is not None:
        note = " with the preamble" if preamble else ""
        problems += _over_limit(where, "text_input", len(preamble) + len(text_input),
                                limits.max_input_chars, note=note)
    if problems or not isinstance(output, str):
        return None, problems
    return Example(output=output, text_input=text_input), []


def _unknown_fields(where: str, data: dict[str, Any]) -> list[str]:
    return [f'{where}: {_show_key(key)}: unknown field; an example has only "text_input" '
            'and "output"' for key in data if key not in FIELDS]


def _show_key(key: str) -> str:
    # A plain key reads as itself; any other (blank, with a newline, huge) is quoted and
    # shortened, so the problem stays one readable line.
    is_plain = key.isidentifier() and len(key) <= _KEY_REPR.maxstring
    return key if is_plain else _KEY_REPR.repr(key)


def _unencodable_fields(where: str, data: dict[str, Any]) -> list[str]:
    """A JSON escape of half a surrogate pair (``"\\ud800"``) loads as a str that UTF-8
    cannot encode, so no service (and no content hash) could take it."""
    problems = []
    for field in FIELDS:
        value = data.get(field)
        if isinstance(value, str) and not is_encodable(value):
            problems.append(f"{where}: {field}: contains an unpaired surrogate (a "
                            "\\ud800-\\udfff escape without its pair); fix the escape")
    return problems


def is_encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no unpaired surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _over_limit(where: str, field: str, n_chars: int, limit: int | None, *,
                note: str = "") -> list[str]:
    if limit is None or n_chars <= limit:
        return []
    return [f"{where}: {field}: {n_chars:,} characters{note}, over the {limit:,} limit"]


def check_empty_inputs(records: Sequence[RawRecord], limits: DatasetLimits, *,
                       preamble: str = "") -> tuple[list[str], list[str]]:
    """(errors, warnings) for examples without an input.

    Where the service needs an input in every example (Vertex: a user turn with text), a
    missing or empty ``text_input`` is an error, unless a preamble gives every example one.
    Elsewhere an input is optional, but one written and left empty (``""``) is most likely a
    mistake: the example is sent output-only, and a file of them passes every other rule.
    """
    objects = [r for r in records if isinstance(r.data, dict)]
    empty = [r.where for r in objects if isinstance(r.data.get("text_input"), str)
             and not r.data["text_input"].strip()]
    if limits.requires_text_input and not preamble.strip():
        missing = [r.where for r in objects if r.data.get("text_input") is None]
        errors = [f"{where}: text_input: missing or empty; this service needs an input in "
                  "every example (a user turn with text)" for where in sorted(
                      set(empty) | set(missing), key=(empty + missing).index)]
        return _capped(errors, "text_input"), []
    warnings = [f"{where}: text_input: empty, so the example is sent without any input; "
                "fill it in, or leave the key out if output-only examples are meant"
                for where in empty]
    return [], _capped(warnings, "empty text_input")


def check_count(label: str, n_examples: int, limits: DatasetLimits) -> tuple[list[str],
                                                                               list[str]]:
    """(errors, warnings) about the number of examples."""
    if n_examples < limits.min_examples:
        return [f"{label}: {n_examples} examples; at least {limits.min_examples} are needed "
                f"({limits.recommended_min_examples} or more recommended)"], []
    if n_examples < limits.recommended_min_examples:
        return [], [f"{label}: {n_examples} examples; at least "
                    f"{limits.recommended_min_examples} are recommended (the guide suggests "
                    "100-500) for a model that generalises"]
    return [], []


def check_same_type(located: Sequence[Located]) -> list[str]:
    """All examples must be of one type: every one with ``text_input``, or none."""
    with_input = [item for item in located if item.example.text_input is not None]
    without_input = [item for item in located if item.example.text_input is None]
    if not with_input or not without_input:
        return []
    rule = "all examples must be of the same type (all with text_input, or none)"
    if len(without_input) <= len(with_input):
        return [f"{item.where}: text_input: missing, but {len(with_input)} of "
                f"{len(located)} examples have one; {rule}" for item in without_input]
    return [f"{item.where}: text_input: present, but {len(without_input)} of "
            f"{len(located)} examples have none; {rule}" for item in with_input]


def warn_duplicates(located: Sequence[Located]) -> list[str]:
    """Exact duplicates weigh one example more than the others, usually by accident."""
    first_seen: dict[Example, str] = {}
    warnings = []
    for item in located:
        first = first_seen.setdefault(item.example, item.where)
        if first != item.where:
            warnings.append(f"{item.where}: duplicate of {first} (same text_input and "
                            "output); remove it unless the extra weight is intended")
    return _capped(warnings, "duplicate")


def input_format(text: str) -> tuple[str, ...]:
    """The labels a prompt is built from (``("question", "context")``), in order."""
    return tuple(label.strip().lower() for label in _LABEL.findall(text))


def warn_format(located: Sequence[Located]) -> list[str]:
    """Inputs should share one format: production prompts must match the training format."""
    formats = {item.where: input_format(item.example.text_input)
               for item in located if item.example.text_input is not None}
    counts = Counter(formats.values())
    if len(counts) < 2:
        return []
    usual, n_usual = counts.most_common(1)[0]
    warnings = [
        f"{where}: text_input: format {_describe(found)} differs from {_describe(usual)} "
        f"used by {n_usual} of {len(formats)} inputs; keep one format, and send production "
        "prompts in it too"
        for where, found in formats.items() if found != usual
    ]
    return _capped(warnings, "format")


def _describe(labels: tuple[str, ...]) -> str:
    if not labels:
        return "(no labels)"
    return '"' + " ".join(f"{label}:" for label in labels) + '"'


def _capped(lines: list[str], kind: str) -> list[str]:
    if len(lines) <= MAX_WARNINGS_PER_KIND:
        return lines
    hidden = len(lines) - MAX_WARNINGS_PER_KIND
    return lines[:MAX_WARNINGS_PER_KIND] + [f"... and {hidden} more {kind} warnings"]


def percentile(sorted_values: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0
    # The tiny slack keeps 0.95 * 20 at rank 19 despite float rounding.
    rank = max(1, math.ceil(fraction * len(sorted_values) - 1e-9))
    return sorted_values[rank - 1]
