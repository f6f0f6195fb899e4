"""Readers for the three dataset formats: JSONL, JSON and CSV, chosen by file extension.

A reader turns a file into raw records, each tagged with where it came from, and collects
the problems that stop a record from being read at all (invalid UTF-8, invalid JSON, a CSV
without the right header). Field rules live in :mod:`sweeps.data.dataset`.

Locations, as every message shows them:

* JSONL: ``file:LINE`` (1-based line of the file);
* JSON: ``file: [INDEX]`` (0-based index in the top-level list, as in Python and jq);
* CSV: ``file: row N``, counted as a spreadsheet does: the header is row 1, so the first
  example is row 2.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The columns (CSV) and keys (JSON, JSONL) an example may have.
FIELDS = ("text_input", "output")
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv")
_BOM = b"\xef\xbb\xbf"
#: Byte order marks of the encodings users most often save by mistake; UTF-32 first, since
#: the UTF-32-LE mark starts with the UTF-16-LE one.
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
               (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One example as read, before any field rule: ``data`` is what the file held."""

    where: str
    data: Any


@dataclass(frozen=True, slots=True)
class ReadResult:
    """The records a reader could read, and the problems with the rest of the file."""

    records: tuple[RawRecord, ...]
    problems: tuple[str, ...]
    size_bytes: int = 0


