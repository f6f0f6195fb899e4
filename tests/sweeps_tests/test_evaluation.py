"""Held-out evaluation: metrics, the evaluator, and sweeps that pick the trial whose
tuned model answers best: with an answering fake backend, the fake Gemini API over HTTP on
127.0.0.1, and one real local training job compared with its untrained model."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from gemini_backend import BackendError
from gemini_backend import Capabilities
from gemini_backend import Example
from gemini_backend import InvalidRequestError
from gemini_backend import JobRef
from gemini_backend import JobRequest
from gemini_backend import QuotaError
from gemini_backend import TransientError
from sweeps import ConfigError
from sweeps import load_config
from sweeps import run_sweep
from sweeps.cli import app
from sweeps.data.dataset import estimate_tokens
from sweeps.engine.runner import prepare_data
from sweeps.evaluation.metrics import chrf
from sweeps.evaluation.metrics import exact_match
from sweeps.evaluation.metrics import resolve_metrics
from sweeps.evaluation.runner import Evaluator
from sweeps.results.sweep_results import config_results
from sweeps.tracking.tracker import MlflowTracker
from sweeps.tracking.tracker import NullTracker
from sweeps.tracking.tracker import Tracker
from tests.conftest import REPO_ROOT
from tests.gemini_backend_tests.fake_gemini_api import FakeGeminiApi
from tests.sweeps_tests.conftest import write_config
from tests.sweeps_tests.fake_backend import FakeBackend

FIXTURE = "tests.sweeps_tests.eval_metrics_fixture"
runner = CliRunner()


# --- metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize(("prediction", "expected", "score"), [
    ("the answer is 4", "the answer is 4", 1.0),
    ("  the answer\n is\t4 ", "the answer is 4", 1.0),  # whitespace normalised
    ("The answer is 4", "the answer is 4", 0.0),  # case is kept
    ("the answer is 44", "the answer is 4", 0.0),
    ("", "", 1.0),
])
def test_exact_match_normalises_whitespace_only(prediction: str, expected: str,
                                                score: float) -> None:
    assert exact_match(prediction, expected) == score


def test_chrf_known_values() -> None:
    assert chrf("twenty three", "twenty three") == pytest.approx(100.0)
    assert chrf("abc", "xyz") == 0.0
    assert chrf("", "ten") == 0.0
    assert chrf("", "") == 100.0
    # Hand-checked: orders 1 and 2 only (order 3 is longer than "ab"); P = (1 + 1) / 2,
    # R = (2/3 + 1/2) / 2 = 7/12; F2 = 5 P R / (4 P + R) = 35/55.
    assert chrf("ab", "abc") == pytest.approx(100 * 35 / 55)
    assert chrf("a b c", "abc") == pytest.approx(100.0)  # whitespace is not scored
    # Recall weighs more (beta=2): missing half the reference costs more than adding noise.
    assert chrf("abcdefgh", "abcd") > chrf("ab", "abcd")


def test_custom_metric_is_imported_by_path_and_named_after_its_function() -> None:
    (metric,) = resolve_metrics([f"{FIXTURE}:same_last_word"], probe=("a 4", "a 4"))
    assert (metric.key, metric.objective) == ("eval_same_last_word", "eval:same_last_word")
    assert metric.score("is 4", "the answer is 4") == 1.0


@pytest.mark.parametrize(("spec", "message"), [
    ("tests.no_such_module:f", "cannot import module 'tests.no_such_module'"),
    (f"{FIXTURE}:missing", "has no 'missing'"),
    (f"{FIXTURE}:NOT_A_FUNCTION", "not a function"),
    (f"{FIXTURE}:returns_text", "returned str 'good'; it must return a float"),
])
def test_bad_custom_metrics_are_named_in_the_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        resolve_metrics(["chrf", spec], probe=("x", "x"))
    assert spec in str(error.value) and message in str(error.value)


# --- the evaluator ------------------------------------------------------------------------


def _answer(prompt: str) -> str:
    """The right answer to the conftest dataset's "what is 3 plus 3"."""
    match = re.search(r"(\d+) plus", prompt)
    return f"the answer is {2 * int(match[1])}" if match else "?"


