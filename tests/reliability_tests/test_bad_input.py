"""Bad dataset files never crash: a located error or a valid dataset, always.

Every generated file goes through :func:`check_dataset_file`: ``validate_dataset`` returns a
report, ``load_dataset`` returns a Dataset or raises a DatasetError whose every problem line
starts with the file and a location, and ``gemini-sweep validate`` exits 0 or 2 without a
traceback. Bugs found here are ``xfail(strict=True)`` with the fix in the reason. Configs
are in ``test_bad_config.py``; "nothing is submitted" in ``test_bad_input_no_spend.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from sweeps.data.dataset import validate_dataset
from tests.reliability_tests._bad_files import BYTE_SOUP
from tests.reliability_tests._bad_files import NON_OBJECTS
from tests.reliability_tests._bad_files import RECORDS
from tests.reliability_tests._bad_files import WRONG_VALUES
from tests.reliability_tests._bad_files import check_dataset_file
from tests.reliability_tests._bad_files import location
from tests.reliability_tests._bad_files import serialize
from tests.reliability_tests._bad_files import simple_records

# Deterministic (derandomize) so CI runs, and any strict xfail, never flip between runs.
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad_datasets")


def _write(folder: Path, fmt: str, raw: bytes) -> Path:
    path = folder / f"data.{fmt}"
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
@FUZZ
@given(raw=BYTE_SOUP)
@example(raw=b"\x00{\x00}\x00")
@example(raw=b"")
@example(raw=b"\xef\xbb\xbf")
def test_random_bytes_get_a_located_error(folder: Path, fmt: str, raw: bytes) -> None:
    assert check_dataset_file(_write(folder, fmt, raw)) is None


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
@FUZZ
@given(records=RECORDS, data=st.data())
def test_a_truncated_file_is_valid_or_located(folder: Path, fmt: str,
                                              records: list[dict[str, str]],
                                              data: st.DataObject) -> None:
    raw = serialize(records, fmt)
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    dataset = check_dataset_file(_write(folder, fmt, raw[:cut]))
    if cut == len(raw):  # the untouched file is the control: it must load
        assert dataset is not None and len(dataset.examples) == len(records)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
@FUZZ
@given(records=RECORDS, data=st.data(), field=st.sampled_from(["text_input", "output"]),
       value=WRONG_VALUES)
def test_a_wrong_typed_field_is_named_at_its_record(folder: Path, fmt: str,
                                                    records: list[dict[str, Any]],
                                                    data: st.DataObject, field: str,
                                                    value: Any) -> None:
    index = data.draw(st.integers(0, len(records) - 1), label="index")
    records[index][field] = value
    path = _write(folder, fmt, serialize(records, fmt))
    assert check_dataset_file(path) is None
    where = f"{location(path, fmt, index)}: {field}: "
    report_errors = _errors(path)
    assert any(e.startswith(where) for e in report_errors), (where, report_errors)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
@FUZZ
@given(records=RECORDS, data=st.data(), value=NON_OBJECTS)
def test_a_record_that_is_not_an_object_is_named(folder: Path, fmt: str,
                                                 records: list[Any], data: st.DataObject,
                                                 value: Any) -> None:
    index = data.draw(st.integers(0, len(records) - 1), label="index")
    records[index] = value
    path = _write(folder, fmt, serialize(records, fmt))
    assert check_dataset_file(path) is None
    where = f"{location(path, fmt, index)}: must be an object"
    assert any(e.startswith(where) for e in _errors(path))


@FUZZ
@given(records=RECORDS, data=st.data(), extra=st.booleans())
def test_a_csv_row_with_the_wrong_cell_count_is_named(folder: Path,
                                                      records: list[dict[str, str]],
                                                      data: st.DataObject,
                                                      extra: bool) -> None:
    index = data.draw(st.integers(0, len(records) - 1), label="index")
    lines = serialize(simple_records(len(records)), "csv").decode().splitlines(True)
    lines[index + 1] = ("extra,cell," if extra else "only-one-cell") + "\r\n"
    path = _write(folder, "csv", "".join(lines).encode())
    assert check_dataset_file(path) is None
    assert any(e.startswith(f"{location(path, 'csv', index)}: ") and "cells" in e
               for e in _errors(path))


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
@FUZZ
@given(records=RECORDS, data=st.data(), field=st.sampled_from(["text_input", "output"]))
def test_a_huge_field_is_reported_with_its_length_and_limit(folder: Path, fmt: str,
                                                            records: list[dict[str, str]],
                                                            data: st.DataObject,
                                                            field: str) -> None:
    limit = 40_000 if field == "text_input" else 5_000
    n_chars = data.draw(st.integers(limit + 1, 100_000), label="n_chars")
    index = data.draw(st.integers(0, len(records) - 1), label="index")
    records[index][field] = "é" * n_chars
    path = _write(folder, fmt, serialize(records, fmt))
    assert check_dataset_file(path) is None
    expected = (f"{location(path, fmt, index)}: {field}: {n_chars:,} characters, over the "
                f"{limit:,} limit")
    assert expected in _errors(path)


def test_a_csv_cell_over_the_csv_module_limit_is_still_measured(folder: Path) -> None:
    records = simple_records()
    records[3]["text_input"] = "x" * 200_000
    records[10]["output"] = "   "  # a later problem must still be found
    path = _write(folder, "csv", serialize(records, "csv"))
    assert check_dataset_file(path) is None
    errors = _errors(path)
    assert f"{path}: row 5: text_input: 200,000 characters, over the 40,000 limit" in errors
    assert f"{path}: row 12: output: missing or empty" in errors


def _errors(path: Path) -> tuple[str, ...]:
    return validate_dataset(path).errors


# --- odd encodings: a table, since the encodings are a short fixed list -------------------

Transform = Callable[[bytes, str], bytes]


def _replace_output(value: str) -> Transform:
    """Put ``value`` (raw JSON/CSV text, already escaped as needed) as record 3's output."""
    return lambda raw, fmt: raw.replace(b"answer 3", value.encode("utf-8", "surrogatepass"))


