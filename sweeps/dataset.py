"""Load and validate tuning examples (JSONL, JSON, CSV).

(minimal version: full validation is being built under issue #2; the public API below is the
contract other modules use)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from gemini_backend import Example
from sweeps.errors import DatasetError


def estimate_tokens(text: str) -> int:
    """Tokens a service would bill for ``text``: about 4 characters a token."""
    return math.ceil(len(text) / 4) if text else 0


@dataclass(frozen=True)
class Dataset:
    """Validated examples with their preamble and content hash.

    ``examples`` are as in the file; :meth:`prepared` applies the preamble, which is what
    every backend is sent and what production prompts must carry too.
    """

    path: Path
    examples: tuple[Example, ...]
    preamble: str
    content_hash: str
    warnings: tuple[str, ...] = ()

    def prepared(self, examples: tuple[Example, ...] | None = None) -> tuple[Example, ...]:
        chosen = self.examples if examples is None else examples
        if not self.preamble:
            return chosen
        return tuple(
            Example(output=e.output, text_input=self.preamble + (e.text_input or ""))
            for e in chosen
        )

    def split(
        self, validation_fraction: float, seed: int
    ) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
        """A deterministic (train, validation) split: same seed, same split."""
        if validation_fraction <= 0:
            return self.examples, ()
        order = list(range(len(self.examples)))
        random.Random(seed).shuffle(order)
        n_validation = max(1, round(len(order) * validation_fraction))
        validation = tuple(self.examples[i] for i in sorted(order[:n_validation]))
        train = tuple(self.examples[i] for i in sorted(order[n_validation:]))
        return train, validation

    def tokens_per_epoch(self, examples: tuple[Example, ...] | None = None) -> int:
        """Estimated training tokens of one pass over ``examples`` (preamble included)."""
        return sum(
            estimate_tokens(e.text_input or "") + estimate_tokens(e.output)
            for e in self.prepared(examples)
        )


def content_hash(examples: tuple[Example, ...], preamble: str) -> str:
    canonical = json.dumps(
        {"preamble": preamble, "examples": [[e.text_input, e.output] for e in examples]},
        ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def load_dataset(path: str | Path, *, preamble: str = "", backend: str = "local") -> Dataset:
    """Read ``path`` (by extension: .jsonl, .json, .csv) and validate it for ``backend``.

    Raises:
        DatasetError: listing every problem with file, line (or row / index) and field.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such dataset file", [f"{path}: no such file"])
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif path.suffix == ".json":
        rows = json.loads(text)
    else:
        rows = list(csv.DictReader(text.splitlines()))
    examples = tuple(Example(output=r["output"], text_input=r.get("text_input")) for r in rows)
    return Dataset(path=path, examples=examples, preamble=preamble,
                   content_hash=content_hash(examples, preamble))
