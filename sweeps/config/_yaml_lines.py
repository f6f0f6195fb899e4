"""Parse YAML and remember the line of every key, so config errors can point at the line.

The YAML is parsed once into a node tree (which knows lines) and built into Python data from
that same tree. Hostile input stays cheap: aliased nodes are walked once (a "billion laughs"
file is a few dozen nodes, not 10**9 paths), and nesting too deep for the parser is a
:class:`ConfigError`, as are control characters and unpaired surrogate escapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from sweeps.errors import ConfigError

#: YAML problems quote the input (an alias name, a tag); keep such quotes short.
_MAX_PROBLEM_CHARS = 200
_UNPAIRED_SURROGATE = ("contains an unpaired surrogate escape (a \\ud800-\\udfff escape "
                       "without its pair); fix the escape")


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that reads a surrogate-pair escape (``"\\ud83d\\ude00"``) as the one
    character it spells, as JSON does; PyYAML would keep two unencodable halves."""


def _construct_str(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    return join_surrogate_pairs(loader.construct_scalar(node))


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    # Python refuses to read an integer of more than 4,300 digits (a CPU guard); no setting
    # takes one, so it is a YAML error with its line like any other.
    try:
        return int(loader.construct_yaml_int(node))
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, "an integer too long to be a number (over 4,300 digits)",
            node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:str", _construct_str)
_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def join_surrogate_pairs(text: str) -> str:
    """``text`` with each high+low surrogate pair made one character; a lone half stays."""
    if _is_encodable(text):
        return text
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        return text  # a lone half: _walk refuses it with its line


class LineMap:
    """Maps a key path (``("backend", "kind")``) to its 1-based line in the source."""

    def __init__(self, source: str = "<config>") -> None:
        self.source = source
        self._lines: dict[tuple[Any, ...], int] = {}

    def add(self, path: tuple[Any, ...], line: int) -> None:
        self._lines.setdefault(path, line)

    def has(self, path: Sequence[Any]) -> bool:
        """Whether the YAML holds exactly ``path`` (no fallback to an ancestor)."""
        return tuple(path) in self._lines

    def line_of(self, path: Sequence[Any]) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path[:-1]
        return None


def load_yaml_with_lines(text: str, *, source: str) -> tuple[Any, LineMap]:
    """``yaml.safe_load`` plus a :class:`LineMap` of every mapping key and sequence item.

    Raises:
        ConfigError: the text is not valid YAML (with the line and column of the problem),
            is nested too deeply, repeats a key, or holds an unpaired surrogate escape.
    """
    lines = LineMap(source)
    try:
        node, data = _parse(text)
        if node is not None:
            _walk(node, (), lines, set())
    except yaml.reader.ReaderError as exc:
        # A control character (NUL: often UTF-16 saved without a BOM) has a position, no mark.
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise ConfigError(f"{source} (line {line}): not valid YAML: {exc.reason} "
                          f"({_character(exc.character)} at column {column}); save the file "
                          "as UTF-8 text without control characters (a NUL often means "
                          "UTF-16)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"{source}{where}: not valid YAML: {_short(problem)}") from None
    except RecursionError:
        # PyYAML's composer recurses once per level: '[[[[...]]]]' thousands deep.
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    return data, lines


def _character(character: int | str | bytes) -> str:
    # PyYAML gives the code point for text input, the byte for bytes input.
    if isinstance(character, int):
        return f"U+{character:04X}"
    return repr(character)


def _short(text: str) -> str:
    if len(text) <= _MAX_PROBLEM_CHARS:
        return text
    return text[:_MAX_PROBLEM_CHARS] + "..."


def _parse(text: str) -> tuple[yaml.Node | None, Any]:
    """The node tree and the data built from it: one parse, as ``yaml.safe_load`` does it."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return node, data


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: LineMap, seen: set[int]) -> None:
    # An alias is the very node it names: walk each node once, so aliases cost nothing and
    # a self-reference ('a: &a [*a]') ends. Paths under an alias fall back to its key's line.
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        _walk_mapping(node, path, lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.add(path + (index,), item.start_mark.line + 1)
            _walk(item, path + (index,), lines, seen)
    elif isinstance(node, yaml.ScalarNode) and not _is_encodable(join_surrogate_pairs(
            node.value)):
        _refuse_surrogate(lines.source, path, node)


def _walk_mapping(node: yaml.MappingNode, path: tuple[Any, ...], lines: LineMap,
                  seen: set[int]) -> None:
    first_seen: dict[Any, int] = {}
    for key_node, value_node in node.value:
        key = key_node.value
        if isinstance(key, str):
            key = join_surrogate_pairs(key)  # as the data holds it
            if not _is_encodable(key):
                _refuse_surrogate(lines.source, path, key_node)
        line = key_node.start_mark.line + 1
        if key in first_seen:
            # PyYAML keeps the last of two equal keys: a silent override, so refuse it.
            raise ConfigError(
                f"{lines.source}: {_dotted((*path, key))} (line {line}): duplicate key; "
                f"first set on line {first_seen[key]}"
            )
        first_seen[key] = line
        lines.add(path + (key,), line)
        _walk(value_node, path + (key,), lines, seen)


def _refuse_surrogate(source: str, path: tuple[Any, ...], node: yaml.Node) -> None:
    # The path holds only encodable keys: a bad key is reported at its parent.
    raise ConfigError(f"{source}: {_dotted(path) or '(top level)'} "
                      f"(line {node.start_mark.line + 1}): {_UNPAIRED_SURROGATE}")


def _is_encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: a YAML ``"\\ud800"`` escape cannot."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _dotted(path: Sequence[Any]) -> str:
    return ".".join(str(part) for part in path)