def _deep(raw: bytes, fmt: str) -> bytes:
    return raw.replace(b'"answer 3"', b"[" * 100_000 + b"]" * 100_000)


def _huge_int(raw: bytes, fmt: str) -> bytes:
    return raw.replace(b'"answer 3"', b"1" * 5_000)


def _latin1(raw: bytes, fmt: str) -> bytes:
    return raw.replace(b"answer 3", "café 3".encode("latin-1"))


def _cesu_surrogate(raw: bytes, fmt: str) -> bytes:
    return raw.replace(b"answer 3", b"answer \xed\xa0\x80")


def _mixed_newlines(raw: bytes, fmt: str) -> bytes:
    first, *rest = raw.split(b"\n")
    return first + b"".join((b"\r\n" if i % 2 else b"\n") + line for i, line in enumerate(rest))


VALID, ERROR, EITHER = "valid", "error", "either"
ALL = ("jsonl", "json", "csv")
JSON_FORMATS = ("jsonl", "json")
ENCODING_CASES: list[tuple[str, tuple[str, ...], Transform, str, str]] = [
    # (name, formats, transform, expected, text some problem must contain)
    ("utf8-bom", ALL, lambda raw, fmt: b"\xef\xbb\xbf" + raw, VALID, ""),
    ("crlf", ALL, lambda raw, fmt: raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"),
     VALID, ""),
    ("mixed-newlines", ALL, _mixed_newlines, VALID, ""),
    ("blank-lines", ("jsonl",), lambda raw, fmt: raw.replace(b"\n", b"\n  \n\n"), VALID, ""),
    ("utf16-bom", ALL, lambda raw, fmt: raw.decode().encode("utf-16"), ERROR, "UTF-8"),
    ("utf16-le-no-bom", ALL, lambda raw, fmt: raw.decode().encode("utf-16-le"), ERROR, ""),
    ("utf32-bom", ALL, lambda raw, fmt: raw.decode().encode("utf-32"), ERROR, "UTF-8"),
    ("latin1-bytes", ALL, _latin1, ERROR, "invalid UTF-8"),
    ("cesu-surrogate-bytes", ALL, _cesu_surrogate, ERROR, "invalid UTF-8"),
    ("raw-nul-in-json-string", JSON_FORMATS, _replace_output("a\x00b"), ERROR, "invalid JSON"),
    ("raw-nul-in-csv-cell", ("csv",), _replace_output("a\x00b"), EITHER, ""),
    ("escaped-nul", JSON_FORMATS, _replace_output("a\\u0000b"), EITHER, ""),
    ("escaped-surrogate-pair", JSON_FORMATS, _replace_output("\\ud83d\\ude00"), VALID, ""),
    ("escaped-lone-surrogate", JSON_FORMATS, _replace_output("x\\ud800"), ERROR, "output"),
    ("cr-only-newlines", ("json", "csv"),
     lambda raw, fmt: raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r"), VALID, ""),
    ("cr-only-newlines", ("jsonl",),
     lambda raw, fmt: raw.replace(b"\n", b"\r"), ERROR, "invalid JSON"),
    ("deep-nesting", JSON_FORMATS, _deep, ERROR, ""),
    ("huge-integer", JSON_FORMATS, _huge_int, ERROR, ""),
]


def _encoding_params() -> list[Any]:
    return [pytest.param(name, fmt, transform, expected, needle, id=f"{name}-{fmt}")
            for name, formats, transform, expected, needle in ENCODING_CASES
            for fmt in formats]


@pytest.mark.parametrize(("name", "fmt", "transform", "expected", "needle"), _encoding_params())
def test_odd_encodings(folder: Path, name: str, fmt: str, transform: Transform,
                       expected: str, needle: str) -> None:
    path = _write(folder, fmt, transform(serialize(simple_records(), fmt), fmt))
    dataset = check_dataset_file(path)
    if expected == VALID:
        assert dataset is not None and len(dataset.examples) == 22
    elif expected == ERROR:
        assert dataset is None
        assert any(needle in e for e in _errors(path)), _errors(path)


@pytest.mark.parametrize("key", [" ", "a\nb", ""])
def test_an_odd_unknown_key_is_shown_on_one_located_line(folder: Path, key: str) -> None:
    records: list[dict[str, Any]] = simple_records()
    records[2][key] = "x"
    path = _write(folder, "jsonl", serialize(records, "jsonl"))
    assert check_dataset_file(path) is None
    assert any(e.startswith(f"{path}:3: {key!r}: unknown field") for e in _errors(path))
