"""Record real loss curves for the replay backend: a grid of local jobs on three datasets.

Writes two small datasets of tasks other than the seed's (``reverse_word``: a made-up word
spelled backwards; ``digit_sum``: the sum of a string of digits) next to
``configs/data/next_number.jsonl``, then trains a grid of REAL local jobs on each of the three
(the byte transformer of :mod:`gemini_backend.local`, 8 epochs, batch size 8/16/32, learning
rate multiplier on a log grid, each cell trained with 3 seeds) and writes
``configs/data/curves_<dataset>.json`` in the replay format, with each job's real tokens per
epoch, step times and duration. The seed (weights' init and data order) is kept in the
record's ``seed``: the replay backend serves a trial one of a cell's seeds, so a sweep sees
the run-to-run noise of real training, and the benchmark scores a configuration by the mean
over its seeds (what it is worth, not what one lucky run showed).

The local backend trains with a constant learning rate and a fixed data order per seed, so
the first k epochs of an 8-epoch recording are exactly a k-epoch job: the replay backend's
truncation is faithful here. ``benchmarks/cost_efficiency.py`` replays these files.

Usage (about 15 minutes on 2 cores)::

    python scripts/record_curve_sets.py                 # all three datasets
    python scripts/record_curve_sets.py --datasets digit_sum --jobs 1
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gemini_backend import JobRequest
from gemini_backend import JobState
from gemini_backend.local import LocalBackend
from gemini_backend.local import LocalBackendConfig
from gemini_backend.replay.backend import ReplayPoint
from gemini_backend.replay.backend import ReplayRecord
from gemini_backend.replay.backend import write_curves_file
from sweeps.data.dataset import load_dataset

DATA_DIR = Path(__file__).resolve().parent.parent / "configs" / "data"
EPOCHS = 8
BATCH_SIZES = (8, 16, 32)
MULTIPLIERS = (0.3, 0.5, 0.8, 1.3, 2.2, 3.6, 6.0, 10.0)  # about x1.65 apart, log grid
SEEDS = (0, 1, 2)
VALIDATION_SPLIT = 0.15
SPLIT_SEED = 0
N_EXAMPLES = 220
POLL_INTERVAL_S = 0.5


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


GENERATORS: dict[str, Callable[[random.Random], list[dict[str, str]]]] = {
    "reverse_word": reverse_word_examples,
    "digit_sum": digit_sum_examples,
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


def record_dataset(name: str, backend: LocalBackend, *, n_parallel: int) -> list[ReplayRecord]:
    """Train the whole grid on one dataset, ``n_parallel`` jobs at a time."""
    dataset = load_dataset(DATA_DIR / f"{name}.jsonl")
    train, validation = dataset.split(VALIDATION_SPLIT, SPLIT_SEED)
    grid = [(b, m, seed) for b in BATCH_SIZES for m in MULTIPLIERS for seed in SEEDS]
    pending = list(grid)
    running: dict[tuple[int, float, int], object] = {}
    records: list[ReplayRecord] = []
    while pending or running:
        while pending and len(running) < n_parallel:
            batch_size, multiplier, seed = pending.pop(0)
            request = JobRequest(
                train=dataset.prepared(train), validation=dataset.prepared(validation),
                epochs=EPOCHS, learning_rate_multiplier=multiplier, batch_size=batch_size,
                base_model="byte-transformer",
                display_name=f"{name} b{batch_size} m{multiplier} s{seed}",
                idempotency_key=f"rec-{name}-b{batch_size}-m{multiplier}-s{seed}", seed=seed)
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
            records.append(_record(backend, ref, knobs, status.training_tokens or 0))
            print(f"  {name} batch={knobs[0]} multiplier={knobs[1]} seed={knobs[2]}: "
                  f"{records[-1].duration_s:.1f}s", flush=True)
    return sorted(records, key=lambda r: (r.params["batch_size"],
                                          r.params["learning_rate_multiplier"],
                                          r.seed or 0))


def _record(backend: LocalBackend, ref: object, knobs: tuple[int, float, int],
            training_tokens: int) -> ReplayRecord:
    """The job's curve with its real step times, read from its ``curve.jsonl``."""
    curve_file = backend.job_root / ref.job_id / "curve.jsonl"  # type: ignore[attr-defined]
    rows = [json.loads(line) for line in curve_file.read_text().splitlines() if line.strip()]
    start_s = rows[0]["t"] - (rows[1]["t"] - rows[0]["t"]) if len(rows) > 1 else rows[0]["t"]
    points = tuple(
        ReplayPoint(step=r["step"], epoch=r["epoch"], loss=round(r["loss"], 5),
                    eval_loss=round(r["eval_loss"], 5) if r.get("eval_loss") is not None
                    else None,
                    time_s=round(max(0.0, r["t"] - start_s), 3))
        for r in rows)
    return ReplayRecord(
        params={"epochs": EPOCHS, "batch_size": knobs[0], "learning_rate_multiplier": knobs[1]},
        seed=knobs[2],
        curve=points, duration_s=points[-1].time_s or 0.0,
        tokens_per_epoch=round(training_tokens / EPOCHS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+",
                        default=["next_number", "reverse_word", "digit_sum"])
    parser.add_argument("--jobs", type=int, default=2, help="jobs trained at once")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="record-curves-") as job_root:
        backend = LocalBackend(LocalBackendConfig(job_root=Path(job_root), threads_per_job=1),
                               base_dir=Path(job_root))
        for name in args.datasets:
            if name in GENERATORS:
                print(f"wrote {write_dataset(name)}", flush=True)
            started_s = time.monotonic()
            records = record_dataset(name, backend, n_parallel=args.jobs)
            path = write_curves_file(records, DATA_DIR / f"curves_{name}.json")
            print(f"wrote {len(records)} recorded jobs to {path} "
                  f"({time.monotonic() - started_s:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
