"""`gemini-sweep status` and `export`: best-trial choice, every export format, no secrets.

Studies are real Optuna SQLite studies: one from a real replay sweep (runner + MLflow), and
hand-built ones that carry exactly the attributes the runner writes, to pin the selection
rules (pruned / failed / running never exported, ties go to fewer tokens). The gemini-api
body and the python/curl exports are sent over real HTTP to the fake Gemini API on
127.0.0.1, which checks the documented field names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import requests
import yaml
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from typer.testing import CliRunner

from sweeps import load_config
from sweeps import trial_record as ts
from sweeps.cli import app
from sweeps.data.dataset import load_dataset
from tests.conftest import REPO_ROOT
from tests.gemini_backend_tests.fake_gemini_api import FakeGeminiApi

TrialState = optuna.trial.TrialState
SECRET = "AIzaSy-SECRET-do-not-leak-123"
PREAMBLE = "Next number: "
DISTRIBUTIONS = {"epochs": IntDistribution(1, 10),
                 "learning_rate_multiplier": FloatDistribution(0.1, 10, log=True),
                 "batch_size": CategoricalDistribution([2, 4, 8])}
# The documented tunedModels create fields (reference/tuning_api.md sections 1.4-1.5).
TOP_FIELDS = {"displayName", "description", "baseModel", "tuningTask", "temperature", "topP",
              "topK"}
TASK_FIELDS = {"hyperparameters", "trainingData"}
HYPER_FIELDS = {"epochCount", "batchSize", "learningRateMultiplier", "learningRate"}
EXAMPLE_FIELDS = {"textInput", "output"}

runner = CliRunner()


def write_config(folder: Path, backend: dict[str, Any], *, name: str = "export-test") -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / "configs/data/next_number.jsonl", folder / "data")
    config = {"name": name, "backend": backend,
              "dataset": {"path": "data/next_number.jsonl", "preamble": PREAMBLE},
              "search_space": {"epochs": {"low": 1, "high": 8},
                               "batch_size": {"choices": [2, 4, 8]},
                               "learning_rate_multiplier": {"low": 0.1, "high": 10,
                                                            "log": True}}}
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def add_trial(study: optuna.Study, state: TrialState, *, epochs: int = 6, lr: float = 1.0,
              batch: int = 4, value: float | None = None, tokens: int = 6000,
              plateau: int | None = None, recommended: int | None = None,
              flags: dict[str, bool] | None = None, **attrs: Any) -> None:
    """A trial with the user attributes the runner stores (``TrialOutcome.summary_attrs``)."""
    number = len(study.trials)
    knobs = {"epochs": epochs, "learning_rate_multiplier": lr, "batch_size": batch}
    key = f"{study.study_name}-abcdef12-t{number}"
    user_attrs: dict[str, Any] = {
        ts.ATTR_KNOBS: knobs, ts.ATTR_KEY: key, ts.ATTR_ESTIMATE: tokens,
        ts.ATTR_JOB_REF: {"backend": "gemini-api", "job_id": f"tunedModels/job-{number}",
                          "idempotency_key": key},
        ts.ATTR_RUN_ID: f"run{number:04d}", **attrs}
    if state is not TrialState.RUNNING:
        user_attrs.update(training_tokens=tokens, epochs_completed=epochs)
    if plateau is not None:
        user_attrs.update(plateau_epoch=plateau, recommended_epochs=recommended or plateau,
                          loss_at_plateau=value, flags=flags or {
                              "not_converged": False, "overfitting": False, "spike": False,
                              "flat": False})
    study.add_trial(optuna.trial.create_trial(
        state=state, value=value if state is TrialState.COMPLETE else None,
        params=knobs, distributions=DISTRIBUTIONS, user_attrs=user_attrs,
        intermediate_values={1: 2.0, 2: 1.5} if state is TrialState.PRUNED else {}))


def make_study(config_path: Path) -> optuna.Study:
    config = load_config(config_path)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=config.name, storage=config.storage_url,
                                direction="minimize")
    study.set_user_attr(ts.STUDY_ATTR_SWEEP_ID, "abcdef1234567890")
    return study


def mixed_study(config_path: Path) -> optuna.Study:
    """Trial 0 pruned with the lowest reported loss, 1 failed, 2 and 4 tie on the best value
    (4 used fewer tokens), 3 worse, 5 still running."""
    study = make_study(config_path)
    add_trial(study, TrialState.PRUNED, tokens=1000)
    add_trial(study, TrialState.FAIL, tokens=0, fail_reason="the job ended FAILED")
    add_trial(study, TrialState.COMPLETE, value=0.40, tokens=9000, plateau=4, epochs=6)
    add_trial(study, TrialState.COMPLETE, value=0.90, tokens=3000, plateau=2, epochs=2)
    add_trial(study, TrialState.COMPLETE, value=0.40, tokens=7000, plateau=3, epochs=5,
              lr=2.5, batch=8)
    add_trial(study, TrialState.RUNNING, tokens=4000)
    return study


def invoke(*args: str) -> Any:
    return runner.invoke(app, [str(a) for a in args])


# --- best-trial selection and status -------------------------------------------------------


@pytest.fixture
def gemini_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, {"kind": "gemini-api", "api_key": SECRET,
                                   "base_url": "http://127.0.0.1:9"})


def test_export_picks_best_complete_trial_ties_to_fewer_tokens(gemini_config: Path) -> None:
    mixed_study(gemini_config)
    result = invoke("export", gemini_config, "--format", "json")
    assert result.exit_code == 0, result.output
    exported = json.loads(result.stdout)
    assert exported["trial"]["number"] == 4
    assert exported["knobs"] == {"epochs": 3, "learning_rate_multiplier": 2.5, "batch_size": 8}
    assert exported["knobs_run"]["epochs"] == 5


def test_export_refuses_when_no_trial_completed(gemini_config: Path) -> None:
    study = make_study(gemini_config)
    add_trial(study, TrialState.PRUNED)
    add_trial(study, TrialState.FAIL, fail_reason="cancelled outside the sweep")
    add_trial(study, TrialState.RUNNING)
    result = invoke("export", gemini_config)
    assert result.exit_code == 2
    assert "no trial has completed yet" in result.stderr
    assert "1 pruned" in result.stderr and "1 fail" in result.stderr
    assert "Traceback" not in result.output


def test_export_before_any_run_says_run_first(gemini_config: Path) -> None:
    result = invoke("export", gemini_config)
    assert result.exit_code == 2
    assert "gemini-sweep run" in result.stderr
    assert not (gemini_config.parent / ".gemini_sweep" / "optuna.db").exists()


def test_status_json_lists_trials_best_and_budget(gemini_config: Path) -> None:
    mixed_study(gemini_config)
    result = invoke("status", gemini_config, "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert [t["state"] for t in status["trials"]] == [
        "PRUNED", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE", "RUNNING"]
    assert status["best"]["number"] == 4
    assert status["trials"][1]["fail_reason"] == "the job ended FAILED"
    assert status["trials"][2]["job_id"] == "tunedModels/job-2"
    # Spent: every finished trial's tokens; committed: the running trial's estimate.
    assert status["budget"]["spent_tokens"] == 1000 + 0 + 9000 + 3000 + 7000
    assert status["budget"]["committed_tokens"] == 4000


def test_status_table_by_study_and_storage(gemini_config: Path) -> None:
    study = mixed_study(gemini_config)
    storage = load_config(gemini_config).storage_url
    result = invoke("status", "--study", study.study_name, "--storage", storage)
    assert result.exit_code == 0, result.output
    assert "best: trial 4" in result.stdout
    assert "PRUNED" in result.stdout and "RUNNING" in result.stdout
    assert "20,000 training tokens spent, 4,000 committed" in result.stdout


def status_in_a_pipe(*args: str) -> str:
    """`gemini-sweep status` as a user pipes it (`| less`, `> status.txt`): 80 columns."""
    done = subprocess.run([sys.executable, "-c", "from sweeps.cli import main; main()",
                           "status", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80"}, check=True)
    return done.stdout


def every_kind_of_trial(config_path: Path) -> None:
    """Stopped past its plateau (the best), pruned, failed, running, warm-started, with the
    long job ids and 7-digit token counts of a real sweep."""
    study = make_study(config_path)
    long_tokens = 1_234_567
    add_trial(study, TrialState.COMPLETE, value=0.412345, plateau=4, epochs=8, lr=0.123456,
              tokens=long_tokens, stopped_after_epoch=6)
    add_trial(study, TrialState.PRUNED, tokens=long_tokens)
    add_trial(study, TrialState.FAIL, tokens=long_tokens, fail_reason="the job ended FAILED")
    add_trial(study, TrialState.COMPLETE, value=0.9, plateau=3, tokens=long_tokens,
              warm_start_from="earlier.yaml#3")
    add_trial(study, TrialState.RUNNING, tokens=long_tokens)


def test_status_fits_80_columns_in_a_pipe_and_says_what_it_abbreviates(
        gemini_config: Path) -> None:
    every_kind_of_trial(gemini_config)
    table = status_in_a_pipe(str(gemini_config))
    lines = table.splitlines()
    rows = lines[1:lines.index(next(line for line in lines if line.startswith("* best")))]
    assert len(rows) == 2 + 5 + 2 and max(len(row) for row in rows) <= 80, table
    assert "…" not in table, table  # nothing cut: every value is whole
    row = next(line for line in lines if line.split()[:1] == ["*0"])  # the best, marked
    assert row.split()[1:] == ["STOPPED@6", "8", "0.1235", "4", "4", "0.4123", "1,234,567"]
    assert "STOPPED@k: complete, its job stopped after epoch k" in table
    assert "WARM: run by an earlier sweep" in table
    for state in ("PRUNED", "FAIL", "RUNNING", "WARM"):
        assert f" {state} " in table
    # The lines under the table are whole lines (a pager or editor wraps them), not cut
    # into 80-column pieces.
    best = next(line for line in lines if line.startswith("best: trial 0"))
    assert best.endswith("plateau at epoch 4"), table


def test_status_wide_shows_every_column_whole_even_in_a_pipe(gemini_config: Path) -> None:
    every_kind_of_trial(gemini_config)
    table = status_in_a_pipe(str(gemini_config), "--wide")
    assert "…" not in table, table
    assert "COMPLETE (stopped at 6)" in table and "WARM (earlier.yaml#3)" in table
    assert "tunedModels/job-4" in table and " cost " in table


def test_status_unknown_study_names_the_ones_there(gemini_config: Path) -> None:
    mixed_study(gemini_config)
    storage = load_config(gemini_config).storage_url
    result = invoke("status", "--study", "nope", "--storage", storage)
    assert result.exit_code == 2
    assert "no sweep named 'nope'" in result.stderr and "export-test" in result.stderr


# --- recommendation -----------------------------------------------------------------------


def test_recommendation_notes_flags_and_schedule(gemini_config: Path) -> None:
    study = make_study(gemini_config)
    add_trial(study, TrialState.COMPLETE, value=0.3, epochs=6, plateau=6, recommended=9,
              flags={"not_converged": True, "overfitting": False, "spike": False,
                     "flat": False})
    exported = yaml.safe_load(invoke("export", gemini_config).stdout)
    assert exported["knobs"]["epochs"] == 9
    assert exported["plateau"]["flags"]["not_converged"] is True
    assert any("use more epochs" in note for note in exported["notes"])

    study2 = make_study(write_config(gemini_config.parent / "b", {"kind": "gemini-api"}))
    add_trial(study2, TrialState.COMPLETE, value=0.3, epochs=8, plateau=3, flags={
        "not_converged": False, "overfitting": True, "spike": False, "flat": False})
    result = invoke("export", gemini_config.parent / "b" / "sweep.yaml")
    exported = yaml.safe_load(result.stdout)
    assert exported["knobs"]["epochs"] == 3
    notes = " ".join(exported["notes"])
    assert "overfitting" in notes
    assert "learning-rate schedule" in notes and "epoch 3 of a 8-epoch job" in notes
    assert "learning-rate schedule" in result.stderr  # also shown to the user


def test_vertex_checkpoint_of_plateau_epoch_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"kind": "vertex", "project": "p", "bucket": "bkt"})
    study = make_study(config)
    add_trial(study, TrialState.COMPLETE, value=0.3, epochs=5, plateau=2, checkpoints=[
        {"checkpoint_id": "1", "epoch": 1}, {"checkpoint_id": "2", "epoch": 2}])
    exported = yaml.safe_load(invoke("export", config).stdout)
    assert exported["plateau"]["checkpoint_id"] == "2"
    assert any("checkpoint 2" in note for note in exported["notes"])


# --- formats ------------------------------------------------------------------------------


def check_documented_fields(body: dict[str, Any]) -> None:
    """A strict check of the field names reference section 1.4 documents, camelCase only."""
    assert set(body) <= TOP_FIELDS, set(body) - TOP_FIELDS
    assert set(body["tuningTask"]) <= TASK_FIELDS
    assert set(body["tuningTask"]["hyperparameters"]) <= HYPER_FIELDS
    examples = body["tuningTask"]["trainingData"]["examples"]["examples"]
    assert all(set(e) <= EXAMPLE_FIELDS and "output" in e for e in examples)


def test_gemini_api_body_is_accepted_by_the_service(tmp_path: Path) -> None:
    with FakeGeminiApi(api_key="k", epoch_s=0.01) as fake:
        config = write_config(tmp_path, {"kind": "gemini-api", "base_url": fake.url})
        mixed_study(config)
        result = invoke("export", config, "--format", "gemini-api")
        assert result.exit_code == 0, result.output
        body = json.loads(result.stdout)
        check_documented_fields(body)
        hyper = body["tuningTask"]["hyperparameters"]
        assert hyper == {"epochCount": 3, "batchSize": 8, "learningRateMultiplier": 2.5}
        examples = body["tuningTask"]["trainingData"]["examples"]["examples"]
        dataset = load_dataset(tmp_path / "data/next_number.jsonl", preamble=PREAMBLE)
        assert len(examples) == len(dataset.examples)
        assert examples[0]["textInput"] == PREAMBLE + dataset.examples[0].text_input
        reply = requests.post(f"{fake.url}/v1beta/tunedModels", json=body, timeout=10,
                              params={"tunedModelId": "export-check"},
                              headers={"x-goog-api-key": "k"})
        assert reply.status_code == 200, reply.text
        assert reply.json()["metadata"]["tunedModel"] == "tunedModels/export-check"


def test_python_snippet_creates_the_model_on_the_service(tmp_path: Path) -> None:
    with FakeGeminiApi(api_key="k", epoch_s=0.01) as fake:
        config = write_config(tmp_path, {"kind": "gemini-api", "api_key_env": "MY_KEY"})
        mixed_study(config)
        script = tmp_path / "create.py"
        assert invoke("export", config, "-f", "python", "-o", script).exit_code == 0
        expected = json.loads(invoke("export", config, "-f", "gemini-api").stdout)
        env = {**os.environ, "GEMINI_API_BASE_URL": fake.url, "MY_KEY": "k",
               "GEMINI_SWEEP_POLL_S": "0.05", "GEMINI_SWEEP_DEADLINE_S": "30"}
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.strip().endswith("ACTIVE")
        creates = fake.creates()
        assert len(creates) == 1
        assert creates[0]["body"] == expected
        assert creates[0]["query"]["tunedModelId"].startswith("export-test-best-t4")
        # Re-running attaches to the same model (409) instead of paying twice.
        again = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                               text=True, timeout=60, check=False)
        assert again.returncode == 0 and "already exists" in again.stdout
        assert len(fake.creates()) == 2 and len(fake.requests(method="GET")) >= 2


def test_curl_command_creates_the_model_on_the_service(tmp_path: Path) -> None:
    with FakeGeminiApi(api_key="k") as fake:
        config = write_config(tmp_path, {"kind": "gemini-api", "base_url": fake.url})
        mixed_study(config)
        command = invoke("export", config, "-f", "curl").stdout
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              env={**os.environ, "GEMINI_API_KEY": "k"}, timeout=30,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["metadata"]["tunedModel"].startswith(
            "tunedModels/export-test-best-t4")
        check_documented_fields(fake.creates()[0]["body"])
        # Without a key the command stops before sending anything.
        env = {k: v for k, v in os.environ.items() if k != "GEMINI_API_KEY"}
        refused = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                                 env=env, timeout=30, check=False)
        assert refused.returncode != 0 and "export GEMINI_API_KEY" in refused.stderr
        assert len(fake.creates()) == 1


def test_vertex_body_and_data_files(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"kind": "vertex", "project": "proj", "bucket": "bkt",
                                     "location": "europe-west4",
                                     "tuned_model_display_name_prefix": "acme"})
    mixed_study(config)
    out = tmp_path / "out" / "vertex.json"
    result = invoke("export", config, "-f", "vertex", "-o", out)
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    spec = body["supervisedTuningSpec"]
    assert body["baseModel"] == "gemini-2.5-flash"
    assert spec["hyperParameters"] == {"epochCount": "3", "learningRateMultiplier": 2.5}
    assert spec["exportLastCheckpointOnly"] is False
    # Asked of the backend: the display-name prefix and the labels a submit sends.
    assert body["tunedModelDisplayName"].startswith("acme-") and body["labels"]
    assert "batch_size 8 is left out" in result.stderr
    train = (out.parent / "train.jsonl").read_bytes()
    digest = hashlib.sha256(train).hexdigest()
    assert spec["trainingDatasetUri"] == f"gs://bkt/gemini-sweep/datasets/{digest}.jsonl"
    first = json.loads(train.splitlines()[0])
    assert first["contents"][0]["parts"][0]["text"].startswith(PREAMBLE)
    snippet = invoke("export", config, "-f", "python").stdout
    compile(snippet, "vertex_create.py", "exec")
    assert "europe-west4-aiplatform.googleapis.com" in snippet
    assert f"gcloud storage cp train.jsonl {spec['trainingDatasetUri']}" in snippet


@pytest.mark.parametrize("fmt", ["gemini-api", "python", "curl"])
def test_a_gemini_api_export_on_a_retired_base_model_warns(gemini_config: Path,
                                                           fmt: str) -> None:
    mixed_study(gemini_config)  # the config names no base model: the service's old default
    result = invoke("export", gemini_config, "-f", fmt)
    assert result.exit_code == 0, result.output
    assert ("warning: base model models/gemini-1.5-flash-001-tuning is retired and the "
            "Gemini API has had no tunable base model since May 2025") in result.stderr
    assert "`--format vertex`" in result.stderr
    assert "warning" not in result.stdout  # the export itself stays clean for a pipe
    chosen = invoke("export", gemini_config, "-f", fmt, "--base-model", "models/tunable-002")
    assert chosen.exit_code == 0 and "warning" not in chosen.stderr, chosen.stderr


def test_a_vertex_export_without_a_bucket_warns_about_the_placeholder(tmp_path: Path) -> None:
    replay = write_config(tmp_path / "replay", {"kind": "replay", "curves": "c.json"})
    mixed_study(replay)
    result = invoke("export", replay, "-f", "vertex", "-o", tmp_path / "out" / "vertex.json")
    assert result.exit_code == 0, result.output
    assert "warning: the body names gs://YOUR_BUCKET/gemini-sweep/datasets/" in result.stderr
    assert "Replace it with your bucket" in result.stderr
    with_bucket = write_config(tmp_path / "vertex", {"kind": "vertex", "project": "p",
                                                     "bucket": "bkt"})
    mixed_study(with_bucket)
    result = invoke("export", with_bucket, "-f", "vertex")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.stderr


@pytest.mark.parametrize("fmt", ["yaml", "json", "gemini-api", "vertex", "python", "curl"])
def test_no_secret_in_any_export(gemini_config: Path, fmt: str) -> None:
    mixed_study(gemini_config)
    result = invoke("export", gemini_config, "-f", fmt)
    assert result.exit_code == 0, result.output
    assert SECRET not in result.output and "api_key" not in result.stdout


# --- a real replay sweep ------------------------------------------------------------------


@pytest.fixture(scope="module")
def replay_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sweeps.engine.runner import run_sweep  # noqa: PLC0415  (only this fixture needs the runner)

    folder = tmp_path_factory.mktemp("replay")
    shutil.copy(REPO_ROOT / "configs/data/replay_demo_curves.json", folder)
    path = write_config(folder, {"kind": "replay", "curves": "replay_demo_curves.json",
                                 "time_scale": 0}, name="replay-export")
    data = yaml.safe_load(path.read_text())
    data.update(n_trials=4, concurrency=4, sampler={"seed": 3})
    path.write_text(yaml.safe_dump(data))
    run_sweep(load_config(path))
    return path


def test_replay_sweep_export_matches_the_study(replay_sweep: Path) -> None:
    config = load_config(replay_sweep)
    study = optuna.load_study(study_name=config.name, storage=config.storage_url)
    best = min((t for t in study.trials if t.state is TrialState.COMPLETE),
               key=lambda t: (t.value, t.user_attrs["training_tokens"]))
    result = invoke("export", replay_sweep, "-f", "yaml")
    assert result.exit_code == 0, result.output
    exported = yaml.safe_load(result.stdout)
    assert exported["trial"]["number"] == best.number
    assert exported["trial"]["mlflow_run_id"] == best.user_attrs[ts.ATTR_RUN_ID]
    assert exported["study"]["sweep_id"] == study.user_attrs[ts.STUDY_ATTR_SWEEP_ID]
    assert exported["knobs"]["epochs"] == best.user_attrs["recommended_epochs"]
    assert exported["plateau"]["epoch"] == best.user_attrs["plateau_epoch"]
    assert exported["objective"] == {"name": "plateau_loss", "value": best.value}
    dataset = load_dataset(config.dataset_path, preamble=PREAMBLE)
    assert exported["dataset"]["content_hash"] == dataset.content_hash
    assert exported["dataset"]["preamble"] == PREAMBLE
    status = json.loads(invoke("status", replay_sweep, "--json").stdout)
    assert status["best"]["number"] == best.number
    assert status["budget"]["spent_tokens"] == sum(
        t.user_attrs["training_tokens"] for t in study.trials)
