"""Record real loss curves for the replay backend: curve sets of real local jobs.

A curve set is one task trained on a grid (batch sizes x learning-rate multipliers x seeds,
every job the same number of epochs) by one local model family: the byte transformer of
:mod:`gemini_backend.local` (``--model byte-transformer``) or a Hugging Face causal LM tuned
with LoRA (``--model DIR``; ``scripts/make_tiny_hf_model.py`` builds a tiny random one
offline). The file is written in the replay format with each job's real tokens per epoch,
step times and duration; the seed (weights' init and data order) is kept in ``seed``.

Three splits: the jobs train on ``train`` and report their validation loss on
``validation`` (what sweeps select on); each epoch's saved weights are then scored on a
``test`` split nothing selects on, stored as every epoch-end point's ``test_loss``, which
``benchmarks/cost_efficiency.py`` judges quality by.

The local backend trains with a constant learning rate and a fixed data order per seed, so
the first k epochs of a recording are exactly a k-epoch job: the replay's truncation is
faithful.

Usage::

    python scripts/record_curve_sets.py --task sort_letters --epochs 12 \
        --batch-sizes 2 4 8 16 --multipliers 0.1 0.3 1 3 10 --seeds 0 1 2 \
        --out configs/data/curves_sort_letters.json
    python scripts/make_tiny_hf_model.py models/tiny-llama
    python scripts/record_curve_sets.py --plan scripts/curve_sets_plan.json   # unattended

A plan is a JSON list of sets, each with the options above as keys (``task``, ``model``,
``epochs``, ``batch_sizes``, ``multipliers``, ``seeds``, ``out``); a set whose ``out`` exists
is skipped, so a plan interrupted halfway resumes where it stopped. Tasks: the generators
below (a dataset is written to ``configs/data/<task>.jsonl``) or any ``configs/data/
<task>.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemini_backend import Example
from gemini_backend import JobRequest
from gemini_backend import JobState
from gemini_backend.local import LocalBackend
from gemini_backend.local import LocalBackendConfig
from gemini_backend.local.scoring import checkpoint_losses
from gemini_backend.replay.backend import ReplayPoint
from gemini_backend.replay.backend import ReplayRecord
from gemini_backend.replay.backend import write_curves_file
from sweeps.data.dataset import load_dataset

DATA_DIR = Path(__file__).resolve().parent.parent / "configs" / "data"
BYTE_MODEL = "byte-transformer"
VALIDATION_SPLIT = 0.15
TEST_SPLIT = 0.15  # of what the validation split leaves
SPLIT_SEED = 0
N_EXAMPLES = 220
POLL_INTERVAL_S = 0.5


@dataclass(frozen=True)
class CurveSet:
    """One set to record: a task, a model family and a grid."""

    task: str
    out: Path
    model: str = BYTE_MODEL
    epochs: int = 12
    batch_sizes: tuple[int, ...] = (4, 8, 16)
    multipliers: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    seeds: tuple[int, ...] = (0, 1, 2)


def reverse_word_examples(rng: random.Random) -> list[dict[str, str]]:
    """Made-up lowercase words of 3-8 letters and the same word spelled backwards."""
    words: set[str] = set()
    while len(words) < N_EXAMPLES:
        words.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                          for _ in range(rng.randint(3, 8))))
    return [{"text_input": w, "output": w[::-1]} for w in sorted(words)]


def digit_sum_examples(rng: random.Random) -> list[dict[str, str]]:
    """A string of 2-6 digits and the sum of its digits."""
    inputs: set[str] = set()
    while len(inputs) < N_EXAMPLES:
        inputs.add("".join(rng.choice("0123456789") for _ in range(rng.randint(2, 6))))
    return [{"text_input": s, "output": str(sum(int(c) for c in s))} for s in sorted(inputs)]


def sort_letters_examples(rng: random.Random) -> list[dict[str, str]]:
    """Made-up words of 4-9 letters and their letters in alphabetical order (a sort)."""
    words: set[str] = set()
    while len(words) < N_EXAMPLES:
        words.add("".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                          for _ in range(rng.randint(4, 9))))
    return [{"text_input": w, "output": "".join(sorted(w))} for w in sorted(words)]


def vowel_count_examples(rng: random.Random) -> list[dict[str, str]]:
    """Short phrases of made-up words and how many vowels they hold (counting)."""
    phrases: set[str] = set()
    while len(phrases) < N_EXAMPLES:
        phrases.add(" ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                                     for _ in range(rng.randint(2, 6)))
                             for _ in range(rng.randint(1, 3))))
    return [{"text_input": p, "output": str(sum(c in "aeiou" for c in p))}
            for p in sorted(phrases)]


def date_format_examples(rng: random.Random) -> list[dict[str, str]]:
    """A date as "day month-name year" rewritten as ISO ``YYYY-MM-DD`` (a lookup and a
    reordering, with some structure shared by every example)."""
    months = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")
    dates: set[tuple[int, int, int]] = set()
    while len(dates) < N_EXAMPLES:
        dates.add((rng.randint(1950, 2049), rng.randint(1, 12), rng.randint(1, 28)))
    return [{"text_input": f"{d} {months[m - 1]} {y}", "output": f"{y:04d}-{m:02d}-{d:02d}"}
            for y, m, d in sorted(dates)]


GENERATORS: dict[str, Callable[[random.Random], list[dict[str, str]]]] = {
    "reverse_word": reverse_word_examples,
    "digit_sum": digit_sum_examples,
    "sort_letters": sort_letters_examples,
    "vowel_count": vowel_count_examples,
    "date_format": date_format_examples,
}


def write_dataset(name: str, *, seed: int = 0) -> Path:
    """Write ``configs/data/<name>.jsonl`` (same file on every run for a given seed)."""
    rng = random.Random(seed)
    examples = GENERATORS[name](rng)
    rng.shuffle(examples)
    path = DATA_DIR / f"{name}.jsonl"
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for example in examples:
            out.write(json.dumps(example) + "\n")
    return path


def three_splits(path: Path) -> tuple[tuple[Example, ...], tuple[Example, ...],
                                       tuple[Example, ...]]:
    """(train, validation, test), deterministic, the preamble applied: validation as a
    sweep on this file would split it; test carved out of the rest."""
    dataset = load_dataset(path)
    rest, validation = dataset.split(VALIDATION_SPLIT, SPLIT_SEED)
    order = list(range(len(rest)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_test = max(1, round(TEST_SPLIT * len(rest)))
    test_rows = set(order[:n_test])
    train = tuple(e for i, e in enumerate(rest) if i not in test_rows)
    test = tuple(e for i, e in enumerate(rest) if i in test_rows)
    return dataset.prepared(train), dataset.prepared(validation), dataset.prepared(test)


def record_set(curve_set: CurveSet, backend: LocalBackend, *,
               n_parallel: int) -> list[ReplayRecord]:
    """Train the set's whole grid, ``n_parallel`` jobs at a time, and score each epoch's
    weights on the test split."""
    name = curve_set.task
    train, validation, test = three_splits(DATA_DIR / f"{name}.jsonl")
    pending = [(b, m, seed) for b in curve_set.batch_sizes for m in curve_set.multipliers
               for seed in curve_set.seeds]
    model_tag = Path(curve_set.model).name
    running: dict[tuple[int, float, int], object] = {}
    records: list[ReplayRecord] = []
    while pending or running:
        while pending and len(running) < n_parallel:
            batch_size, multiplier, seed = pending.pop(0)
            request = JobRequest(
                train=train, validation=validation,
                epochs=curve_set.epochs, learning_rate_multiplier=multiplier,
                batch_size=batch_size, base_model=curve_set.model,
                display_name=f"{name} b{batch_size} m{multiplier} s{seed}",
                idempotency_key=f"rec-{name}-{model_tag}-e{curve_set.epochs}-b{batch_size}"
                                f"-m{multiplier}-s{seed}", seed=seed)
            running[(batch_size, multiplier, seed)] = backend.submit(request)
        time.sleep(POLL_INTERVAL_S)
        for knobs, ref in list(running.items()):
            status = backend.poll(ref)  # type: ignore[arg-type]
            if not status.state.is_terminal():
                continue
            del running[knobs]
            if status.state is not JobState.SUCCEEDED:
                raise SystemExit(f"{name} {knobs}: job ended {status.state}: "
                                 f"{status.error_message}")
            job_path = backend.job_root / ref.job_id  # type: ignore[attr-defined]
            records.append(_record(job_path, curve_set.epochs, knobs,
                                   status.training_tokens or 0, checkpoint_losses(job_path, test)))
            print(f"  {name} batch={knobs[0]} multiplier={knobs[1]} seed={knobs[2]}: "
                  f"{records[-1].duration_s:.1f}s", flush=True)
    return sorted(records, key=lambda r: (r.params["batch_size"],
                                          r.params["learning_rate_multiplier"],
                                          r.seed or 0))


def _record(job_path: Path, epochs: int, knobs: tuple[int, float, int],
            training_tokens: int, test_loss: dict[int, float]) -> ReplayRecord:
    """The job's curve with its real step times, read from its ``curve.jsonl``, and each
    epoch-end point's test loss."""
    rows = [json.loads(line) for line in (job_path / "curve.jsonl").read_text().splitlines()
            if line.strip()]
    start_s = rows[0]["t"] - (rows[1]["t"] - rows[0]["t"]) if len(rows) > 1 else rows[0]["t"]
    points = []
    for r in rows:
        has_eval = r.get("eval_loss") is not None
        points.append(ReplayPoint(
            step=r["step"], epoch=r["epoch"], loss=round(r["loss"], 5),
            eval_loss=round(r["eval_loss"], 5) if has_eval else None,
            time_s=round(max(0.0, r["t"] - start_s), 3),
            test_loss=round(test_loss[r["epoch"]], 5) if has_eval else None))
    return ReplayRecord(
        params={"epochs": epochs, "batch_size": knobs[0], "learning_rate_multiplier": knobs[1]},
        seed=knobs[2], curve=tuple(points), duration_s=points[-1].time_s or 0.0,
        tokens_per_epoch=round(training_tokens / epochs))