@dataclass
class AnsweringBackend(FakeBackend):
    """The sweep tests' fake backend, plus a tuned model that answers held-out prompts.

    Its models answer right the share of prompts :func:`skill` gives for the job's knobs:
    best at learning_rate_multiplier 3.0, whose training loss is NOT the lowest (1.0's is).
    """

    generate_errors: list[BackendError] = field(default_factory=list)
    generate_calls: list[int] = field(default_factory=list)

    @property
    def capabilities(self) -> Capabilities:
        return dataclasses.replace(super().capabilities, can_generate=True)

    def generate(self, ref: JobRef, prompts: Sequence[str]) -> list[str]:
        self.generate_calls.append(len(prompts))
        if self.generate_errors:
            raise self.generate_errors.pop(0)
        request = self.jobs[ref.job_id].request
        n_right = round(skill(request.learning_rate_multiplier, request.epochs) * len(prompts))
        return [_answer(p) if i < n_right else "no idea" for i, p in enumerate(prompts)]


def skill(multiplier: float, epochs: int) -> float:
    by_multiplier = {0.3: 0.0, 1.0: 0.5, 3.0: 1.0}[multiplier]
    return by_multiplier if epochs >= 3 else by_multiplier / 2


def _examples(n: int) -> tuple[Example, ...]:
    return tuple(Example(text_input=f"what is {i} plus {i}", output=f"the answer is {2 * i}")
                 for i in range(n))


def test_evaluator_retries_transient_errors_and_keeps_example_order(clock) -> None:
    backend = AnsweringBackend(clock=clock)
    backend.generate_errors = [TransientError("503"), QuotaError("429", retry_after_s=7.0)]
    ref = _submit(backend, multiplier=3.0)
    metrics = resolve_metrics(["exact_match", "chrf"])
    slept: list[float] = []
    evaluator = Evaluator(backend, metrics, _examples(6), concurrency=3, sleep=slept.append)
    result = evaluator.evaluate(ref)
    assert result.error is None
    assert result.scores == {"eval_exact_match": 1.0, "eval_chrf": pytest.approx(100.0)}
    assert [r.prediction for r in result.rows] == [_answer(r.input) for r in result.rows]
    assert [r.expected for r in result.rows] == [e.output for e in _examples(6)]
    assert 7.0 in slept and len(slept) == 2  # the server's retry delay is honoured
    assert sorted(backend.generate_calls) == [2, 2, 2, 2, 2]  # 3 chunks, 2 retried
    # Not local/replay: the generation is billed, prompt and answer tokens alike.
    assert result.tokens == sum(estimate_tokens(r.input) + estimate_tokens(r.prediction)
                                for r in result.rows)


def test_evaluator_reports_a_permanent_error_and_a_bad_metric_answer(clock) -> None:
    backend = AnsweringBackend(clock=clock)
    ref = _submit(backend, multiplier=1.0)
    backend.generate_errors = [InvalidRequestError("model is not ACTIVE")]
    evaluator = Evaluator(backend, resolve_metrics(["chrf"]), _examples(4), concurrency=1,
                          sleep=lambda s: None)
    failed = evaluator.evaluate(ref)
    assert failed.scores == {} and "generation failed: model is not ACTIVE" in failed.error
    # The probe at sweep start passes (right answer); a wrong answer shows the bad return.
    metric = resolve_metrics([f"{FIXTURE}:none_when_wrong"], probe=("a", "a"))
    result = Evaluator(backend, metric, _examples(4), concurrency=2).evaluate(ref)
    assert result.scores == {}
    assert f"{FIXTURE}:none_when_wrong" in result.error and "must return a float" in \
        result.error


