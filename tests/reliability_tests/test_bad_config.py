"""Bad sweep configs never crash: a config, or a ConfigError naming the file and,
for schema errors, the key path and its line; never another exception, never the API key.

Every config here holds a fake API key (``backend.api_key``) and goes through
:func:`check_config_file`, which also runs ``gemini-sweep validate CONFIG``. Bugs found are
``xfail(strict=True)`` with the fix in the reason.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck
from hypothesis import assume
from hypothesis import example
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from sweeps.cli import app
from sweeps.config.schema import SweepConfig
from sweeps.errors import ConfigError
from tests.reliability_tests._bad_files import BASE_CONFIG
from tests.reliability_tests._bad_files import BYTE_SOUP
from tests.reliability_tests._bad_files import FAKE_API_KEY
from tests.reliability_tests._bad_files import WRONG_VALUES
from tests.reliability_tests._bad_files import base_config
from tests.reliability_tests._bad_files import check_config_file
from tests.reliability_tests._bad_files import dotted
from tests.reliability_tests._bad_files import dump
from tests.reliability_tests._bad_files import get_at
from tests.reliability_tests._bad_files import leaf_paths
from tests.reliability_tests._bad_files import mapping_paths
from tests.reliability_tests._bad_files import runner
from tests.reliability_tests._bad_files import set_at
from tests.reliability_tests._bad_files import yaml_line

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LEAVES = list(leaf_paths(BASE_CONFIG))
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bad_configs")


def _write(folder: Path, content: str | bytes) -> Path:
    path = folder / "sweep.yaml"
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def _problems(error: SweepConfig | ConfigError) -> list[str]:
    assert isinstance(error, ConfigError), "expected the config to be rejected"
    return [line.strip() for line in str(error).splitlines()]


def test_the_base_config_loads(folder: Path) -> None:
    """The control: every bad config below is one change away from this valid one."""
    config = check_config_file(_write(folder, dump(base_config())))
    assert isinstance(config, SweepConfig) and config.backend.kind == "gemini-api"


@FUZZ
@example(raw=b"name: x\x00")
@given(raw=BYTE_SOUP | st.text(max_size=300).map(lambda text: text.encode("utf-8", "replace")))
def test_random_bytes_are_a_config_error(folder: Path, raw: bytes) -> None:
    assert isinstance(check_config_file(_write(folder, raw)), ConfigError)


@FUZZ
@given(cut=st.integers(0, len(dump(BASE_CONFIG).encode())))
def test_truncated_yaml_is_valid_or_names_file_key_and_line(folder: Path, cut: int) -> None:
    text = dump(base_config()).encode()[:cut].decode("utf-8", "ignore")
    path = _write(folder, text)
    result = check_config_file(path)
    if isinstance(result, ConfigError) and "invalid sweep config" in str(result):
        shape = re.compile(rf"{re.escape(str(path))}: (?P<key>\(top level\)|[a-z_][\w.]*)"
                           r"( \(line \d+\))?: \S.*")
        for problem in _problems(result)[1:]:
            match = shape.fullmatch(problem)
            assert match is not None, problem
            assert match["key"].split(".")[0] in {*BASE_CONFIG, "(top level)"}, problem


def _located(path: Path, text: str, leaf: tuple[Any, ...], problems: list[str]) -> bool:
    """Whether a problem names ``leaf`` (or a section holding it) with that key's line."""
    prefixes = [leaf[:n] for n in range(len(leaf), 0, -1)]
    return any(p.startswith(f"{path}: {dotted(prefix)} (line {yaml_line(text, prefix)}): ")
               for prefix in prefixes for p in problems)


@pytest.mark.parametrize("leaf", [pytest.param(leaf, id=dotted(leaf)) for leaf in LEAVES])
@pytest.mark.parametrize("wrong", [[1, 2], {"nested": {"object": 1}}], ids=["list", "object"])
def test_a_wrong_type_at_every_key_names_its_path_and_line(folder: Path, leaf: tuple[Any, ...],
                                                           wrong: Any) -> None:
    data = base_config()
    set_at(data, leaf, wrong)
    text = dump(data)
    path = _write(folder, text)
    problems = _problems(check_config_file(path))
    assert _located(path, text, leaf, problems), problems


