"""Which class serves a config's ``backend.kind``: the built-ins by name, others by import path."""

from __future__ import annotations

import importlib
import reprlib
from pathlib import Path

from gemini_backend.base import BackendConfig
from gemini_backend.base import BaseBackend
from gemini_backend.errors import InvalidRequestError

#: Built-in kinds, imported only when used (the local backend pulls in torch).
BUILTIN_BACKENDS: dict[str, str] = {
    "local": "gemini_backend.local:LocalBackend",
    "gemini-api": "gemini_backend.gemini_api:GeminiApiBackend",
    "vertex": "gemini_backend.vertex:VertexBackend",
    "replay": "gemini_backend.replay:ReplayBackend",
}
# A kind is user input: quote it in messages, shortened (it may be a 100,000-character typo).
_SHORT = reprlib.Repr()
_SHORT.maxstring = 120


def backend_class(kind: str) -> type[BaseBackend]:
    """The backend class for ``kind``: a built-in name or ``"package.module:Class"``.

    Raises:
        InvalidRequestError: the kind is neither, or the class cannot be imported.
    """
    target = BUILTIN_BACKENDS.get(kind, kind)
    shown = _SHORT.repr(kind)
    if ":" not in target:
        raise InvalidRequestError(
            f"unknown backend kind {shown}: use one of {sorted(BUILTIN_BACKENDS)} "
            "or an import path 'package.module:Class'"
        )
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        # Not only ImportError: a relative path ('.x:Y') raises TypeError, an empty one (':Y')
        # ValueError, and a third-party module may raise anything while it is imported.
        reason = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
        raise InvalidRequestError(
            f"backend kind {shown}: cannot import module {_SHORT.repr(module_name)} "
            f"({_SHORT.repr(reason)[1:-1]}); use 'package.module:Class'"
        ) from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseBackend)):
        raise InvalidRequestError(
            f"backend kind {shown}: {_SHORT.repr(target)} is not a subclass of "
            "gemini_backend.BaseBackend"
        )
    return cls


def config_model(kind: str) -> type[BackendConfig]:
    """The pydantic model that validates the ``backend:`` section for ``kind``."""
    return backend_class(kind).config_model


def create_backend(config: BackendConfig, *, base_dir: Path) -> BaseBackend:
    """Build the backend a validated config section describes."""
    return backend_class(config.kind).from_config(config, base_dir=base_dir)
