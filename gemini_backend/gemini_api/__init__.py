"""Gemini API backend: ``tunedModels`` on generativelanguage.googleapis.com with an API key."""

from gemini_backend.gemini_api.backend import GeminiApiBackend
from gemini_backend.gemini_api.backend import GeminiApiBackendConfig
from gemini_backend.gemini_api.backend import tuned_model_body
from gemini_backend.gemini_api.backend import tuned_model_id

__all__ = ["GeminiApiBackend", "GeminiApiBackendConfig", "tuned_model_body", "tuned_model_id"]