def _submit(backend: AnsweringBackend, *, multiplier: float) -> JobRef:
    request = JobRequest(train=_examples(3), epochs=3, learning_rate_multiplier=multiplier,
                         base_model="m", display_name="t", idempotency_key=f"k{multiplier}")
    return backend.submit(request)


# --- sweeps with evaluation ----------------------------------------------------------------


def _eval_config(tmp_path: Path, **overrides: Any) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = dict(
        dataset={"path": "data.jsonl", "validation_split": 0.25},
        search_space={"epochs": {"value": 3},
                      "learning_rate_multiplier": {"choices": [0.3, 1.0, 3.0]}},
        sampler={"kind": "grid", "seed": 0}, n_trials=3, concurrency=2,
        objective="eval_exact_match",
        evaluation={"enabled": True, "max_examples": 6,
                    "metrics": ["exact_match", "chrf", f"{FIXTURE}:same_last_word"]},
    )
    settings.update(overrides)
    return write_config(tmp_path, **settings)


def _run(path: Path, clock: Any, backend: AnsweringBackend | None = None, *,
         tracker: Tracker | None = None) -> Any:
    """Run the sweep; MLflow only where a test reads it (status and export read the study)."""
    backend = backend or AnsweringBackend(clock=clock)
    return run_sweep(load_config(path), backend=backend, clock=clock, sleep=clock.sleep,
                     tracker=tracker or NullTracker())


def test_the_best_trial_is_the_one_whose_model_answers_best(tmp_path: Path, clock) -> None:
    path = _eval_config(tmp_path)
    result = _run(path, clock)
    assert result.n_complete == 3
    assert result.best_params["learning_rate_multiplier"] == 3.0 and result.best_value == 1.0
    results = config_results(load_config(path))
    # Generation is billed by this backend: its tokens count toward the budget.
    training = sum(t.training_tokens or 0 for t in results.trials)
    evaluation = sum(t.eval_tokens or 0 for t in results.trials)
    assert evaluation > 0 and result.spent_tokens == results.spent_tokens \
        == training + evaluation
    by_loss = min(results.trials, key=lambda t: t.loss_at_plateau)
    assert by_loss.knobs["learning_rate_multiplier"] == 1.0  # the loss would pick another
    for trial in results.trials:
        wanted = skill(trial.knobs["learning_rate_multiplier"], 3)
        assert trial.eval_scores["eval_exact_match"] == pytest.approx(wanted)
        assert trial.value == trial.eval_scores["eval_exact_match"]
        assert set(trial.eval_scores) == {"eval_exact_match", "eval_chrf",
                                          "eval_same_last_word"}

    status = runner.invoke(app, ["status", str(path), "--json"])
    assert status.exit_code == 0, status.output
    best = json.loads(status.output)["best"]
    assert best["number"] == results.best.number
    assert best["eval_scores"]["eval_exact_match"] == 1.0
    shown = " ".join(runner.invoke(app, ["status", str(path)]).output.split())
    assert f"best: trial {results.best.number} objective 1 " in shown
    assert "eval_exact_match 1, eval_chrf 100" in shown

    export = runner.invoke(app, ["export", str(path)])
    assert export.exit_code == 0, export.output
    exported = yaml.safe_load(export.stdout)
    assert exported["objective"] == {"name": "eval_exact_match", "value": 1.0}
    assert exported["evaluation"]["eval_chrf"] == pytest.approx(100.0)
    assert exported["knobs"]["learning_rate_multiplier"] == 3.0


