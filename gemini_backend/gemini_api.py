"""Gemini API backend: ``tunedModels`` over REST with requests + google-auth.

(stub: being built under issue #6)
"""

from __future__ import annotations

from typing import Literal

from gemini_backend.base import BackendConfig


class GeminiApiBackendConfig(BackendConfig):
    kind: Literal["gemini-api"] = "gemini-api"
