"""Training throughput of the local backend versus a bare PyTorch loop, in one run.

Both train the default byte transformer on the same ~240 "next number" examples with the same
batch size, seed and thread count. The backend job goes through ``submit``/``poll`` in its own
process; its rate is timed from the first to the last step as the worker reports them (the
per-step curve writes, cancel checks and per-epoch weight saves are inside that window; the
process start and torch import are not, and are shown separately as end-to-end). The bare loop
is timed the same way. Target: ratio >= 0.9 (bookkeeping costs at most 10%).

    python benchmarks/local_throughput.py [--epochs 5] [--threads 1] [--repeats 3]

One thread by default: on a small shared machine other processes' load swings multi-thread
figures more than the difference being measured. Both sides use OMP_WAIT_POLICY=PASSIVE, as
the backend's workers do. The runs alternate bare/backend and the best of each is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from gemini_backend import Example
from gemini_backend import JobRequest
from gemini_backend.local import LocalBackend
from gemini_backend.local import LocalBackendConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_FILE = REPO_ROOT / "configs" / "data" / "next_number.jsonl"
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def _words(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])


def examples() -> tuple[Example, ...]:
    """The example dataset if it exists, else ~240 generated examples like it."""
    if DATA_FILE.is_file():
        rows = [json.loads(line) for line in DATA_FILE.read_text().splitlines() if line.strip()]
        return tuple(Example(output=r["output"], text_input=r.get("text_input")) for r in rows)
    words = [Example(text_input=_words(n), output=_words(n + 1)) for n in range(0, 99)]
    digits = [Example(text_input=f"{n:,}", output=f"{n + 1:,}") for n in range(950, 1090)]
    return tuple(words + digits)


def backend_rate(train: tuple[Example, ...], *, epochs: int, threads: int, key: str
                 ) -> tuple[float, float]:
    """(tokens/s first-to-last step as the worker reports, tokens/s end to end)."""
    from gemini_backend.local._jobdir import CurveReader

    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(LocalBackendConfig(threads_per_job=threads), base_dir=Path(tmp))
        request = JobRequest(train=train, epochs=epochs, learning_rate_multiplier=1.0,
                             base_model="byte-transformer", display_name=key,
                             idempotency_key=key, batch_size=4)
        started = time.perf_counter()
        ref = backend.submit(request)
        while not (status := backend.poll(ref)).state.is_terminal():
            time.sleep(0.2)
        elapsed_s = time.perf_counter() - started
        if status.training_tokens is None or status.state.value != "SUCCEEDED":
            raise SystemExit(f"benchmark job ended {status.state}: {status.error_message}")
        reader = CurveReader(backend.job_root / ref.job_id / "curve.jsonl")
        reader.refresh()
        first_tokens = _first_step_tokens(backend.job_root / ref.job_id / "curve.jsonl")
        window_s = reader.step_times_s[-1] - reader.step_times_s[0]
        return (reader.tokens - first_tokens) / window_s, reader.tokens / elapsed_s


def _first_step_tokens(curve: Path) -> int:
    return int(json.loads(curve.read_text().splitlines()[0])["tokens"])


def bare_rate(train: tuple[Example, ...], *, epochs: int, threads: int) -> float:
    """Tokens/s of a plain loop (same model, data order, optimizer), first to last step."""
    import torch

    from gemini_backend.local import _train
    from gemini_backend.local._jobdir import TrainSettings
    from gemini_backend.local.byte_model import ByteModel

    config = LocalBackendConfig()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ByteModel(TrainSettings(
        base_model="byte-transformer", epochs=epochs, batch_size=4,
        learning_rate=config.base_learning_rate, seed=0, threads=threads,
        max_seq_len=config.max_seq_len, d_model=config.d_model, n_layers=config.n_layers,
        n_heads=config.n_heads, lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
        max_new_tokens=config.max_new_tokens,
    ))
    encoded = [model.encode(e) for e in train]
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.module.parameters(), lr=config.base_learning_rate)
    times_s, tokens = [], []
    for _ in range(epochs):
        for batch in _train.make_batches(encoded, 4, pad_id=model.pad_id, generator=generator):
            optimizer.zero_grad(set_to_none=True)
            loss = _train.batch_loss(model, batch)
            loss.backward()
            optimizer.step()
            float(loss.detach())  # the backend reads every step's loss too
            times_s.append(time.perf_counter())
            tokens.append(batch.n_tokens)
    return sum(tokens[1:]) / (times_s[-1] - times_s[0])


def main() -> None:
    # The same OpenMP policy the backend gives its workers, so the bare loop is comparable.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    train = examples()
    print(f"{len(train)} examples, batch 4, {args.epochs} epochs, {args.threads} threads, "
          f"{args.repeats} repeats (best of each)")
    bare, worker, end_to_end = [], [], []
    for repeat in range(args.repeats):
        bare.append(bare_rate(train, epochs=args.epochs, threads=args.threads))
        rate, e2e = backend_rate(train, epochs=args.epochs, threads=args.threads,
                                 key=f"bench-{repeat}-{time.time_ns()}")
        worker.append(rate)
        end_to_end.append(e2e)
    print(f"bare PyTorch loop          : {max(bare):10.0f} tokens/s")
    print(f"local backend (worker)     : {max(worker):10.0f} tokens/s  first-to-last step")
    print(f"local backend (end to end) : {max(end_to_end):10.0f} tokens/s  submit to SUCCEEDED")
    print(f"ratio backend/bare         : {max(worker) / max(bare):10.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