def test_mlflow_run_holds_the_eval_metrics_and_a_table_of_answers(tmp_path: Path,
                                                                   clock) -> None:
    path = _eval_config(tmp_path, n_trials=1, search_space={
        "epochs": {"value": 3}, "learning_rate_multiplier": {"value": 1.0}},
        pruner={"kind": "median", "n_startup_trials": 1})
    result = _run(path, clock, tracker=MlflowTracker(load_config(path).tracking_url))
    # A maximized study is reported -loss per epoch, so a pruner stops high-loss trials.
    (trial,) = optuna.load_study(study_name="test-sweep",
                                 storage=load_config(path).storage_url).trials
    assert sorted(trial.intermediate_values) == [1, 2, 3]
    assert all(v < 0 for v in trial.intermediate_values.values())
    client = MlflowClient(load_config(path).tracking_url)
    run = client.get_run(result.best_run_id)
    assert run.data.metrics["eval_exact_match"] == pytest.approx(0.5)
    assert 0 < run.data.metrics["eval_chrf"] < 100
    assert run.data.metrics["objective"] == pytest.approx(0.5)
    assert run.data.metrics["eval_tokens"] > 0
    local = client.download_artifacts(result.best_run_id, "eval_examples.json",
                                      str(tmp_path / "dl"))
    table = json.loads(Path(local).read_text(encoding="utf-8"))
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert len(rows) == 6 and sum(r["prediction"] == r["expected"] for r in rows) == 3
    assert all(r["input"].startswith("what is") for r in rows)


def test_failed_evaluation_fails_an_eval_objective_but_not_a_loss_one(tmp_path: Path,
                                                                      clock) -> None:
    one = {"epochs": {"value": 3}, "learning_rate_multiplier": {"value": 1.0}}
    backend = AnsweringBackend(clock=clock, generate_errors=[InvalidRequestError("gone")] * 9)
    result = _run(_eval_config(tmp_path / "a", n_trials=1, search_space=one,
                               max_consecutive_failures=1), clock, backend)
    failed = config_results(load_config(tmp_path / "a" / "sweep.yaml")).trials[0]
    assert result.n_failed == 1 and failed.state == "FAIL"
    assert failed.fail_reason == "evaluation failed: generation failed: gone"

    backend = AnsweringBackend(clock=clock, generate_errors=[InvalidRequestError("gone")] * 9)
    result = _run(_eval_config(tmp_path / "b", n_trials=1, search_space=one,
                               objective="plateau_loss"), clock, backend)
    kept = config_results(load_config(tmp_path / "b" / "sweep.yaml")).trials[0]
    assert result.n_complete == 1 and kept.state == "COMPLETE"
    assert kept.value == pytest.approx(kept.loss_at_plateau) and kept.eval_scores == {}
    assert kept.eval_error == "generation failed: gone"


def test_a_bad_metric_stops_the_sweep_before_any_job(tmp_path: Path, clock) -> None:
    backend = AnsweringBackend(clock=clock)
    path = _eval_config(tmp_path, evaluation={"enabled": True,
                                              "metrics": [f"{FIXTURE}:returns_text"]},
                        objective="eval:returns_text")
    with pytest.raises(ConfigError, match="returns_text.*must return a float"):
        _run(path, clock, backend)
    assert backend.submits == []