@FUZZ
@given(leaf=st.sampled_from(LEAVES), value=WRONG_VALUES | st.text(max_size=20))
def test_any_value_anywhere_is_valid_or_located(folder: Path, leaf: tuple[Any, ...],
                                                value: Any) -> None:
    data = base_config()
    set_at(data, leaf, value)
    text = dump(data)
    path = _write(folder, text)
    result = check_config_file(path)
    if isinstance(result, ConfigError):
        assert _located(path, text, leaf, _problems(result)), str(result)


_KEY = st.from_regex(r"[a-z][a-z0-9_]{2,14}", fullmatch=True)
#: search_space's extra keys are backend knobs, not typos.
_STRICT_MAPPINGS = [m for m in mapping_paths(BASE_CONFIG) if m != ("search_space",)]


@FUZZ
@given(mapping=st.sampled_from(_STRICT_MAPPINGS), key=_KEY, value=WRONG_VALUES)
def test_an_unknown_key_at_any_depth_is_named_with_its_line(folder: Path,
                                                            mapping: tuple[Any, ...],
                                                            key: str, value: Any) -> None:
    data = base_config()
    assume(key not in get_at(data, mapping) and key not in {"value", "choices", "low", "step",
                                                            "high", "log"})
    get_at(data, mapping)[key] = value
    text = dump(data)
    path = _write(folder, text)
    problems = _problems(check_config_file(path))
    where = f"{path}: {dotted((*mapping, key))} (line {yaml_line(text, (*mapping, key))}): "
    assert any(p.startswith(where) and "unknown" in p for p in problems), problems


def test_an_unknown_pruner_key_is_named_with_its_line(folder: Path) -> None:
    data = base_config()
    data["pruner"]["patience_epochs"] = 3
    text = dump(data)
    path = _write(folder, text)
    line = yaml_line(text, ("pruner", "patience_epochs"))
    assert f"{path}: pruner.patience_epochs (line {line}): unknown key; check its spelling " \
           "against the documented keys" in _problems(check_config_file(path))


@FUZZ
@given(data=st.data())
def test_a_duplicate_key_at_any_depth_names_both_lines(folder: Path,
                                                       data: st.DataObject) -> None:
    lines = dump(base_config()).splitlines(keepends=True)
    index = data.draw(st.sampled_from([i for i, line in enumerate(lines)
                                       if ":" in line and not line.strip().startswith("-")]))
    lines.insert(index + 1, lines[index])  # same key, same indentation: a duplicate
    path = _write(folder, "".join(lines))
    problems = _problems(check_config_file(path))
    assert any(f"(line {index + 2}): duplicate key; first set on line {index + 1}" in p
               for p in problems), problems


_HUGE = "x" * 100_000
@pytest.mark.parametrize("leaf", [pytest.param(leaf, id=dotted(leaf)) for leaf in LEAVES])
def test_a_huge_string_is_not_echoed(folder: Path, leaf: tuple[Any, ...]) -> None:
    data = base_config()
    set_at(data, leaf, _HUGE)
    result = check_config_file(_write(folder, dump(data)))
    if isinstance(result, ConfigError):
        assert len(str(result)) < 2_000, str(result)[:300]


# --- encodings, tabs, bombs: short fixed tables ------------------------------------------------

