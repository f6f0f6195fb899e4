"""Makers of good and bad input files for the bad-input tests.

Datasets come in the three formats the validator reads; configs are the YAML a user writes,
always with a fake API key in them so every error path can be checked for leaking it. The
``check_*`` functions hold the properties every bad file must keep: a clear, located error
(or a valid result), never another exception, never a traceback.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from hypothesis import strategies as st
from typer.testing import CliRunner

from sweeps.cli import app
from sweeps.config.schema import SweepConfig
from sweeps.config.schema import load_config
from sweeps.data.dataset import Dataset
from sweeps.data.dataset import load_dataset
from sweeps.data.dataset import validate_dataset
from sweeps.errors import ConfigError
from sweeps.errors import DatasetError

FORMATS = ("jsonl", "json", "csv")
FAKE_API_KEY = "AIzaFAKE-bad-input-never-print-me-0123456789"
runner = CliRunner()

# --- datasets -----------------------------------------------------------------------------

# Any character a user may type (surrogates are not characters; NUL gets its own cases).
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"),
                min_size=1, max_size=30).filter(str.strip)
RECORDS = st.lists(st.fixed_dictionaries({"text_input": _TEXT, "output": _TEXT}),
                   min_size=20, max_size=24)
#: Values of a JSON type other than string, as a wrong field value.
WRONG_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
    st.lists(st.integers() | st.text(max_size=5), max_size=3),
    st.dictionaries(st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers(),
                                                         max_size=2), max_size=2),
)
#: What a record may wrongly be instead of an object.
NON_OBJECTS = WRONG_VALUES.filter(lambda value: not isinstance(value, dict)) | st.text(max_size=5)
#: Bytes that JSON, CSV and UTF-8 decoders care about, for byte soups that get further than
#: uniformly random bytes do.
_SOUP_PIECES = (b"{", b"}", b"[", b"]", b'"', b",", b":", b"\n", b"\r\n", b"\r", b"\\",
                b"\\u", b"d800", b'"text_input"', b'"output"', b"text_input,output\n",
                b"1e999", b"-0", b"null", b"true", b"NaN", b"\x00", b"\xff", b"\xc3",
                b"\xef\xbb\xbf", b"\t", b" ", b"abc", b"\xe2\x82\xac")
BYTE_SOUP = st.one_of(st.binary(max_size=600),
                      st.lists(st.sampled_from(_SOUP_PIECES), max_size=150).map(b"".join))


def simple_records(n: int = 22) -> list[dict[str, Any]]:
    return [{"text_input": f"question {i}", "output": f"answer {i}"} for i in range(n)]


def serialize(records: list[dict[str, Any]], fmt: str) -> bytes:
    """``records`` as a file of format ``fmt``; CSV cells are strings, JSON keeps types."""
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
    if fmt == "json":
        return json.dumps(records, indent=1).encode("utf-8")
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["text_input", "output"])
    writer.writerows([r.get("text_input", ""), r.get("output", "")] for r in records)
    return out.getvalue().encode("utf-8")


def location(path: Path, fmt: str, index: int) -> str:
    """How problem lines locate record ``index`` (one record per JSONL line)."""
    return {"jsonl": f"{path}:{index + 1}", "json": f"{path}: [{index}]",
            "csv": f"{path}: row {index + 2}"}[fmt]


def _problem_pattern(path: Path) -> re.Pattern[str]:
    # path, then a location (:LINE, : [i], : row N) or none (file level), then what is wrong.
    return re.compile(rf"{re.escape(str(path))}(:\d+|: \[\d+\]|: row \d+)?: (?P<what>\S.*)")


def check_dataset_file(path: Path) -> Dataset | None:
    """The bad-dataset property: a report, then a Dataset or a located DatasetError, and a
    CLI that exits 0 or 2 without a traceback. Returns the dataset when it is valid."""
    report = validate_dataset(path)  # must never raise
    pattern = _problem_pattern(path)
    for problem in report.errors:
        assert "\n" not in problem, problem
        what = pattern.fullmatch(problem)
        assert what is not None, f"problem without file and location: {problem!r}"
        assert len(what["what"].split()) >= 2, f"problem without a reason: {problem!r}"
    try:
        dataset = load_dataset(path)
    except DatasetError as exc:
        assert list(exc.problems) == list(report.errors) and exc.problems
        assert str(exc).startswith(f"{path}: invalid dataset")
        dataset = None
    assert (dataset is None) == bool(report.errors)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == (2 if report.errors else 0), result.output
    assert "Traceback" not in result.output
    return dataset


# --- configs ------------------------------------------------------------------------------

BASE_CONFIG: dict[str, Any] = {
    "name": "bad-input",
    "dataset": {"path": "data.jsonl", "validation_split": 0.1, "preamble": "Q: ", "seed": 3},
    "backend": {"kind": "gemini-api", "api_key": FAKE_API_KEY, "base_model": "models/x",
                "timeout_s": 30, "max_retries": 2},
    "search_space": {"epochs": {"low": 1, "high": 8}, "batch_size": {"choices": [2, 4]},
                     "learning_rate_multiplier": {"low": 0.1, "high": 10.0, "log": True}},
    "sampler": {"kind": "tpe", "seed": 1},
    "pruner": {"kind": "median", "n_startup_trials": 2},
    "n_trials": 4,
    "concurrency": 2,
    "plateau": {"smoothing": 0.3},
    "budget": {"max_training_tokens": 100000},
}


def base_config() -> dict[str, Any]:
    return copy.deepcopy(BASE_CONFIG)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=10**9)


def leaf_paths(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every scalar's key path, list items included (``search_space.batch_size.choices.0``)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaf_paths(value, (*path, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            yield from leaf_paths(value, (*path, index))
    else:
        yield path


def mapping_paths(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The key path of every mapping, the top level included."""
    if isinstance(data, dict):
        yield path
        for key, value in data.items():
            yield from mapping_paths(value, (*path, key))


def get_at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


def set_at(data: Any, path: tuple[Any, ...], value: Any) -> None:
    get_at(data, path[:-1])[path[-1]] = value


def yaml_line(text: str, path: tuple[Any, ...]) -> int:
    """The 1-based line of the key (or list item) at ``path`` in YAML ``text``."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    line = 0
    for part in path:
        if isinstance(node, yaml.MappingNode):
            key_node, node = next((k, v) for k, v in node.value if k.value == str(part))
            line = key_node.start_mark.line + 1
        else:
            node = node.value[part]
            line = node.start_mark.line + 1
    return line


def dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in path)


def check_config_file(path: Path) -> SweepConfig | ConfigError:
    """The bad-config property: a config or a ConfigError naming the file, never another
    exception, never the API key; ``gemini-sweep validate CONFIG`` exits 2 without a traceback
    when the config is bad."""
    try:
        config: SweepConfig | ConfigError = load_config(path)
    except ConfigError as exc:
        config = exc
        message = str(exc)
        assert message.startswith(str(path)), message
        assert FAKE_API_KEY not in message
        for line in message.splitlines()[1:]:  # schema errors: one located line each
            assert line.strip().startswith(f"{path}: "), message
        result = runner.invoke(app, ["validate", str(path)])
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "Traceback" not in result.output and FAKE_API_KEY not in result.output
    return config
