"""Dataset loading and validation: every rule, with its exact location, in all three formats."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sweeps.data.dataset as dataset_module
from gemini_backend import DatasetLimits
from gemini_backend import Example
from gemini_backend import JobRequest
from gemini_backend.gemini_api.backend import tuned_model_body
from sweeps.data.dataset import Dataset
from sweeps.data.dataset import gemini_api_request_bytes
from sweeps.data.dataset import load_dataset
from sweeps.data.dataset import validate_dataset
from sweeps.errors import DatasetError
from tests.conftest import REPO_ROOT

FORMATS = ("jsonl", "json", "csv")
SEED_15 = REPO_ROOT / "tests" / "data" / "seed_15.json"
NEXT_NUMBER = REPO_ROOT / "configs" / "data" / "next_number.jsonl"


def _good(n: int, *, start: int = 0) -> list[dict[str, Any]]:
    return [{"text_input": str(i), "output": str(i + 1)} for i in range(start, start + n)]


def _encode(fmt: str, records: list[dict[str, Any]]) -> str:
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if fmt == "json":
        return json.dumps(records, indent=2, ensure_ascii=False)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text_input", "output"])
    for r in records:
        writer.writerow([r.get("text_input") or "", r.get("output") or ""])
    return out.getvalue()


def write(tmp_path: Path, fmt: str, records: list[dict[str, Any]], *,
          prefix: bytes = b"", name: str = "data") -> Path:
    path = tmp_path / f"{name}.{fmt}"
    path.write_bytes(prefix + _encode(fmt, records).encode("utf-8"))
    return path


def where(path: Path, fmt: str, index: int) -> str:
    """The location the validator must print for record ``index`` (0-based) of ``path``."""
    if fmt == "jsonl":
        return f"{path}:{index + 1}"
    if fmt == "json":
        return f"{path}: [{index}]"
    return f"{path}: row {index + 2}"


def only(lines: tuple[str, ...], needle: str) -> str:
    found = [line for line in lines if needle in line]
    assert len(found) == 1, (needle, lines)
    return found[0]


# --- valid files --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_valid_file_loads_with_examples_in_file_order(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt, _good(120))
    dataset = load_dataset(path)
    assert dataset.examples[0] == Example(output="1", text_input="0")
    assert dataset.examples[-1] == Example(output="120", text_input="119")
    assert len(dataset.examples) == 120
    assert dataset.warnings == ()


@pytest.mark.parametrize("fmt", FORMATS)
def test_utf8_bom_is_accepted(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt, _good(120), prefix=b"\xef\xbb\xbf")
    report = validate_dataset(path)
    assert report.errors == ()
    assert report.dataset is not None
    assert report.dataset.examples[0] == Example(output="1", text_input="0")


def test_same_examples_in_every_format_give_the_same_hash(tmp_path: Path) -> None:
    hashes = {load_dataset(write(tmp_path, fmt, _good(120))).content_hash for fmt in FORMATS}
    assert len(hashes) == 1


def test_output_only_examples_are_valid(tmp_path: Path) -> None:
    path = write(tmp_path, "jsonl", [{"output": f"answer {i}"} for i in range(120)])
    dataset = load_dataset(path)
    assert all(e.text_input is None for e in dataset.examples)


def test_the_example_dataset_passes_without_warnings() -> None:
    report = validate_dataset(NEXT_NUMBER, backend="gemini-api", validation_split=0.2)
    assert report.errors == () and report.warnings == ()
    assert report.stats.n_examples >= 200
    examples = report.dataset.examples if report.dataset else ()
    assert len(set(examples)) == len(examples)
    assert report.stats.output_chars.max_chars < 40


def test_the_seeds_15_examples_fail_with_at_least_20() -> None:
    with pytest.raises(DatasetError) as caught:
        load_dataset(SEED_15)
    assert caught.value.problems == [
        f"{SEED_15}: 15 examples; at least 20 are needed (100 or more recommended)"]
    assert "at least 20" in str(caught.value)


# --- errors, each with its location and field -----------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bad", [{"text_input": "x"}, {"text_input": "x", "output": ""},
                                 {"text_input": "x", "output": "  "}])
def test_missing_or_empty_output(tmp_path: Path, fmt: str, bad: dict[str, Any]) -> None:
    records = _good(30)
    records[4] = bad
    path = write(tmp_path, fmt, records)
    report = validate_dataset(path)
    assert f"{where(path, fmt, 4)}: output: missing or empty" in report.errors
    assert report.dataset is None


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
@pytest.mark.parametrize(("field", "value", "type_name"), [
    ("output", 3, "number"), ("output", True, "boolean"), ("text_input", ["a"], "array"),
    ("text_input", {"a": 1}, "object"),
])
def test_non_string_values(tmp_path: Path, fmt: str, field: str, value: Any,
                           type_name: str) -> None:
    records = _good(30)
    records[3][field] = value
    path = write(tmp_path, fmt, records)
    errors = validate_dataset(path).errors
    assert f"{where(path, fmt, 3)}: {field}: must be a string, got {type_name}" in errors


@pytest.mark.parametrize("fmt", FORMATS)
def test_over_long_input_and_output_state_the_length(tmp_path: Path, fmt: str) -> None:
    records = _good(30)
    records[2]["text_input"] = "x" * 41_234
    records[7]["output"] = "y" * 5_001
    records[9]["text_input"] = "z" * 40_000  # exactly at the limit is fine
    path = write(tmp_path, fmt, records)
    errors = validate_dataset(path).errors
    assert errors == (
        f"{where(path, fmt, 2)}: text_input: 41,234 characters, over the 40,000 limit",
        f"{where(path, fmt, 7)}: output: 5,001 characters, over the 5,000 limit",
    )


def test_the_preamble_counts_towards_the_input_limit(tmp_path: Path) -> None:
    records = _good(30)
    records[5]["text_input"] = "x" * 39_995
    path = write(tmp_path, "jsonl", records)
    assert validate_dataset(path).errors == ()
    errors = validate_dataset(path, preamble="Next: ").errors
    assert errors == (f"{path}:6: text_input: 40,001 characters with the preamble, over the "
                      "40,000 limit",)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("n", "is_valid"), [(19, False), (20, True)])
def test_at_least_20_examples(tmp_path: Path, fmt: str, n: int, is_valid: bool) -> None:
    path = write(tmp_path, fmt, _good(n))
    report = validate_dataset(path)
    assert report.is_valid is is_valid
    if not is_valid:
        assert report.errors == (f"{path}: 19 examples; at least 20 are needed "
                                 "(100 or more recommended)",)


@pytest.mark.parametrize("fmt", FORMATS)
def test_mixing_examples_with_and_without_text_input(tmp_path: Path, fmt: str) -> None:
    records = _good(30)
    del records[6]["text_input"]
    records[11]["text_input"] = None
    path = write(tmp_path, fmt, records)
    errors = validate_dataset(path).errors
    assert len(errors) == 2
    for index in (6, 11):
        line = only(errors, where(path, fmt, index) + ":")
        assert "text_input: missing, but 28 of 30 examples have one" in line
        assert "same type" in line


def test_mixing_reports_the_minority_that_has_text_input(tmp_path: Path) -> None:
    records: list[dict[str, Any]] = [{"output": str(i)} for i in range(30)]
    records[2]["text_input"] = "q"
    path = write(tmp_path, "json", records)
    (error,) = validate_dataset(path).errors
    assert error.startswith(f"{path}: [2]: text_input: present, but 29 of 30 examples have none")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_error_is_reported_not_just_the_first(tmp_path: Path, fmt: str) -> None:
    records = _good(30)
    records[1]["output"] = ""
    records[10]["text_input"] = "x" * 40_001
    records[20]["output"] = "y" * 6_000
    path = write(tmp_path, fmt, records)
    report = validate_dataset(path)
    assert report.errors == (
        f"{where(path, fmt, 1)}: output: missing or empty",
        f"{where(path, fmt, 10)}: text_input: 40,001 characters, over the 40,000 limit",
        f"{where(path, fmt, 20)}: output: 6,000 characters, over the 5,000 limit",
    )
    with pytest.raises(DatasetError) as caught:
        load_dataset(path)
    assert caught.value.problems == list(report.errors)
    assert all(problem in str(caught.value) for problem in report.errors)


def test_invalid_json_lines_are_all_reported_with_the_rest(tmp_path: Path) -> None:
    lines = [json.dumps(r) for r in _good(30)]
    lines[4] = '{"text_input": "4", "output": "5"'
    lines[8] = "not json"
    lines[12] = json.dumps({"text_input": "12"})
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    errors = validate_dataset(path).errors
    assert errors[0].startswith(f"{path}:5: invalid JSON: ")
    assert errors[1].startswith(f"{path}:9: invalid JSON: Expecting value (column 1)")
    assert errors[2] == f"{path}:13: output: missing or empty"
    assert len(errors) == 3


def test_invalid_json_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('[\n  {"text_input": "1", "output": "2"},\n  {"text_input": "3",}\n]\n',
                    encoding="utf-8")
    (error,) = validate_dataset(path).errors
    assert error.startswith(f"{path}:3: invalid JSON: ")


@pytest.mark.parametrize("fmt", FORMATS)
def test_invalid_utf8_is_reported_with_its_line(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt, _good(30))
    lines = path.read_bytes().split(b"\n")
    bad_line = 4  # 1-based line of the file that gets a Latin-1 byte, inside a string
    line = lines[bad_line - 1]
    column = max(line.rfind(b'"'), 0)  # 0-based: inside the last value (CSV: the start)
    lines[bad_line - 1] = line[:column] + b"\xe9" + line[column:]
    path.write_bytes(b"\n".join(lines))
    errors = validate_dataset(path).errors
    assert errors == (f"{path}:{bad_line}: invalid UTF-8 (byte 0xe9 at column {column + 1}); "
                      "save the file as UTF-8",)


def test_records_that_are_not_objects_and_unknown_fields(tmp_path: Path) -> None:
    records: list[Any] = _good(30)
    records[3] = "just a string"
    records[5] = {"input": "5", "output": "6"}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    errors = validate_dataset(path).errors
    assert f'{path}: [3]: must be an object with "text_input" and "output", got string' in errors
    assert any(e.startswith(f"{path}: [5]: input: unknown field") for e in errors)


def test_json_file_must_hold_a_list(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text('{"text_input": "1", "output": "2"}', encoding="utf-8")
    (error,) = validate_dataset(path).errors
    assert error.startswith(f"{path}: the file must hold a JSON list") and "got object" in error


def test_csv_header_and_cell_count(tmp_path: Path) -> None:
    path = tmp_path / "bad_header.csv"
    path.write_text("input,output\n1,2\n", encoding="utf-8")
    (error,) = validate_dataset(path).errors
    assert error.startswith(f"{path}: row 1: header is 'input,output'")
    path = write(tmp_path, "csv", _good(30))
    path.write_text(path.read_text(encoding="utf-8") + "1,2,3\n", encoding="utf-8")
    (error,) = validate_dataset(path).errors
    assert error.startswith(f"{path}: row 32: 3 cells, the header has 2")


@pytest.mark.parametrize(("name", "expected"), [
    ("missing.jsonl", "no such file"), ("data.txt", "unsupported file type '.txt'"),
])
def test_unreadable_files(tmp_path: Path, name: str, expected: str) -> None:
    (tmp_path / "data.txt").write_text("1 -> 2\n", encoding="utf-8")
    path = tmp_path / name
    report = validate_dataset(path)
    assert report.errors == (f"{path}: {expected}",) or report.errors[0].startswith(
        f"{path}: {expected}")
    assert len(report.errors) == 1  # no "0 examples" noise on top


# --- warnings ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_fewer_than_100_examples_warns(tmp_path: Path, fmt: str) -> None:
    path = write(tmp_path, fmt, _good(60))
    report = validate_dataset(path)
    assert report.is_valid
    assert report.warnings == (f"{path}: 60 examples; at least 100 are recommended (the guide "
                               "suggests 100-500) for a model that generalises",)
    assert validate_dataset(write(tmp_path, fmt, _good(100), name="big")).warnings == ()


@pytest.mark.parametrize("fmt", FORMATS)
def test_exact_duplicates_warn_with_both_locations(tmp_path: Path, fmt: str) -> None:
    records = _good(120)
    records[40] = dict(records[7])
    records[41] = {"text_input": records[7]["text_input"], "output": "other"}  # not exact
    path = write(tmp_path, fmt, records)
    report = validate_dataset(path)
    assert report.is_valid
    (warning,) = report.warnings
    assert warning.startswith(f"{where(path, fmt, 40)}: duplicate of {where(path, fmt, 7)} ")


@pytest.mark.parametrize("fmt", FORMATS)
def test_inconsistent_prompt_format_warns_at_each_odd_input(tmp_path: Path, fmt: str) -> None:
    records = [{"text_input": f"question: what follows {i}?\ncontext: counting",
                "output": str(i + 1)} for i in range(120)]
    records[3]["text_input"] = "what follows 3?"
    records[50]["text_input"] = "question: what follows 50?"
    path = write(tmp_path, fmt, records)
    report = validate_dataset(path)
    assert report.is_valid
    assert len(report.warnings) == 2
    first = only(report.warnings, where(path, fmt, 3) + ":")
    assert 'format (no labels) differs from "question: context:" used by 118 of 120' in first
    second = only(report.warnings, where(path, fmt, 50) + ":")
    assert 'format "question:" differs' in second


def test_times_and_urls_are_not_taken_for_prompt_labels(tmp_path: Path) -> None:
    records = _good(120)
    records[1]["text_input"] = "meet at 10:30"
    records[2]["text_input"] = "see https://example.org"
    assert validate_dataset(write(tmp_path, "jsonl", records)).warnings == ()


# --- preamble, split, hash ---------------------------------------------------------------


def test_preamble_is_kept_apart_and_applied_by_prepared(tmp_path: Path) -> None:
    dataset = load_dataset(write(tmp_path, "jsonl", _good(30)), preamble="Next number: ")
    assert dataset.preamble == "Next number: "
    assert dataset.examples[0].text_input == "0"
    assert dataset.prepared()[0] == Example(output="1", text_input="Next number: 0")
    assert dataset.tokens_per_epoch() > load_dataset(dataset.path).tokens_per_epoch()


def _dataset(n: int) -> Dataset:
    examples = tuple(Example(output=str(i + 1), text_input=str(i)) for i in range(n))
    return Dataset(path=Path("x.jsonl"), examples=examples, preamble="", content_hash="h")


def test_split_is_deterministic_by_seed_and_a_partition() -> None:
    dataset = _dataset(240)
    train, validation = dataset.split(0.2, seed=7)
    assert (train, validation) == dataset.split(0.2, seed=7)
    assert len(validation) == 48 and len(train) == 192
    assert set(train) | set(validation) == set(dataset.examples)
    assert not set(train) & set(validation)
    assert dataset.split(0.2, seed=8)[1] != validation
    assert dataset.split(0.0, seed=7) == (dataset.examples, ())


def test_split_always_leaves_training_examples() -> None:
    train, validation = _dataset(20).split(0.99, seed=0)
    assert len(train) == 1 and len(validation) == 19


def test_content_hash_is_stable_and_tracks_examples_and_preamble(tmp_path: Path) -> None:
    records = _good(30)
    first = load_dataset(write(tmp_path, "jsonl", records, name="a")).content_hash
    assert load_dataset(write(tmp_path, "jsonl", records, name="b")).content_hash == first
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    changed = [dict(r) for r in records]
    changed[10]["output"] = "eleven"
    assert load_dataset(write(tmp_path, "jsonl", changed, name="c")).content_hash != first
    with_preamble = load_dataset(write(tmp_path, "jsonl", records, name="d"), preamble="N: ")
    assert with_preamble.content_hash != first


# --- per-backend limits --------------------------------------------------------------------


def test_gemini_api_inline_request_over_4_mb_states_its_size(tmp_path: Path) -> None:
    # 110 inputs of 38,000 characters: each within the per-example limit, 4.18 MB in all.
    records = [{"text_input": f"{i} " + "x" * 38_000, "output": str(i)} for i in range(110)]
    path = write(tmp_path, "jsonl", records)
    assert validate_dataset(path, backend="local").errors == ()
    (error,) = validate_dataset(path, backend="gemini-api").errors
    match = re.search(r"would be ([\d.]+) MB \(([\d,]+) bytes\), over the 4 MB", error)
    assert match, error
    n_bytes = int(match.group(2).replace(",", ""))
    payload = sum(len(r["text_input"]) + len(r["output"]) for r in records)
    assert payload < n_bytes < payload + 40 * len(records) + 1000  # the body's own overhead
    assert float(match.group(1)) == pytest.approx(n_bytes / 1e6, abs=0.01)
    assert error.startswith(f"{path}: ")


def test_gemini_api_limit_counts_only_the_training_split(tmp_path: Path) -> None:
    records = [{"text_input": f"{i} " + "x" * 38_000, "output": str(i)} for i in range(110)]
    path = write(tmp_path, "jsonl", records)
    assert validate_dataset(path, backend="gemini-api", validation_split=0.2).errors == ()


def test_vertex_caps_the_validation_split_at_5000(tmp_path: Path) -> None:
    path = write(tmp_path, "jsonl", _good(6_000))
    errors = validate_dataset(path, backend="vertex", validation_split=0.9).errors
    assert errors == (f"{path}: validation_split 0.9 gives 5,400 validation examples, over "
                      "the 5,000 limit; lower validation_split",)
    assert validate_dataset(path, backend="vertex", validation_split=0.5).errors == ()
    assert validate_dataset(path, backend="local", validation_split=0.9).errors == ()


def test_a_split_that_leaves_too_few_training_examples(tmp_path: Path) -> None:
    path = write(tmp_path, "jsonl", _good(30))
    (error,) = validate_dataset(path, validation_split=0.5).errors
    assert error == (f"{path}: validation_split 0.5 leaves 15 training examples; at least "
                     "20 are needed")


def test_vertex_training_file_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1 GB is too big for a unit test: shrink the limit, keep the rule.
    monkeypatch.setattr(dataset_module, "limits_for",
                        lambda kind: DatasetLimits(max_jsonl_bytes=2_000))
    path = write(tmp_path, "jsonl", _good(120))
    (error,) = validate_dataset(path, backend="vertex").errors
    match = re.fullmatch(rf"{re.escape(str(path))}: the training JSONL would be [\d.]+ KB "
                         r"\(([\d,]+) bytes\), over the 2 KB \(2,000 bytes\) limit", error)
    assert match, error
    assert int(match.group(1).replace(",", "")) > 120 * len('{"contents": []}')


def test_request_size_never_underestimates_what_the_gemini_api_backend_sends() -> None:
    examples = tuple(Example(output=f"sortie {i} é 🙂", text_input=f"entrée {i} \"q\"\n")
                     for i in range(50))
    request = JobRequest(train=examples, epochs=5, learning_rate_multiplier=1.0,
                         base_model="models/gemini-1.5-flash-001-tuning",
                         display_name="a sweep with a long name, trial 17",
                         idempotency_key="sweep-17", batch_size=16)
    body = tuned_model_body(request)
    sent = len(json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
    estimate = gemini_api_request_bytes(examples)
    assert sent <= estimate <= sent + 100


# --- only regular files; empty inputs; the data a sweep began with ------------------------


def _validate_in_child(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # In a child with a timeout: reading a FIFO or /dev/zero by mistake never returns.
    return subprocess.run([sys.executable, "-c", "from sweeps.cli import main; main()",
                           "validate", str(path), *extra], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero"])
def test_only_a_regular_file_is_read_as_a_dataset(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "data.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    done = _validate_in_child(path)
    assert done.returncode == 2, done.stdout + done.stderr
    expected = "a FIFO (named pipe)" if kind == "fifo" else "a character device"
    assert f"is {expected}, not a regular file" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr


def _empty_inputs(folder: Path, n_examples: int = 24) -> Path:
    path = folder / "data.jsonl"
    rows = [{"text_input": "" if i % 2 else "  ", "output": f"answer {i}"}
            for i in range(n_examples)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_an_empty_input_is_flagged_with_its_line(tmp_path: Path) -> None:
    path = _empty_inputs(tmp_path)
    report = validate_dataset(path, backend="gemini-api")  # the input is optional there
    assert report.is_valid
    assert any(w.startswith(f"{path}:1: text_input: empty") for w in report.warnings)
    assert any(w.startswith(f"{path}:20: text_input: empty") for w in report.warnings)
    assert "... and 4 more empty text_input warnings" in report.warnings

    vertex = validate_dataset(path, backend="vertex")  # a user turn needs text
    assert not vertex.is_valid
    assert vertex.errors[0].startswith(f"{path}:1: text_input: missing or empty")
    assert validate_dataset(path, backend="vertex", preamble="Answer: ").is_valid


def test_a_sweep_refuses_a_dataset_changed_since_it_began(make_config, clock,
                                                          tmp_path: Path) -> None:
    from sweeps.engine.runner import run_sweep
    from sweeps.tracking.tracker import NullTracker
    from tests.sweeps_tests.fake_backend import FakeBackend

    config = make_config(n_trials=2, concurrency=1)
    run_sweep(config, backend=FakeBackend(clock=clock), tracker=NullTracker(), clock=clock,
              sleep=clock.sleep)
    with (tmp_path / "data.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text_input": "one more", "output": "example"}) + "\n")
    more = config.model_copy(update={"n_trials": 4})
    backend = FakeBackend(clock=clock)
    with pytest.raises(DatasetError, match=r"the dataset changed since sweep 'test-sweep' "
                                           r"began: content \(examples or preamble\): hash"):
        run_sweep(more, backend=backend, tracker=NullTracker(), clock=clock,
                  sleep=clock.sleep)
    assert backend.submits == []
