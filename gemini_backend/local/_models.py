"""Which model class serves a job's ``base_model``: the byte transformer or a LoRA'd HF model."""

from __future__ import annotations

from pathlib import Path

import torch

from gemini_backend.local._hf_lora import HfLoraModel
from gemini_backend.local._jobdir import TrainSettings
from gemini_backend.local.byte_model import ByteModel


def build_model(settings: TrainSettings) -> ByteModel | HfLoraModel:
    """A fresh model to tune; its random init (LoRA's too) follows ``settings.seed``."""
    torch.manual_seed(settings.seed)
    if settings.is_byte_model:
        return ByteModel(settings)
    return HfLoraModel(settings)


def load_tuned_model(settings: TrainSettings, weights: Path) -> ByteModel | HfLoraModel:
    """The tuned model saved at ``weights`` (a state-dict file or an adapter directory)."""
    if settings.is_byte_model:
        return ByteModel.load(settings, weights)
    return HfLoraModel(settings, adapter=weights)


def weights_name(settings: TrainSettings, epoch: int) -> str:
    """File (byte model) or directory (LoRA adapter) name of an epoch's weights."""
    return f"epoch-{epoch}.pt" if settings.is_byte_model else f"epoch-{epoch}"
