"""A whole sweep on the fake Vertex AI in each world Google's docs allow, killed and resumed.

Each world runs `gemini-sweep run` as a process against the fake (a subprocess on
127.0.0.1) with a seeded 10% of calls failing (429, 503, dropped connections, truncated
answers) and the answers to the first two creates lost after the jobs were made. It
SIGKILLs the run right after a job's create returned but before its name was stored (the
moment exactly-once depends on the list), runs it again to the end, and checks that every
trial finished with one job per trial and that the per-epoch losses in MLflow equal what
the service wrote, epoch by epoch.

Worlds: plain (an account with storage.admin, jobs of 3 epochs); jobs of 12 epochs (about
ten checkpoints, spread); a job list lagging creates by 3 s; TensorBoard runs not named
after the experiment (the fake's ids are unrelated in every world); an account holding only
roles/storage.objectCreator + roles/storage.objectViewer on the bucket. And one world where
the curve cannot be found: each trial fails naming what was looked for, warned at once.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.oauth2.credentials import Credentials
from mlflow import MlflowClient

from gemini_backend import JobRef
from gemini_backend.vertex.backend import VertexBackend
from gemini_backend.vertex.backend import VertexBackendConfig
from sweeps import load_config
from sweeps import run_sweep
from sweeps import trial_record as ts
from sweeps._crashpoints import ENV_VAR
from sweeps.engine.runner import open_study
from tests.gemini_backend_tests.fake_vertex import FakeVertex
from tests.gemini_backend_tests.fake_vertex import Timing
from tests.reliability_tests._sweep_procs import backend_section
from tests.reliability_tests._sweep_procs import check_sweep
from tests.reliability_tests._sweep_procs import fake_service
from tests.reliability_tests._sweep_procs import run_to_end
from tests.reliability_tests._sweep_procs import seed_mlflow
from tests.reliability_tests._sweep_procs import start_run
from tests.reliability_tests._sweep_procs import sweep_env
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.conftest import write_dataset

N_TRIALS = 4
OBJECT_ROLES = ("--storage-role", "roles/storage.objectCreator",
                "--storage-role", "roles/storage.objectViewer")


@dataclass(frozen=True)
class World:
    name: str
    epochs: int = 3
    fake_args: tuple[str, ...] = OBJECT_ROLES
    list_lag_window_s: float = 2.0


WORLDS = (
    World("plain", fake_args=("--storage-role", "roles/storage.admin")),
    World("12-epochs", epochs=12),
    World("list-lags-3s", fake_args=(*OBJECT_ROLES, "--list-lag-s", "3"),
          list_lag_window_s=4.0),
    World("tb-runs-not-named-after-experiment"),
    World("object-roles-only"),
)


@pytest.mark.parametrize("world", WORLDS, ids=lambda w: w.name)
def test_sweep_with_faults_killed_and_resumed_matches_the_service(
        world: World, mlflow_template: Path, tmp_path: Path) -> None:
    with fake_service("vertex", step_s=0.04, extra_args=world.fake_args) as service:
        write_dataset(tmp_path, n_examples=30)
        backend = {**backend_section(service, tmp_path),
                   "list_lag_window_s": world.list_lag_window_s}
        config_path = write_config(
            tmp_path, name=f"vw-{world.name}", n_trials=N_TRIALS, concurrency=2,
            poll_interval_s=0.1, backend=backend, pruner={"kind": "none"},
            dataset={"path": "data.jsonl", "validation_split": 0.2, "seed": 0},
            search_space={"epochs": {"value": world.epochs},
                          "learning_rate_multiplier": {"low": 0.3, "high": 3.0, "log": True},
                          "adapter_size": {"choices": [1, 4, 16]}})
        config = load_config(config_path)
        seed_mlflow(mlflow_template, tmp_path)
        service.post("chaos", {"rate": 0.1, "seed": 7, "kinds": ["429", "503", "drop",
                                                                 "malformed"]})
        # The first two creates are applied but their answers lost: outcome unknown.
        service.post("inject", {"status": 503, "method": "POST", "count": 2,
                                "path_contains": "/tuningJobs", "apply_first": True})

        killed = start_run(config_path, env=sweep_env(**{ENV_VAR: "after_submit:2"}))
        output = killed.communicate(timeout=300)[0].decode()
        assert killed.returncode == -signal.SIGKILL, output[-3000:]
        final = run_to_end(config_path, timeout_s=300)
        assert final.returncode == 0, (final.stdout + final.stderr)[-3000:]
        assert "Traceback" not in final.stderr
        assert sum(service.admin("chaos")["injected"].values()) > 0  # faults happened
        service.post("chaos", {"rate": 0.0})  # the checks below talk to the fake too

        check_sweep(config, service, N_TRIALS)  # one job per trial, every point in MLflow
        truth = service.admin("epoch_losses")
        trials = open_study(config).get_trials()
        client = MlflowClient(tracking_uri=config.tracking_url)
        experiment = client.get_experiment_by_name(config.name)
        run_ids = {int(r.data.tags["gemini_sweep.trial"]): r.info.run_id
                   for r in client.search_runs([experiment.experiment_id])
                   if r.data.tags.get("gemini_sweep.role") == "trial"}
        for trial in trials:
            job = JobRef.from_dict(trial.user_attrs[ts.ATTR_JOB_REF]).job_id
            run_id = run_ids[trial.number]
            train = [m.value for m in sorted(
                client.get_metric_history(run_id, "train_loss_epoch"), key=lambda m: m.step)]
            evals = [m.value for m in sorted(
                client.get_metric_history(run_id, "eval_loss_epoch"), key=lambda m: m.step)]
            assert len(train) == world.epochs
            assert train == pytest.approx(truth[job]["train"], rel=1e-9), trial.number
            assert evals == pytest.approx(truth[job]["eval"], rel=1e-9), trial.number
            kept = [c["epoch"] for c in trial.user_attrs[ts.ATTR_CHECKPOINTS]]
            assert kept == truth[job]["checkpoints"]
        if world.epochs > 10:
            assert truth[job]["checkpoints"] == [1, 2, 4, 5, 6, 7, 8, 10, 11, 12]


def test_a_curve_not_linked_to_its_run_fails_each_trial_naming_what_is_missing(
        mlflow_template: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    with FakeVertex(timing=Timing(step_s=0.03)) as fake:
        fake.tb_links_missing = True
        config = VertexBackendConfig(project="test-project", bucket="test-bucket",
                                     base_url=fake.url, storage_base_url=fake.url)
        backend = VertexBackend(config, credentials=Credentials(token="fake-token"))
        write_dataset(tmp_path, n_examples=30)
        config_path = write_config(
            tmp_path, name="vw-unlinked", n_trials=2, concurrency=2, poll_interval_s=0.05,
            backend=config.model_dump(mode="json"), max_consecutive_failures=5,
            dataset={"path": "data.jsonl", "validation_split": 0.2, "seed": 0})
        seed_mlflow(mlflow_template, tmp_path)
        run_sweep(load_config(config_path), backend=backend)

    trials = open_study(load_config(config_path)).get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]
    for trial in trials:
        reason = trial.user_attrs[ts.ATTR_FAIL_REASON]
        assert "loss curve cannot be found" in reason and "-tb-run" in reason
    warned = [r for r in caplog.records if "loss curve cannot be found" in r.getMessage()
              and "still looking" in r.getMessage()]
    assert len(warned) == 2  # once per job, while it ran