def test_multi_objective_reports_the_pareto_front(tmp_path: Path, clock) -> None:
    # Optuna has no pruning for several objectives: the pruner is left unused, not an error.
    path = _eval_config(tmp_path, objective=["eval_exact_match", "cost"], n_trials=6,
                        pruner={"kind": "median", "n_startup_trials": 1},
                        search_space={"epochs": {"choices": [2, 4]},
                                      "learning_rate_multiplier": {"choices": [0.3, 1.0, 3.0]}})
    _run(path, clock)
    study = optuna.load_study(study_name="test-sweep", storage=load_config(path).storage_url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    results = config_results(load_config(path))
    points = {t.number: t.values for t in results.trials}
    front = {n for n, (q, c) in points.items()
             if not any(q2 >= q and c2 <= c and (q2, c2) != (q, c)
                        for q2, c2 in points.values())}
    assert {t.number for t in results.pareto_front} == front and len(front) >= 2
    status = runner.invoke(app, ["status", str(path), "--json"])
    assert set(json.loads(status.output)["pareto_front"]) == front
    assert "Pareto front" in runner.invoke(app, ["status", str(path)]).output
    exported = yaml.safe_load(runner.invoke(app, ["export", str(path)]).stdout)
    assert {p["trial"] for p in exported["pareto_front"]} == front
    assert exported["objective"]["value"] == 1.0  # the best quality leads the export


# --- the fake Gemini API's generateContent, over HTTP ---------------------------------------


def test_gemini_api_sweep_scores_generate_content_answers(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("EVAL_TEST_KEY", "test-key")
    numbers = [{"text_input": str(n), "output": str(n + 1)} for n in range(40, 76)]
    words = [{"text_input": w, "output": "ten"} for w in ("nine", "nine!", "ix", "IX",
                                                            "neun", "nueve", "neuf", "nove")]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n"
                                                 for r in numbers + words), encoding="utf-8")
    with FakeGeminiApi(epoch_s=0.05) as fake:
        path = write_config(
            tmp_path, backend={"kind": "gemini-api", "base_url": fake.url,
                               "api_key_env": "EVAL_TEST_KEY"},
            dataset={"path": "data.jsonl", "validation_split": 0.25},
            search_space={"epochs": {"value": 2}, "learning_rate_multiplier": {"value": 1.0}},
            n_trials=1, concurrency=1, poll_interval_s=0.05, objective="eval_exact_match",
            evaluation={"enabled": True, "metrics": ["exact_match"], "concurrency": 3})
        result = run_sweep(load_config(path))
        calls = fake.requests(method="POST")
    assert result.n_complete == 1
    config = load_config(path)
    validation = prepare_data(config).validation
    # The fake answers n + 1 for a number and the prompt in capitals otherwise.
    wanted = sum(e.text_input.strip().isdigit() for e in validation) / len(validation)
    trial = config_results(config).trials[0]
    assert trial.eval_scores["eval_exact_match"] == pytest.approx(wanted) and 0 < wanted < 1
    assert sum(":generateContent" in c["path"] for c in calls) == len(validation)
    assert trial.eval_tokens and trial.eval_tokens >= sum(estimate_tokens(e.text_input)
                                                          for e in validation)


# --- real local training --------------------------------------------------------------------


def test_local_tuned_model_answers_better_than_its_untrained_init(tmp_path: Path) -> None:
    """One real job on configs/data/next_number.jsonl (the shipped configs/eval.yaml, made
    small), against the same model freshly initialised: tuning must raise chrF clearly."""
    from gemini_backend.local._jobdir import JobDir
    from gemini_backend.local._models import build_model

    torch.set_num_threads(1)
    config = load_config(
        REPO_ROOT / "configs" / "eval.yaml", n_trials=1, concurrency=1,
        storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/m.db",
        search_space={"epochs": {"value": 4}, "batch_size": {"value": 8},
                      "learning_rate_multiplier": {"value": 3.0}},
        backend={"kind": "local", "job_root": str(tmp_path / "jobs"), "d_model": 32,
                 "n_layers": 1, "n_heads": 2, "max_seq_len": 48, "max_new_tokens": 12,
                 "threads_per_job": 2},
        evaluation={"enabled": True, "metrics": ["exact_match", "chrf"], "max_examples": 12})
    result = run_sweep(config)
    assert result.n_complete == 1
    trial = config_results(config).trials[0]
    tuned = trial.eval_scores
    assert trial.value == tuned["eval_chrf"] and trial.eval_tokens in (None, 0)  # local: free

    job = JobDir(tmp_path / "jobs" / trial.job_id)
    _, settings = job.read_job()
    examples = prepare_data(config).validation[:12]
    untrained = build_model(settings).generate([e.text_input for e in examples])
    base_chrf = sum(chrf(a, e.output) for a, e in zip(untrained, examples,
                                                      strict=True)) / len(examples)
    base_exact = sum(exact_match(a, e.output) for a, e in zip(untrained, examples,
                                                             strict=True)) / len(examples)
    assert tuned["eval_chrf"] > base_chrf + 10, (tuned, base_chrf)
    assert tuned["eval_exact_match"] >= base_exact
