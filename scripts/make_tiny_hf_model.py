"""Build a tiny randomly initialised Hugging Face causal LM and its tokenizer, offline.

No hub download: a one- or two-layer Llama from ``transformers``' config classes and a
byte-level BPE tokenizer with no merges (every byte a token), saved with ``save_pretrained``
so the local backend can tune it with LoRA (``base_model: <dir>``). Random weights make it a
second model family for recording curves (different architecture, tokenizer and adapter
training than the byte transformer), not a pretrained model.

Usage::

    python scripts/make_tiny_hf_model.py models/tiny-llama [--hidden 64 --layers 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def save_tiny_hf_model(folder: Path, *, hidden: int = 64, layers: int = 2,
                       heads: int = 4, seed: int = 0) -> Path:
    """Write the model and tokenizer into ``folder`` (created); returns it."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers import decoders
    from tokenizers import models
    from tokenizers import pre_tokenizers
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    ).save_pretrained(folder)
    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )).save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    path = save_tiny_hf_model(args.folder, hidden=args.hidden, layers=args.layers,
                              heads=args.heads)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
