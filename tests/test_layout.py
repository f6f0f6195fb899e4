"""The package layout DESIGN.md fixes, and the import boundary between the two packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def test_both_packages_import_in_a_fresh_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import sweeps, gemini_backend; print('ok')"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_top_level_layout_matches_design() -> None:
    for folder in ("sweeps", "gemini_backend", "configs", "notebooks", "tests", "benchmarks"):
        assert (REPO_ROOT / folder).is_dir(), folder
    assert (REPO_ROOT / "pyproject.toml").is_file()


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_backends_know_nothing_of_optuna_mlflow_or_sweeps() -> None:
    offenders = []
    for path in (REPO_ROOT / "gemini_backend").rglob("*.py"):
        for name in _imported_modules(path):
            if name.split(".")[0] in {"optuna", "mlflow", "sweeps"}:
                offenders.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert offenders == []


def test_only_the_tracking_modules_import_mlflow() -> None:
    offenders = []
    for path in (REPO_ROOT / "sweeps").rglob("*.py"):
        uses_mlflow = any(n.split(".")[0] == "mlflow" for n in _imported_modules(path))
        is_tracking = path.is_relative_to(REPO_ROOT / "sweeps" / "tracking")
        if uses_mlflow and not is_tracking:
            offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == []


def _imported_names(path: Path) -> set[str]:
    """Modules imported, and ``module.name`` for each ``from module import name``."""
    names = _imported_modules(path)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _private_module_owner(name: str) -> str | None:
    """The package a ``_private`` module in ``name`` belongs to (``sweeps.engine`` for
    ``sweeps.engine._loop.X``), or None when ``name`` reaches no private module."""
    parts = name.split(".")
    for index, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def test_no_private_module_of_a_package_is_imported_from_outside_it() -> None:
    """Each package exposes what other code may use from its ``__init__`` and public
    modules; a ``_private`` module is for the modules of its own package (a private module at
    the top of ``sweeps`` serves all of ``sweeps``). Tests and benchmarks that time a
    backend's internals are exempt: they measure, they do not depend."""
    offenders = []
    roots = [REPO_ROOT / d for d in ("sweeps", "gemini_backend", "scripts", "notebooks")]
    for root in roots:
        for path in root.rglob("*.py"):
            for name in _imported_names(path):
                owner = _private_module_owner(name)
                if owner is None or owner.split(".")[0] not in {"sweeps", "gemini_backend"}:
                    continue
                if not path.is_relative_to(REPO_ROOT.joinpath(*owner.split("."))):
                    offenders.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert offenders == []


PACKAGES = ("sweeps", "gemini_backend")


def _top_level_modules(package: str) -> list[str]:
    return sorted(path.name for path in (REPO_ROOT / package).glob("*.py"))


def test_one_package_per_concept() -> None:
    """The folders show the architecture (DESIGN.md "Layout"): few modules at the top of
    each package, one subpackage per concept and per backend."""
    assert len(_top_level_modules("sweeps")) <= 10, _top_level_modules("sweeps")
    assert len(_top_level_modules("gemini_backend")) <= 8, _top_level_modules("gemini_backend")
    for concept in ("config", "data", "engine", "policy", "plateau", "tracking", "results",
                    "evaluation", "cli"):
        assert (REPO_ROOT / "sweeps" / concept / "__init__.py").is_file(), concept
    for backend in ("vertex", "gemini_api", "replay", "local", "transport"):
        assert (REPO_ROOT / "gemini_backend" / backend / "__init__.py").is_file(), backend


def test_every_package_says_what_it_is() -> None:
    for package in PACKAGES:
        for init in (REPO_ROOT / package).rglob("__init__.py"):
            docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
            assert docstring, f"{init.relative_to(REPO_ROOT)} has no docstring"


def _module_names() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_time_imports(body: list[ast.stmt], module: str, is_package: bool) -> set[str]:
    """What a module imports when it is imported: its top-level statements (through ``if``,
    ``try`` and ``with``), not function bodies nor ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    for node in body:
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                found |= _import_time_imports(node.body, module, is_package)
            found |= _import_time_imports(node.orelse, module, is_package)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody,
                          *(handler.body for handler in node.handlers)):
                found |= _import_time_imports(block, module, is_package)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            found |= _import_time_imports(node.body, module, is_package)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")
                parent = parent[:len(parent) - node.level + (1 if is_package else 0)]
                base = ".".join([*parent, base] if base else parent)
            # ``from package import module`` imports the module; ``from module import name``
            # the module only.
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module of both packages -> the modules of both packages it imports at import time."""
    modules = _module_names()

    def owner_module(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = _import_time_imports(tree.body, module, path.name == "__init__.py")
        # ``from package import module`` names the module; the package itself is only
        # the dotted prefix that leads to it.
        submodules = {name for name in imported if name in modules}
        prefixes = {name.rpartition(".")[0] for name in submodules}
        targets = {owner_module(name) for name in imported if name not in prefixes}
        graph[module] = {target for target in targets if target and target != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph.get(module, ())):
            if target in on_path:
                return path[path.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_no_import_cycle_between_modules() -> None:
    """Modules import each other one way only, so each reads on its own and a package's
    modules sit above the ones they use. Imports inside functions and under
    ``TYPE_CHECKING`` do not run at import time and are not counted."""
    graph = import_graph()
    assert "sweeps.engine._loop" in graph["sweeps.engine.runner"]  # the graph sees imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
