"""Replay backend: jobs that play back recorded loss curves, for free, offline experiments
with sweep policies.
"""

from gemini_backend.replay.backend import ReplayBackend
from gemini_backend.replay.backend import ReplayBackendConfig
from gemini_backend.replay.backend import ReplayPoint
from gemini_backend.replay.backend import ReplayRecord
from gemini_backend.replay.backend import load_curves
from gemini_backend.replay.backend import nearest_record
from gemini_backend.replay.backend import write_curves_file

__all__ = [
    "ReplayBackend",
    "ReplayBackendConfig",
    "ReplayPoint",
    "ReplayRecord",
    "load_curves",
    "nearest_record",
    "write_curves_file",
]
