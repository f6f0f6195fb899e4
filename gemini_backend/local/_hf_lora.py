"""Tuning a local Hugging Face causal language model (e.g. a downloaded Gemma) with LoRA.

Used when ``base_model`` is a directory holding a ``transformers`` checkpoint and tokenizer.
Only the LoRA adapters train (``peft``, every linear layer but the head); each epoch's adapter
is saved with ``save_pretrained`` so it stays small. Needs the ``local`` and ``hf`` extras
(``pip install 'gemini-sweep[local,hf]'``). Nothing is downloaded: files load with
``local_files_only=True``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gemini_backend.base import Example
from gemini_backend.errors import InvalidRequestError
from gemini_backend.local._jobdir import TrainSettings
from gemini_backend.local._train import EncodedExample

logger = logging.getLogger(__name__)


def _import_hf() -> tuple[Any, Any, Any]:
    try:
        import peft
        import transformers
    except ImportError as exc:
        raise InvalidRequestError(
            "base_model: a Hugging Face model directory needs transformers and peft: "
            "pip install 'gemini-sweep[local,hf]'"
        ) from exc
    return transformers.AutoModelForCausalLM, transformers.AutoTokenizer, peft


class HfLoraModel:
    """:class:`~gemini_backend.local._train.TunableModel` over a LoRA-wrapped HF model."""

    def __init__(self, settings: TrainSettings, *, adapter: Path | None = None) -> None:
        auto_model, auto_tokenizer, peft = _import_hf()
        self.max_seq_len = settings.max_seq_len
        self.max_new_tokens = settings.max_new_tokens
        self.tokenizer = auto_tokenizer.from_pretrained(
            settings.base_model, local_files_only=True
        )
        if self.tokenizer.eos_token_id is None:
            raise InvalidRequestError(
                f"base_model: the tokenizer in {settings.base_model} has no eos_token; "
                "set one in its tokenizer_config.json"
            )
        self.pad_id: int = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        )
        # float32 after loading (not a dtype argument, whose name changed in transformers
        # 4.56): CPU training in bf16/fp16 checkpoints' dtypes is slow or unsupported.
        base = auto_model.from_pretrained(settings.base_model, local_files_only=True)
        base = base.to(torch.float32)
        if adapter is None:
            lora = peft.LoraConfig(
                r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
                target_modules="all-linear", task_type="CAUSAL_LM",
            )
            self.module: Any = peft.get_peft_model(base, lora)  # a PeftModel (nn.Module)
        else:
            self.module = peft.PeftModel.from_pretrained(base, str(adapter))
            self.module.eval()

    def prompt_ids(self, text_input: str | None) -> list[int]:
        ids = list(self.tokenizer(text_input or "")["input_ids"])
        room = max(self.max_seq_len // 2, self.max_seq_len - self.max_new_tokens)
        return ids[-room:]

    def encode(self, example: Example) -> EncodedExample:
        prompt = self.prompt_ids(example.text_input)
        output = list(self.tokenizer(example.output, add_special_tokens=False)["input_ids"])
        ids = (prompt + output + [self.tokenizer.eos_token_id])[: self.max_seq_len]
        return EncodedExample(ids=tuple(ids), output_start=len(prompt))

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        output = self.module(input_ids=input_ids, attention_mask=attention_mask)
        logits: torch.Tensor = output.logits
        return logits

    def save(self, path: Path) -> None:
        """Save the adapter to ``path`` (a directory) via a temporary sibling and a rename."""
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.module.save_pretrained(str(tmp))
        tmp.replace(path)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str]) -> list[str]:
        """Greedy decoding, one prompt at a time (no padding side effects)."""
        answers = []
        for prompt in prompts:
            ids = torch.tensor([self.prompt_ids(prompt)], dtype=torch.long)
            out = self.module.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
            answers.append(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return answers
