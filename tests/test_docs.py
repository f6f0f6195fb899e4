"""The documentation a newcomer follows: links that resolve, commands that match the project.

Every relative link and image in README.md, RELIABILITY.md and docs/*.md points at a file or
folder in the repository (links inside code are not links); the README's test command is the
one CI runs; every extra its install commands name exists in pyproject.toml.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DOCS = sorted([REPO_ROOT / "README.md", REPO_ROOT / "RELIABILITY.md",
               *(REPO_ROOT / "docs").glob("*.md")])
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_EXTERNAL = ("http://", "https://", "mailto:")


def relative_links(markdown: str) -> list[str]:
    prose = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    return [target for target in _LINK.findall(prose)
            if not target.startswith(_EXTERNAL) and not target.startswith("#")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in relative_links(doc.read_text(encoding="utf-8")):
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        inside = path == REPO_ROOT or REPO_ROOT in path.parents
        if not (inside and path.exists()):
            broken.append(target)
    assert broken == [], f"{doc.relative_to(REPO_ROOT)}: broken links {broken}"


def test_the_link_finder_skips_code_and_sees_images() -> None:
    text = ("[a](docs/x.md) ![img](docs/y.png) `[no](code.md)` [web](https://e.com)\n"
            "```\n[no](fenced.md)\n```\n[anchor](#top) [b](../outside.md#part)\n")
    assert relative_links(text) == ["docs/x.md", "docs/y.png", "../outside.md#part"]


def _readme_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return [line for line in readme.splitlines() if line.startswith("pip install ")]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_commands = [line for line in _readme_commands() if line.endswith("&& pytest")]
    assert len(test_commands) == 1, test_commands
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_commands[0] in ci


def test_the_readme_installs_only_extras_that_exist() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = set(project["project"]["optional-dependencies"])
    named = {extra for line in _readme_commands()
             for group in re.findall(r"\.\[([a-z,]+)\]", line) for extra in group.split(",")}
    assert named and named <= extras, named - extras
    quick_start = next(line for line in _readme_commands() if "gemini-sweep run" in line)
    assert "'.[local]'" in quick_start  # the quick start installs what it uses, no more