_BASE_TEXT = dump(BASE_CONFIG)
_PREAMBLE_LINE = yaml_line(_BASE_TEXT, ("dataset", "preamble"))
ENCODING_CASES: list[Any] = [
    ("utf8-bom", b"\xef\xbb\xbf" + _BASE_TEXT.encode(), None, ""),
    ("crlf", _BASE_TEXT.replace("\n", "\r\n").encode(), None, ""),
    ("utf16-bom", _BASE_TEXT.encode("utf-16"), "error", "cannot be read as UTF-8"),
    # Without a BOM, UTF-16 of ASCII text is valid UTF-8 with NULs: a YAML reader error.
    ("utf16-le", _BASE_TEXT.encode("utf-16-le"), "error", "(line 1)"),
    ("latin1", _BASE_TEXT.replace("Q: ", "Qé: ").encode("latin-1"), "error",
     "cannot be read as UTF-8"),
    ("nul", _BASE_TEXT.replace("Q: ", "Q\x00").encode(), "error", f"(line {_PREAMBLE_LINE})"),
    ("tab-indent", _BASE_TEXT.replace("\n  epochs:", "\n\tepochs:").encode(), "error",
     f"(line {yaml_line(_BASE_TEXT, ('search_space', 'epochs'))}, column 1): not valid YAML"),
]


@pytest.mark.parametrize(("name", "raw", "expected", "needle"), ENCODING_CASES,
                         ids=[c[0] if isinstance(c, tuple) else None for c in ENCODING_CASES])
def test_odd_encodings(folder: Path, name: str, raw: bytes, expected: str | None,
                       needle: str) -> None:
    result = check_config_file(_write(folder, raw))
    if expected is None:
        assert isinstance(result, SweepConfig) and result.dataset.preamble == "Q: "
    else:
        assert isinstance(result, ConfigError) and needle in str(result), str(result)
        assert "\n" not in str(result), "a YAML error is one line"


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _hang_guard(limit_s: float) -> Iterator[None]:
    """Turn a hang into a failure: a bomb must be refused, not expanded (not a speed test;
    the fixed loader needs milliseconds to about 2 s for the deepest nesting). The limit is
    CPU time of this process (ITIMER_PROF): an expansion burns CPU, while a machine busy with
    other work only stretches the wall clock. pytest-timeout's alarm (ITIMER_REAL) is left
    alone."""
    def _raise(signum: int, frame: Any) -> None:
        raise _Hang(f"still running after {limit_s} s of CPU: the YAML was expanded")

    previous_handler = signal.signal(signal.SIGPROF, _raise)
    signal.setitimer(signal.ITIMER_PROF, limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous_handler)


def _laughs(levels: int) -> str:
    lines = ["x-lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"x-lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * 10) + "]"
              for i in range(1, levels + 1)]
    return _BASE_TEXT + "\n".join(lines) + "\n"


BOMBS = [
    pytest.param(_laughs(9), id="billion-laughs"),
    pytest.param(_BASE_TEXT + "x-self: &self [*self]\n", id="self-alias"),
    pytest.param(_BASE_TEXT.replace("n_trials: 4", "n_trials: " + "[" * 5000 + "]" * 5000),
                 id="deep-nesting"),
]


@pytest.mark.parametrize("text", BOMBS)
def test_yaml_bombs_are_refused_quickly(folder: Path, text: str) -> None:
    path = _write(folder, text)
    with _hang_guard(5):
        problems = _problems(check_config_file(path))
    assert problems[0].startswith(f"{path}") and FAKE_API_KEY not in "".join(problems)


def test_a_preamble_with_a_lone_surrogate_is_refused(folder: Path) -> None:
    (folder / "data.jsonl").write_text("".join(
        f'{{"text_input": "q{i}", "output": "a{i}"}}\n' for i in range(22)), encoding="utf-8")
    text = _BASE_TEXT.replace("preamble: 'Q: '", 'preamble: "Q\\ud800"')
    assert "ud800" in text
    result = runner.invoke(app, ["validate", str(_write(folder, text))])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert result.exit_code == 2 and "preamble" in result.output, result.output


@pytest.mark.parametrize("kind", [".x:Y", ":Y", "a..b:C",
                                  "os:path", "no_such_module_zz:Backend", "\x01:x", "é"])
def test_an_odd_backend_kind_is_a_located_error(folder: Path, kind: str) -> None:
    data = base_config()
    data["backend"] = {"kind": kind, "api_key": FAKE_API_KEY}
    text = dump(data)
    path = _write(folder, text)
    problems = _problems(check_config_file(path))
    assert any(p.startswith(f"{path}: backend (line {yaml_line(text, ('backend',))}): ")
               for p in problems), problems
