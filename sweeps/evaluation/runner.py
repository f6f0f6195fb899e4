"""Running held-out evaluation for the sweep loop: generate, score, fold into the outcome.

After a job succeeds, :class:`EvaluationRunner` evaluates its tuned model on a worker
thread, so the loop keeps polling other jobs; the loop finishes the trial when the
evaluation is done. Generation goes through ``backend.generate(ref, prompts)`` in chunks,
``evaluation.concurrency`` at a time; a :class:`TransientError` is retried with the
backends' backoff, any other error ends the evaluation with its message.

What a failed evaluation does to its trial: with an ``eval_*`` objective the
trial FAILs (its objective has no value); with a loss objective the trial completes on its
loss, the eval metrics are logged as NaN and the reason is kept (``eval_error``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import optuna

from gemini_backend import BackendError
from gemini_backend import Backoff
from gemini_backend import BaseBackend
from gemini_backend import Example
from gemini_backend import JobRef
from gemini_backend import retry_call
from sweeps.config.schema import SweepConfig
from sweeps.config.schema import is_score_objective
from sweeps.data.dataset import estimate_tokens
from sweeps.engine import budget
from sweeps.errors import ConfigError
from sweeps.evaluation.metrics import EvaluationError
from sweeps.evaluation.metrics import Metric
from sweeps.evaluation.metrics import metric_key
from sweeps.evaluation.metrics import resolve_metrics
from sweeps.evaluation.metrics import score_answers
from sweeps.trial_record import EvalRow
from sweeps.trial_record import InFlight
from sweeps.trial_record import TrialOutcome

logger = logging.getLogger(__name__)

#: Backends whose generation costs nothing (local training, replayed curves).
FREE_GENERATION_KINDS = frozenset({"local", "replay"})
_BACKOFF = Backoff(initial_s=1.0, maximum_s=30.0, max_attempts=5)


@dataclass(frozen=True, slots=True)
class EvalResult:
    """A finished evaluation: mean score per metric key, one row per example, tokens used."""

    scores: dict[str, float]
    rows: tuple[EvalRow, ...]
    tokens: int
    error: str | None = None


class Evaluator:
    """Asks a succeeded job's tuned model for answers and scores them.

    Args:
        backend: the sweep's backend (``capabilities.can_generate``).
        metrics: from :func:`sweeps.evaluation.metrics.resolve_metrics`.
        examples: the validation examples to answer (preamble applied, text inputs).
        concurrency: generation calls in flight at once.
        sleep: waits between retries (tests inject a fake).
    """

    def __init__(self, backend: BaseBackend, metrics: tuple[Metric, ...],
                 examples: Sequence[Example], *, concurrency: int = 4,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.backend = backend
        self.metrics = metrics
        self.examples = tuple(examples)
        self.concurrency = concurrency
        self.counts_tokens = backend.kind not in FREE_GENERATION_KINDS
        self._sleep = sleep

    @property
    def estimated_tokens(self) -> int:
        """Generation tokens one evaluation is billed for, before it runs: each prompt and
        an answer as long as the expected one (0 where generation is free). The budget
        commits it with the trial's training tokens, so an evaluation is paid for before
        the job that needs it starts."""
        if not self.counts_tokens:
            return 0
        return sum(estimate_tokens(e.text_input or "") + estimate_tokens(e.output)
                   for e in self.examples)

    def evaluate(self, ref: JobRef) -> EvalResult:
        """Answers and scores for every example; never raises for a backend or metric error
        (the result's ``error`` says what went wrong)."""
        prompts = [e.text_input or "" for e in self.examples]
        size = max(1, math.ceil(len(prompts) / self.concurrency))
        chunks = [prompts[i:i + size] for i in range(0, len(prompts), size)]
        with ThreadPoolExecutor(max_workers=self.concurrency,
                                thread_name_prefix="sweep-generate") as pool:
            futures = [pool.submit(self._generate, ref, chunk) for chunk in chunks]
            answers: list[str] = []
            error = None
            for future in futures:
                try:
                    answers += future.result()
                except BackendError as exc:
                    error = error or f"generation failed: {exc.message}"
        rows = tuple(EvalRow(input=p, expected=e.output, prediction=a)
                     for p, e, a in zip(prompts, self.examples, answers, strict=False))
        tokens = sum(estimate_tokens(r.input) + estimate_tokens(r.prediction) for r in rows) \
            if self.counts_tokens else 0
        if error is not None:
            return EvalResult(scores={}, rows=rows, tokens=tokens, error=error)
        try:
            scores = score_answers(self.metrics, [(r.prediction, r.expected) for r in rows])
        except EvaluationError as exc:
            return EvalResult(scores={}, rows=rows, tokens=tokens, error=str(exc))
        return EvalResult(scores=scores, rows=rows, tokens=tokens)

    def _generate(self, ref: JobRef, prompts: list[str]) -> list[str]:
        """One chunk's answers; transient errors retried with backoff, like the backends."""
        answers = retry_call(lambda _: list(self.backend.generate(ref, prompts)),
                             what=f"job={ref.job_id} generate", backoff=_BACKOFF,
                             sleep=self._sleep)
        if len(answers) != len(prompts):
            raise BackendError(f"the backend answered {len(answers)} of {len(prompts)} "
                               "prompts")
        return answers


def build_evaluator(config: SweepConfig, backend: BaseBackend,
                    validation: Sequence[Example]) -> Evaluator | None:
    """The sweep's evaluator, or None when evaluation is off; checked before any trial.

    Raises:
        ConfigError: no validation split, output-only examples, a backend that cannot
            generate, or a metric that cannot be imported or returns no float.
    """
    settings = config.evaluation
    if not settings.enabled:
        return None
    if not validation:
        raise ConfigError("evaluation.enabled needs held-out examples: set "
                          "dataset.validation_split (e.g. 0.1)")
    if any(e.text_input is None for e in validation):
        raise ConfigError("evaluation needs examples with a text_input to answer; this "
                          "dataset is output-only: turn evaluation off")
    if not backend.capabilities.can_generate:
        raise ConfigError(f"evaluation.enabled: the {backend.kind} backend cannot generate "
                          "answers with a tuned model; turn evaluation off for it")
    examples = tuple(validation[:settings.max_examples])
    metrics = resolve_metrics(settings.metrics,
                              probe=(examples[0].output, examples[0].output))
    return Evaluator(backend, metrics, examples, concurrency=settings.concurrency)


def with_evaluation(config: SweepConfig, outcome: TrialOutcome,
                    result: EvalResult) -> TrialOutcome:
    """``outcome`` with the evaluation's scores, rows and tokens; an ``eval_*`` objective
    takes its value from them, and FAILs the trial when there is none."""
    spent = outcome.training_tokens + result.tokens
    merged = dataclasses.replace(
        outcome, eval_scores=dict(result.scores), eval_rows=result.rows,
        eval_tokens=result.tokens, eval_error=result.error,
        cost=budget.cost_of(spent, config.budget))
    quality = config.objectives[0]
    if not is_score_objective(quality):
        if result.error:
            logger.warning("trial=%d evaluation failed (%s); it completes on its %s",
                           outcome.number, result.error, quality)
        return merged
    value = result.scores.get(metric_key(quality))
    if value is None:
        reason = result.error or f"no {quality} score"
        return dataclasses.replace(merged, state=optuna.trial.TrialState.FAIL, value=None,
                                   fail_reason=f"evaluation failed: {reason}")
    return dataclasses.replace(merged, value=value)


def cost_value(outcome: TrialOutcome) -> float:
    """The ``cost`` objective: money when a price is configured, else tokens (training plus
    billed generation)."""
    if outcome.cost is not None:
        return float(outcome.cost)
    return float(outcome.training_tokens + outcome.eval_tokens)


def objective_values(config: SweepConfig, outcome: TrialOutcome) -> list[float]:
    """What Optuna is told: the quality value, and the cost when multi-objective."""
    assert outcome.value is not None, "only completed trials have objective values"
    values = [float(outcome.value)]
    if len(config.objectives) > 1:
        values.append(cost_value(outcome))
    return values


class EvaluationRunner:
    """Evaluations in flight for the sweep loop, on their own worker threads."""

    def __init__(self, evaluator: Evaluator, config: SweepConfig) -> None:
        self.evaluator = evaluator
        self.config = config
        self._pool = ThreadPoolExecutor(max_workers=max(1, config.concurrency),
                                        thread_name_prefix="sweep-eval")
        self._running: dict[int, tuple[InFlight, TrialOutcome, Future[EvalResult]]] = {}

    def start(self, job: InFlight, outcome: TrialOutcome) -> None:
        """Evaluate the job's tuned model; the job stays in flight (not polled) meanwhile."""
        assert job.ref is not None
        logger.info("trial=%d job=%s evaluating on %d held-out examples", job.number,
                    job.ref.job_id, len(self.evaluator.examples))
        job.next_poll_s = math.inf
        self._running[job.number] = (job, outcome,
                                     self._pool.submit(self.evaluator.evaluate, job.ref))

    def finished(self) -> list[tuple[InFlight, TrialOutcome]]:
        """The evaluations that ended since the last call, folded into their outcomes."""
        done = []
        for number, (job, outcome, future) in list(self._running.items()):
            if not future.done():
                continue
            del self._running[number]
            error = future.exception()
            result = future.result() if error is None else EvalResult(
                scores={}, rows=(), tokens=0, error=f"evaluation crashed: {error!r}")
            merged = with_evaluation(self.config, outcome, result)
            logger.info("trial=%d evaluated: %s", number, ", ".join(
                f"{k}={v:.4g}" for k, v in merged.eval_scores.items()) or merged.eval_error)
            done.append((job, merged))
        return done

    def pending(self) -> list[Future[EvalResult]]:
        return [future for _, _, future in self._running.values()]

    def shutdown(self) -> None:
        """Stop without waiting: a trial still evaluating stays RUNNING and is evaluated
        again by the next ``gemini-sweep run``."""
        self._pool.shutdown(wait=False, cancel_futures=True)
