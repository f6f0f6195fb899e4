"""Write the example dataset of the seed's task: the next number in a sequence.

Inputs are numbers as digits ("8"), negatives ("-3"), with thousands separators ("1,000")
or in words ("twenty two", as the seed writes them: no hyphens, no "and"); the output is the
next number written the same way. The examples are distinct and the file is the same on
every run (fixed seed), so ``configs/data/next_number.jsonl`` can be regenerated and diffed::

    python scripts/make_next_number_dataset.py            # writes configs/data/next_number.jsonl
    python scripts/make_next_number_dataset.py --output /tmp/x.jsonl --seed 3
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "configs" / "data" / "next_number.jsonl"

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

# Edge cases a model must get right, always included: carries across digits and words.
_EDGES = {
    "digits": (0, 9, 19, 99, 199, 909),
    "negative": (-1, -10, -100, -1000, -1001, -10000),
    "thousands": (999, 1000, 1999, 9999, 99_999, 999_999, 10_100_000, 1_009_999),
    "words": (0, 9, 19, 29, 99, 109, 199, 999),
}
# How many examples of each kind (edges included): 240 in all.
_COUNTS = {"digits": 60, "negative": 50, "thousands": 60, "words": 70}


def number_to_words(n: int) -> str:
    """English words for 0 <= n < 1,000,000, written as the seed does ("two hundred one")."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"{n} is out of range for words")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_to_words(rest)}" if rest else "")
    thousands, rest = divmod(n, 1000)
    return f"{number_to_words(thousands)} thousand" + (f" {number_to_words(rest)}" if rest
                                                        else "")


_WRITERS: dict[str, Callable[[int], str]] = {
    "digits": str,
    "negative": lambda n: f"{n:,}",
    "thousands": lambda n: f"{n:,}",
    "words": number_to_words,
}
_DRAWS: dict[str, Callable[[random.Random], int]] = {
    "digits": lambda rng: rng.choice((rng.randint(0, 99), rng.randint(100, 998))),
    "negative": lambda rng: -rng.choice((rng.randint(1, 99), rng.randint(100, 99_999))),
    "thousands": lambda rng: rng.choice((rng.randint(1000, 999_999),
                                         rng.randint(1_000_000, 99_999_999))),
    "words": lambda rng: rng.choice((rng.randint(0, 99), rng.randint(100, 998))),
}


def _examples_of(kind: str, rng: random.Random) -> Iterator[dict[str, str]]:
    write = _WRITERS[kind]
    chosen = list(_EDGES[kind])
    while len(chosen) < _COUNTS[kind]:
        n = _DRAWS[kind](rng)
        if n not in chosen:
            chosen.append(n)
    for n in chosen:
        yield {"text_input": write(n), "output": write(n + 1)}


def make_examples(*, seed: int = 0) -> list[dict[str, str]]:
    """The examples, distinct and in a fixed shuffled order for ``seed``."""
    rng = random.Random(seed)
    examples = [e for kind in _COUNTS for e in _examples_of(kind, rng)]
    unique = list({e["text_input"]: e for e in examples}.values())
    rng.shuffle(unique)
    return unique


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    examples = make_examples(seed=args.seed)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w", encoding="utf-8", newline="\n") as out:
        for example in examples:
            out.write(json.dumps(example, ensure_ascii=False) + "\n")
    print(f"wrote {len(examples)} examples to {args.output}")


if __name__ == "__main__":
    main()
