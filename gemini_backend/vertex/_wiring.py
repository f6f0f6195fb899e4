"""The network side of the Vertex backend: hosts, REST clients, uploader and curve reader.

Built on the backend's first call, never in ``from_config``, so that loading a config never
touches the network or the credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from typing import Any

import requests

from gemini_backend.transport.http import RestClient
from gemini_backend.transport.retry import Backoff
from gemini_backend.vertex._creates import CreateLedger
from gemini_backend.vertex._gcs import DEFAULT_STORAGE_URL
from gemini_backend.vertex._gcs import GcsUploader
from gemini_backend.vertex._metrics import TensorboardCurveReader

if TYPE_CHECKING:
    from gemini_backend.vertex.backend import VertexBackendConfig

MULTI_REGION_HOSTS = {"us": "https://aiplatform.us.rep.googleapis.com",
                      "eu": "https://aiplatform.eu.rep.googleapis.com"}
GLOBAL_HOST = "https://aiplatform.googleapis.com"


def vertex_base_url(location: str) -> str:
    """The API host for ``location`` (reference section 2.1, google-genai's mapping: ``global``
    is ``aiplatform.googleapis.com``, not ``global-aiplatform...``)."""
    if location == "global":
        return GLOBAL_HOST
    return MULTI_REGION_HOSTS.get(location, f"https://{location}-aiplatform.googleapis.com")


@dataclass(frozen=True, slots=True)
class Wiring:
    """One authorised session shared by the Vertex and Cloud Storage clients."""

    vertex: RestClient
    uploader: GcsUploader
    curves: TensorboardCurveReader
    creates: CreateLedger


def build_wiring(config: VertexBackendConfig, *, session: requests.Session, backoff: Backoff,
                 sleep: Callable[[float], None]) -> Wiring:
    common: dict[str, Any] = {"session": session, "timeout_s": config.timeout_s,
                              "backoff": backoff, "sleep": sleep}
    vertex = RestClient(config.base_url or vertex_base_url(config.location), **common)
    storage = RestClient(config.storage_base_url or DEFAULT_STORAGE_URL, **common)
    uploader = GcsUploader(storage, config.bucket,
                           resumable_threshold_bytes=config.resumable_threshold_bytes)
    return Wiring(vertex=vertex, uploader=uploader,
                  curves=TensorboardCurveReader(vertex, api_version=config.api_version),
                  creates=CreateLedger(uploader, prefix=config.create_records_prefix))
