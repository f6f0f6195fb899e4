"""Parse YAML and remember the line of every key, so config errors can point at the line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from sweeps.errors import ConfigError


class LineMap:
    """Maps a key path (``("backend", "kind")``) to its 1-based line in the source."""

    def __init__(self, source: str = "<config>") -> None:
        self.source = source
        self._lines: dict[tuple[Any, ...], int] = {}

    def add(self, path: tuple[Any, ...], line: int) -> None:
        self._lines.setdefault(path, line)

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
        ConfigError: the text is not valid YAML (with the line and column of the problem).
    """
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{source}{where}: not valid YAML: {problem}") from None
    lines = LineMap(source)
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def _walk(node: yaml.Node, path: tuple[Any, ...], lines: LineMap) -> None:
    if isinstance(node, yaml.MappingNode):
        first_seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in first_seen:
                # PyYAML keeps the last of two equal keys: a silent override, so refuse it.
                where = ".".join(str(p) for p in (*path, key))
                raise ConfigError(
                    f"{lines.source}: {where} (line {line}): duplicate key; "
                    f"first set on line {first_seen[key]}"
                )
            first_seen[key] = line
            lines.add(path + (key,), line)
            _walk(value_node, path + (key,), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.add(path + (index,), item.start_mark.line + 1)
            _walk(item, path + (index,), lines)
