"""The supervised tuning loop the worker runs: AdamW, loss on the output tokens only.

Model-agnostic: a :class:`TunableModel` (the byte transformer or a LoRA-wrapped Hugging Face
model) turns examples into token ids and ids into logits; this module batches, steps, measures
validation loss and reports every step through callbacks, so the worker does the file I/O.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from gemini_backend.base import Example
from gemini_backend.base import LossSnapshot

logger = logging.getLogger(__name__)

#: Label value that ``cross_entropy`` skips: prompt and padding positions.
IGNORE_INDEX = -100


@dataclass(frozen=True, slots=True)
class EncodedExample:
    """Token ids of ``prompt + output``; the loss covers ``ids[output_start:]``."""

    ids: tuple[int, ...]
    output_start: int


class TunableModel(Protocol):
    """What the loop needs from a model (see ``byte_model`` and ``_hf_lora``)."""

    module: nn.Module
    pad_id: int

    def encode(self, example: Example) -> EncodedExample: ...

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...

    def save(self, path: Path) -> None: ...


@dataclass(frozen=True, slots=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    n_tokens: int


def collate(examples: Sequence[EncodedExample], pad_id: int) -> Batch:
    """Right-pad a batch; labels are the ids on output positions and ignored elsewhere."""
    width = max(len(e.ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        ids = torch.tensor(example.ids, dtype=torch.long)
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
        labels[row, example.output_start : len(ids)] = ids[example.output_start :]
    n_tokens = sum(len(e.ids) for e in examples)
    return Batch(input_ids, attention_mask, labels, n_tokens)


def batch_loss(model: TunableModel, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the batch's output tokens."""
    logits = model.logits(batch.input_ids, batch.attention_mask)
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def make_batches(
    examples: Sequence[EncodedExample], batch_size: int, *, pad_id: int,
    generator: torch.Generator | None = None,
) -> list[Batch]:
    """Batches in a shuffled order drawn from ``generator`` (in order when it is ``None``)."""
    order = (
        torch.randperm(len(examples), generator=generator).tolist()
        if generator is not None else list(range(len(examples)))
    )
    return [
        collate([examples[i] for i in order[start : start + batch_size]], pad_id)
        for start in range(0, len(order), batch_size)
    ]


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


@torch.no_grad()
def validation_loss(model: TunableModel, batches: Sequence[Batch]) -> float:
    """Token-weighted mean output loss over the validation split."""
    model.module.eval()
    total, count = 0.0, 0
    for batch in batches:
        n_targets = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
        total += float(batch_loss(model, batch)) * n_targets
        count += n_targets
    model.module.train()
    return total / max(count, 1)


@dataclass(frozen=True, slots=True)
class LoopHooks:
    """How the loop reports to the worker: every step, every epoch's weights, and the stop
    check (a cancel) made before each step."""

    on_step: Callable[[LossSnapshot, int], None]
    on_epoch_end: Callable[[int, int], None]
    should_stop: Callable[[], bool]


def train(
    model: TunableModel,
    train_set: Sequence[EncodedExample],
    validation_set: Sequence[EncodedExample],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    hooks: LoopHooks,
) -> bool:
    """Run the tuning loop; returns False when ``should_stop`` ended it early."""
    generator = torch.Generator().manual_seed(seed)
    params = [p for p in model.module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate)
    val_batches = make_batches(validation_set, batch_size, pad_id=model.pad_id)
    model.module.train()
    step = 0
    for epoch in range(1, epochs + 1):
        batches = make_batches(train_set, batch_size, pad_id=model.pad_id, generator=generator)
        for index, batch in enumerate(batches):
            if hooks.should_stop():
                return False
            optimizer.zero_grad(set_to_none=True)
            loss = batch_loss(model, batch)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            step += 1
            eval_loss = None
            if index == len(batches) - 1 and val_batches:
                eval_loss = validation_loss(model, val_batches)
            hooks.on_step(LossSnapshot(step, epoch, float(loss), eval_loss), batch.n_tokens)
        hooks.on_epoch_end(epoch, step)
    return True
