"""Vertex AI backend: Gemini supervised tuning with ``tuningJobs`` over REST, datasets in Cloud
Storage, the loss curve read from the job's TensorBoard.
"""

from gemini_backend.vertex.backend import VertexBackend
from gemini_backend.vertex.backend import VertexBackendConfig
from gemini_backend.vertex.backend import tuning_job_body
from gemini_backend.vertex.backend import vertex_base_url

__all__ = ["VertexBackend", "VertexBackendConfig", "tuning_job_body", "vertex_base_url"]
