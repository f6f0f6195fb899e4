"""Vertex AI backend: Gemini supervised tuning with ``tuningJobs`` over REST.

(stub: being built under issue #7)
"""

from __future__ import annotations

from typing import Literal

from gemini_backend.base import BackendConfig


class VertexBackendConfig(BackendConfig):
    kind: Literal["vertex"] = "vertex"
