"""Local backend: real fine-tuning on this machine, one OS process per job.

Importing this package does not import torch (the sweep's config loader imports
:class:`LocalBackendConfig`); torch loads in the job process, and in the sweep process only
inside :meth:`LocalBackend.generate`.
"""

from gemini_backend.local.backend import LocalBackend
from gemini_backend.local.backend import LocalBackendConfig

__all__ = ["LocalBackend", "LocalBackendConfig"]
