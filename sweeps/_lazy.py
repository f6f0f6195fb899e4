"""Package ``__init__`` re-exports resolved on first use (PEP 562).

Every CLI command imports a light module (``sweeps.errors``, ``sweeps.engine.budget``); were a
package ``__init__`` to import its heavy modules eagerly, that would pull MLflow, Optuna and
plotting into ``gemini-sweep --help``. A package lists where each public name lives instead.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, homes: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``; ``homes`` maps each
    public name to the module that defines it."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *homes])

    return __getattr__, __dir__, list(homes)
