"""The local backend's default base model: a small byte-level causal transformer.

Defined here so nothing is downloaded: the vocabulary is the 256 byte values plus three
special tokens, and an example is trained as ``input + SEP + output + EOS`` with the loss on
``output + EOS`` only. With the default size (about 0.1 M parameters) one trial on a few
hundred short examples takes seconds on two CPU cores.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from gemini_backend.base import Example
from gemini_backend.local._jobdir import TrainSettings
from gemini_backend.local._train import EncodedExample

logger = logging.getLogger(__name__)

SEP_ID = 256
EOS_ID = 257
PAD_ID = 258
VOCAB_SIZE = 259


class ByteTransformer(nn.Module):
    """Token + position embeddings, pre-norm causal encoder layers, a linear head."""

    def __init__(self, *, d_model: int, n_layers: int, n_heads: int, max_seq_len: int) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB_SIZE, d_model)
        self.position_embedding = nn.Embedding(max_seq_len, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward=4 * d_model, dropout=0.0,
            batch_first=True, norm_first=True,
        )
        # Nested tensors are an inference fast path; disabled so train and eval agree.
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB_SIZE)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        hidden = self.token_embedding(input_ids) + self.position_embedding(positions)
        mask = nn.Transformer.generate_square_subsequent_mask(length)
        hidden = self.layers(hidden, mask=mask, is_causal=True)
        logits: torch.Tensor = self.head(self.norm(hidden))
        return logits


class ByteModel:
    """:class:`~gemini_backend.local._train.TunableModel` over :class:`ByteTransformer`."""

    def __init__(self, settings: TrainSettings) -> None:
        self.pad_id = PAD_ID
        self.max_seq_len = settings.max_seq_len
        self.max_new_tokens = settings.max_new_tokens
        self.module: nn.Module = ByteTransformer(
            d_model=settings.d_model, n_layers=settings.n_layers,
            n_heads=settings.n_heads, max_seq_len=settings.max_seq_len,
        )

    def prompt_ids(self, text_input: str | None) -> list[int]:
        """``input + SEP``, the input cut from the left so the output keeps room."""
        room = max(self.max_seq_len // 2, self.max_seq_len - self.max_new_tokens) - 1
        raw = list((text_input or "").encode("utf-8"))[-room:] if room > 0 else []
        return raw + [SEP_ID]

    def encode(self, example: Example) -> EncodedExample:
        prompt = self.prompt_ids(example.text_input)
        output = list(example.output.encode("utf-8")) + [EOS_ID]
        ids = (prompt + output)[: self.max_seq_len]
        return EncodedExample(ids=tuple(ids), output_start=len(prompt))

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Right padding under a causal mask never reaches earlier positions: no mask needed.
        del attention_mask
        logits: torch.Tensor = self.module(input_ids)
        return logits

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.module.state_dict(), tmp)
        tmp.replace(path)

    @classmethod
    def load(cls, settings: TrainSettings, weights: Path) -> ByteModel:
        model = cls(settings)
        model.module.load_state_dict(torch.load(weights, weights_only=True))
        model.module.eval()
        return model

    @torch.no_grad()
    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy decoding until EOS, ``max_new_tokens`` or the context is full."""
        self.module.eval()
        return [self._generate_one(prompt) for prompt in prompts]

    def _generate_one(self, prompt: str) -> str:
        ids = self.prompt_ids(prompt)
        produced: list[int] = []
        while len(produced) < self.max_new_tokens and len(ids) < self.max_seq_len:
            logits = self.module(torch.tensor([ids], dtype=torch.long))
            next_id = int(logits[0, -1].argmax())
            if next_id == EOS_ID:
                break
            if next_id < 256:
                produced.append(next_id)
            ids.append(next_id)
        return bytes(produced).decode("utf-8", errors="replace")
