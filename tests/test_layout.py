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


def test_no_private_module_of_a_package_is_imported_from_outside_it() -> None:
    """``gemini_backend`` and ``sweeps`` expose what other code may use from their
    ``__init__`` and public modules; a ``_private`` module is theirs alone. Benchmarks that
    time a backend's internals (the local training kernel) are exempt: they measure, they do
    not depend."""
    offenders = []
    roots = [REPO_ROOT / d for d in ("sweeps", "gemini_backend", "scripts", "notebooks")]
    for root in roots:
        for path in root.rglob("*.py"):
            for name in _imported_names(path):
                parts = name.split(".")
                owner = parts[0]
                private = [p for p in parts[1:] if p.startswith("_")]
                inside = path.is_relative_to(REPO_ROOT / owner)
                if owner in {"sweeps", "gemini_backend"} and private and not inside:
                    offenders.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert offenders == []