def read_records(path: Path) -> ReadResult:
    """Read ``path`` by its extension (``.jsonl``, ``.json``, ``.csv``; a UTF-8 BOM is fine)."""
    label = str(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        return ReadResult((), (f"{label}: unsupported file type {suffix or '(none)'!r}; "
                               "use .jsonl, .json or .csv",))
    try:
        raw = _read_regular_file(path)
    except FileNotFoundError:
        return ReadResult((), (f"{label}: no such file",))
    except _NotRegular as exc:
        return ReadResult((), (f"{label}: is {exc}, not a regular file; only a regular file "
                               "is read as a dataset (a pipe or device never ends)",))
    except OSError as exc:
        return ReadResult((), (f"{label}: cannot be read ({exc.strerror or exc})",))
    raw = raw.removeprefix(_BOM)
    wrong_encoding = _other_bom_problem(raw, label)
    if wrong_encoding:
        return ReadResult((), (wrong_encoding,), len(raw))
    if suffix == ".jsonl":
        records, problems = _read_jsonl(raw, label)
    else:
        text, problems = _decode(raw, label)
        reader = _read_json if suffix == ".json" else _read_csv
        records, more = reader(text, label)
        problems += more
    return ReadResult(tuple(records), tuple(problems), len(raw))


class _NotRegular(Exception):
    """The path (after links) is a FIFO, a device, a socket or a folder."""


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file. Opened without blocking and checked on
    the open descriptor: a FIFO would wait forever for a writer, ``/dev/zero`` never ends,
    and a check by name could be raced."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _NotRegular(_file_kind(mode))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISDIR, "a folder"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def json_type(value: Any) -> str:
    """The JSON name of a Python value's type, for messages (``number``, ``array``, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string" if isinstance(value, str) else type(value).__name__


def _other_bom_problem(raw: bytes, label: str) -> str | None:
    """One clear line for a UTF-16/32 file, instead of a problem on every line."""
    for bom, encoding in _OTHER_BOMS:
        if raw.startswith(bom):
            return (f"{label}: the file is {encoding} (it starts with a {encoding} byte order "
                    "mark); save it as UTF-8")
    return None


def _utf8_problem(line: bytes, where: str) -> str | None:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = line[exc.start:exc.start + 1].hex()
        return (f"{where}: invalid UTF-8 (byte 0x{bad} at column {exc.start + 1}); "
                "save the file as UTF-8")
    return None


def _decode(raw: bytes, label: str) -> tuple[str, list[str]]:
    """Decode the whole file, reporting every line with invalid UTF-8.

    The rest is still read (bad bytes become U+FFFD) so one pass reports every problem.
    """
    try:
        return raw.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    problems = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        problem = _utf8_problem(line, f"{label}:{number}")
        if problem:
            problems.append(problem)
    return raw.decode("utf-8", errors="replace"), problems


def _read_jsonl(raw: bytes, label: str) -> tuple[list[RawRecord], list[str]]:
    records: list[RawRecord] = []
    problems: list[str] = []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        where = f"{label}:{number}"
        if not line.strip():
            continue  # blank lines (and the trailing newline) carry no example
        bad_utf8 = _utf8_problem(line, where)
        if bad_utf8:
            problems.append(bad_utf8)
            continue
        try:
            # Decode first: json.loads(bytes) guesses UTF-16/32 from NUL bytes and then
            # raises UnicodeDecodeError; the line was just checked to be UTF-8.
            records.append(RawRecord(where, json.loads(line.decode("utf-8"))))
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: invalid JSON: {exc.msg} (column {exc.colno}); "
                            "each line must be one JSON object")
        except (ValueError, RecursionError) as exc:
            problems.append(f"{where}: invalid JSON: {_beyond_json_limits(exc)}")
    return records, problems


def _beyond_json_limits(exc: ValueError | RecursionError) -> str:
    """Why syntactically valid JSON could not be loaded: too deep, or a number too long."""
    if isinstance(exc, RecursionError):
        return "nested too deeply (arrays or objects inside each other)"
    # ValueError from int(): more digits than sys.get_int_max_str_digits() (4,300).
    return "a number is too long (more than 4,300 digits)"


def _read_json(text: str, label: str) -> tuple[list[RawRecord], list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [f"{label}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"]
    except (ValueError, RecursionError) as exc:
        return [], [f"{label}: invalid JSON: {_beyond_json_limits(exc)}"]
    if not isinstance(data, list):
        return [], [f"{label}: the file must hold a JSON list of examples "
                    f'([{{"text_input": ..., "output": ...}}, ...]), got {json_type(data)}']
    return [RawRecord(f"{label}: [{index}]", item) for index, item in enumerate(data)], []


def _read_csv(text: str, label: str) -> tuple[list[RawRecord], list[str]]:
    # The csv module refuses cells over 131,072 characters and then stops reading; the text
    # is in memory anyway, so allow any cell and let the length rules report a huge one.
    # The limit is process-wide: only ever raise it, so concurrent readers stay safe.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        return [], [f"{label}: row 1: not valid CSV ({exc})"]
    if header is None:
        return [], [f"{label}: row 1: empty file; the first row must be the header "
                    "text_input,output"]
    columns = [name.strip() for name in header]
    unknown = [name for name in columns if name not in FIELDS]
    if unknown or "output" not in columns or len(set(columns)) != len(columns):
        return [], [f"{label}: row 1: header is {','.join(columns)!r}; it must be "
                    "text_input,output (or output alone for output-only examples)"]
    records: list[RawRecord] = []
    problems: list[str] = []
    row_number = 1
    try:
        for row_number, row in enumerate(reader, start=2):
            _add_csv_row(row, columns, f"{label}: row {row_number}", records, problems)
    except csv.Error as exc:
        problems.append(f"{label}: row {row_number + 1}: not valid CSV ({exc})")
    return records, problems


def _add_csv_row(row: list[str], columns: list[str], where: str,
                 records: list[RawRecord], problems: list[str]) -> None:
    if not any(cell.strip() for cell in row):
        return  # blank rows carry no example
    if len(row) != len(columns):
        problems.append(f"{where}: {len(row)} cells, the header has {len(columns)}; "
                        "quote cells that contain commas")
        return
    # An empty text_input cell is how CSV says "no text_input".
    data = {name: (cell if cell or name != "text_input" else None)
            for name, cell in zip(columns, row, strict=True)}
    records.append(RawRecord(where, data))
