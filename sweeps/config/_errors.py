"""Turn pydantic's validation errors into one located line per problem.

Pydantic's error paths (``loc``) mix the user's keys with labels of its own: the branch of a
union (``choices-knob``, ``int``, ``median``), a validator (``function-wrap[...]``). A user
only knows the YAML, so a part the YAML has is kept, and any other part that is such a label
is dropped; what is left is the key path, whose line :class:`LineMap` knows.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sweeps.config._yaml_lines import LineMap

#: Labels pydantic gives plain-type union branches (``int | float | str``).
TYPE_LABELS = frozenset({"int", "float", "str", "bool", "none"})
#: Labels of validator functions and parametrised types: ``function-wrap[_f()]``, ``list[str]``.
_FUNCTION_LABEL = re.compile(r"^[\w-]+\[.*\]$")
#: A key longer than this is shortened in messages (a key is user input too).
_MAX_KEY_CHARS = 80
_EXTRA_KEY = "unknown key; check its spelling against the documented keys"


def format_problems(error: ValidationError, path: Path, lines: LineMap, *,
                    union_labels: Collection[str]) -> str:
    """``file: invalid sweep config`` then ``file: key.path (line N): message`` per problem.

    Problems on one key from several union branches (``int``, ``float``, ``str``) are merged
    into one line.
    """
    merged: dict[str, list[str]] = {}
    for item in error.errors(include_input=False, include_url=False):
        loc = clean_loc(item["loc"], lines, union_labels=union_labels)
        ctx = item.get("ctx") or {}
        if "key" in ctx:
            loc = (*loc, ctx["key"])
        line = lines.line_of(loc)
        where = ".".join(_short(str(part)) for part in loc) or "(top level)"
        at = f" (line {line})" if line else ""
        messages = merged.setdefault(f"{path}: {where}{at}: ", [])
        message = _message(item)
        if message not in messages:
            messages.append(message)
    problems = [prefix + _join(messages) for prefix, messages in merged.items()]
    return f"{path}: invalid sweep config\n  " + "\n  ".join(problems)


def clean_loc(loc: tuple[Any, ...], lines: LineMap, *,
              union_labels: Collection[str]) -> tuple[Any, ...]:
    """``loc`` as the user's key path: keep a part the YAML has, drop pydantic's labels."""
    kept: tuple[Any, ...] = ()
    for part in loc:
        candidate = (*kept, part)
        if lines.has(candidate) or not _is_label(part, union_labels):
            kept = candidate
    return kept


def _is_label(part: Any, union_labels: Collection[str]) -> bool:
    if not isinstance(part, str):
        return False  # list indexes are the user's
    return part in union_labels or part in TYPE_LABELS or bool(_FUNCTION_LABEL.match(part))


def _message(item: Any) -> str:
    """Pydantic's message, without echoing input (an unknown tag is the user's value)."""
    if item["type"] == "extra_forbidden":
        return _EXTRA_KEY
    ctx = item.get("ctx") or {}
    field = str(ctx.get("discriminator", "kind")).strip("'")
    if item["type"] == "union_tag_invalid" and field.startswith("_knob_shape"):
        # Only epochs takes the from_curve mode; other knobs are fixed, choices or a range.
        return ("this knob takes {value: ...}, {choices: [...]} or {low: ..., high: ...}; "
                "'mode: from_curve' is only for epochs")
    if item["type"] == "union_tag_invalid":
        return f"unknown {field}; use one of {ctx['expected_tags']}"
    if item["type"] == "union_tag_not_found":
        return f"needs a '{field}' key"
    return str(item["msg"]).removeprefix("Value error, ")


def _join(messages: list[str]) -> str:
    # "Input should be a valid integer", "... a valid number" read as one sentence.
    prefix = "Input should be "
    if len(messages) > 1 and all(m.startswith(prefix) for m in messages):
        return prefix + " or ".join(m.removeprefix(prefix) for m in messages)
    return "; ".join(messages)


def _short(text: str) -> str:
    if len(text) <= _MAX_KEY_CHARS:
        return text
    half = _MAX_KEY_CHARS // 2
    return f"{text[:half]}...{text[-half:]}"