def read_plan(path: Path) -> list[CurveSet]:
    """The sets of a plan file; a bad entry is named by its index and key."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read the plan ({exc})") from None
    if not isinstance(entries, list):
        raise SystemExit(f"{path}: a plan is a JSON list of curve sets")
    sets = []
    for index, entry in enumerate(entries):
        try:
            sets.append(curve_set_of(entry))
        except (KeyError, TypeError, ValueError) as exc:
            raise SystemExit(f"{path}: set {index}: {exc} (keys: task, out, model, epochs, "
                             "batch_sizes, multipliers, seeds)") from None
    return sets


def curve_set_of(entry: dict[str, Any]) -> CurveSet:
    known = {"task", "out", "model", "epochs", "batch_sizes", "multipliers", "seeds"}
    if unknown := set(entry) - known:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r}")
    values: dict[str, Any] = {"task": str(entry["task"]), "out": Path(entry["out"])}
    if "model" in entry:
        model = str(entry["model"])
        # The jobs run from a temporary folder: a model directory must be absolute there.
        values["model"] = model if model == BYTE_MODEL else str(Path(model).resolve())
        if model != BYTE_MODEL and not Path(model).is_dir():
            raise ValueError(f"model {model!r}: no such directory; build a tiny one with "
                             f"python scripts/make_tiny_hf_model.py {model}")
    if "epochs" in entry:
        values["epochs"] = int(entry["epochs"])
    for key, kind in (("batch_sizes", int), ("multipliers", float), ("seeds", int)):
        if key in entry:
            values[key] = tuple(kind(v) for v in entry[key])
    return CurveSet(**values)


def run_plan(sets: Sequence[CurveSet], *, n_parallel: int) -> None:
    """Record every set whose file does not exist yet (a rerun resumes a stopped plan)."""
    for curve_set in sets:
        if curve_set.out.exists():
            print(f"{curve_set.out} exists: skipped", flush=True)
            continue
        if curve_set.task in GENERATORS and not (DATA_DIR / f"{curve_set.task}.jsonl").exists():
            print(f"wrote {write_dataset(curve_set.task)}", flush=True)
        if not (DATA_DIR / f"{curve_set.task}.jsonl").exists():
            raise SystemExit(f"task {curve_set.task!r}: no generator and no "
                             f"{DATA_DIR / curve_set.task}.jsonl")
        started_s = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="record-curves-") as job_root:
            backend = LocalBackend(LocalBackendConfig(job_root=Path(job_root),
                                                      threads_per_job=1),
                                   base_dir=Path(job_root))
            records = record_set(curve_set, backend, n_parallel=n_parallel)
        path = write_curves_file(records, curve_set.out)
        print(f"wrote {len(records)} recorded jobs to {path} "
              f"({time.monotonic() - started_s:.0f}s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", type=Path, help="a JSON list of sets, recorded in turn")
    parser.add_argument("--task", help=f"one of {sorted(GENERATORS)} or a "
                        "configs/data/<task>.jsonl")
    parser.add_argument("--model", default=BYTE_MODEL,
                        help="byte-transformer or a Hugging Face model directory (LoRA)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--multipliers", type=float, nargs="+",
                        default=[0.1, 0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, help="curves file to write")
    parser.add_argument("--jobs", type=int, default=2, help="jobs trained at once")
    args = parser.parse_args()
    if args.plan:
        sets = read_plan(args.plan)
    elif args.task and args.out:
        sets = [curve_set_of({"task": args.task, "out": args.out, "model": args.model,
                              "epochs": args.epochs, "batch_sizes": args.batch_sizes,
                              "multipliers": args.multipliers, "seeds": args.seeds})]
    else:
        parser.error("give --plan FILE, or --task and --out")
    run_plan(sets, n_parallel=args.jobs)


if __name__ == "__main__":
    main()
