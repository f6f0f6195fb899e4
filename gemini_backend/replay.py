"""Replay backend: serves recorded loss curves so sweep policies can be tried at no cost.

(stub: being built under issue #4)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gemini_backend.base import BackendConfig


class ReplayBackendConfig(BackendConfig):
    kind: Literal["replay"] = "replay"
    curves: Path
    time_scale: float = Field(default=1.0, ge=0.0)
