"""The commands that answer at once load no heavy library they do not use.

`--help`, `--version` and `validate` need neither MLflow, torch nor Optuna; `status` and
`export` read the Optuna study and nothing else. Each command runs as a user runs it (a
fresh interpreter, the console entry point), and the test reads which libraries that process
imported: the reason these commands answer in a fraction of a second, pinned without timing
anything (the figures are in benchmarks/cli_latency.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from optuna.trial import TrialState

from sweeps.cli._version import version_text
from tests.sweeps_tests.test_status_export import add_trial
from tests.sweeps_tests.test_status_export import make_study
from tests.sweeps_tests.test_status_export import write_config

#: What a light command must not load: the tracking, training and plotting stacks.
HEAVY = ("mlflow", "torch", "transformers", "matplotlib", "pandas", "optuna.visualization")

# Runs the CLI's entry point, then reports its exit code and the heavy modules it loaded.
_PROBE = """
import json, sys
from sweeps.cli import main
sys.argv = ["gemini-sweep", *sys.argv[1:]]
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
loaded = sorted(name for name in sys.modules
                if name.split(".")[0] in {"mlflow", "torch", "transformers", "matplotlib",
                                          "pandas", "optuna"})
print(json.dumps({"code": code, "loaded": loaded}), file=sys.__stderr__)
"""


def loaded_by(*args: str) -> tuple[int, set[str], str]:
    """Exit code, top-level heavy modules loaded, and stdout of ``gemini-sweep ARGS``."""
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True,
                          text=True, timeout=120, check=False)
    report = json.loads(done.stderr.strip().splitlines()[-1])
    loaded = set(report["loaded"])
    heavy = {name for name in HEAVY if name in loaded}
    if "optuna" in loaded:
        heavy.add("optuna")
    return report["code"], heavy, done.stdout


@pytest.fixture(scope="module")
def sweep_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Gemini API sweep with one completed trial in a real Optuna SQLite study."""
    config = write_config(tmp_path_factory.mktemp("startup"),
                          {"kind": "gemini-api", "api_key": "k", "base_url": "http://127.0.0.1:9"})
    add_trial(make_study(config), TrialState.COMPLETE, value=0.4, plateau=3)
    return config


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"],
                                  ["ui", "--help"], ["status", "--help"]])
def test_help_and_version_load_no_heavy_library(args: list[str]) -> None:
    code, heavy, stdout = loaded_by(*args)
    assert code == 0, stdout
    assert heavy == set(), f"`gemini-sweep {' '.join(args)}` imported {sorted(heavy)}"


def test_validate_loads_neither_mlflow_torch_nor_optuna(sweep_config: Path) -> None:
    code, heavy, stdout = loaded_by("validate", str(sweep_config))
    assert code == 0 and "valid:" in stdout, stdout
    assert heavy == set()


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["export"],
                                  ["export", "-f", "vertex"], ["export", "-f", "curl"]])
def test_status_and_export_read_only_the_optuna_study(sweep_config: Path,
                                                      args: list[str]) -> None:
    code, heavy, stdout = loaded_by(*args, str(sweep_config))
    assert code == 0, stdout
    assert "optuna" in heavy  # they did read the study ...
    assert heavy == {"optuna"}  # ... and loaded no tracking, training or plotting library


def test_version_names_the_package_and_its_libraries() -> None:
    code, _, stdout = loaded_by("--version")
    assert code == 0
    assert stdout.strip() == version_text()
    assert stdout.startswith(f"gemini-sweep {metadata.version('gemini-sweep')} (Python 3.")
    for library in ("optuna", "mlflow", "torch"):
        assert f"{library} " in stdout
