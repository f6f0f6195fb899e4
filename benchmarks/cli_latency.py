"""How fast the CLI answers: the median wall time of `--help`, `validate`, `status`, `export`.

Each command runs as a user runs it: a fresh `gemini-sweep` process (the installed console
script when it is on PATH, else `python -c "from sweeps.cli import main; main()"`), timed from
start to exit. `status` and `export` read a small sweep this script first runs with the replay
backend (8 trials at time_scale 0, in a temporary folder). Targets: `--help` <= 0.6 s and
`status` <= 1.5 s (median of 3).

    python benchmarks/cli_latency.py [--repeats 5]

The machine's other load moves these figures; the median of several runs is what to compare.
Which libraries each command loads is pinned by tests/sweeps_tests/test_cli_startup.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGETS_S = {"--help": 0.6, "status": 1.5}

SWEEP_YAML = """\
name: cli-latency
dataset: {path: data/next_number.jsonl, validation_split: 0.15}
backend: {kind: replay, curves: data/curves_next_number.json, time_scale: 0}
search_space:
  epochs: {mode: from_curve, max: 8, patience: 2}
  batch_size: {choices: [8, 16, 32]}
  learning_rate_multiplier: {low: 0.3, high: 10, log: true}
n_trials: 8
concurrency: 4
"""


def cli_argv() -> list[str]:
    script = shutil.which("gemini-sweep")
    if script:
        return [script]
    return [sys.executable, "-c", "from sweeps.cli import main; main()"]


def make_sweep(folder: Path) -> Path:
    """A finished 8-trial replay sweep (real Optuna and MLflow SQLite stores)."""
    (folder / "data").mkdir()
    for name in ("next_number.jsonl", "curves_next_number.json"):
        shutil.copy(REPO_ROOT / "configs" / "data" / name, folder / "data")
    config = folder / "sweep.yaml"
    config.write_text(SWEEP_YAML, encoding="utf-8")
    subprocess.run([*cli_argv(), "run", str(config), "-q"], check=True,
                   stdout=subprocess.DEVNULL, env=_env())
    return config


def _env() -> dict[str, str]:
    # This checkout's package, whatever the installed one points at.
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def time_command(args: list[str], *, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([*cli_argv(), *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env=_env())
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = str(make_sweep(Path(tmp)))
        commands = {"--help": ["--help"], "--version": ["--version"],
                    "validate": ["validate", config], "status": ["status", config],
                    "export": ["export", config], "export -f vertex": [
                        "export", config, "-f", "vertex"]}
        print(f"{'command':<18} {'median s':>9} {'min s':>7} {'max s':>7}  target")
        for label, argv in commands.items():
            times = time_command(argv, repeats=args.repeats)
            target = TARGETS_S.get(label)
            median = statistics.median(times)
            verdict = "" if target is None else (
                f"<= {target} s: {'met' if median <= target else 'MISSED'}")
            print(f"{label:<18} {median:>9.2f} {min(times):>7.2f} {max(times):>7.2f}  {verdict}")


if __name__ == "__main__":
    main()
