"""Held-out evaluation metrics: what a tuned model's answers score against the expected ones.

Training loss cannot show overfitting, and the Gemini API reports nothing else, so after a
job succeeds the runner asks the tuned model to answer the validation split's inputs
(:mod:`sweeps.evaluation.runner`) and scores each answer here. Built-in metrics:

* ``exact_match``: 1.0 when the answer equals the expected output after whitespace
  normalisation (trimmed, runs of whitespace as one space), else 0.0; its mean is the
  fraction answered exactly.
* ``chrf``: chrF (Popović 2015) as sacrebleu computes it by default: character n-grams of
  orders 1..6 with whitespace removed, precision and recall averaged over the orders both
  strings have, combined as an F-score with beta=2 (recall weighs more); 0..100.

A user metric is an import path ``"package.module:function"`` taking ``(prediction,
expected)`` and returning a float. :func:`resolve_metrics` imports and tries every metric at
sweep start, so a typo fails the sweep before any job is paid for. Scores are means over the
evaluated examples; every evaluation objective is maximized.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from sweeps.config.schema import BUILTIN_METRICS
from sweeps.errors import ConfigError
from sweeps.errors import SweepError

logger = logging.getLogger(__name__)

MetricFunction = Callable[[str, str], float]

_WHITESPACE = re.compile(r"\s+")
CHRF_MAX_ORDER = 6
CHRF_BETA = 2.0


class EvaluationError(SweepError):
    """A metric failed or returned something that is not a number (the message names it)."""


def normalize_whitespace(text: str) -> str:
    """``text`` trimmed, with every run of whitespace (newlines, tabs) as one space."""
    return _WHITESPACE.sub(" ", text).strip()


def exact_match(prediction: str, expected: str) -> float:
    """1.0 when the two are equal after :func:`normalize_whitespace`, else 0.0."""
    return 1.0 if normalize_whitespace(prediction) == normalize_whitespace(expected) else 0.0


def _char_ngrams(text: str, order: int) -> Counter[str]:
    return Counter(text[i:i + order] for i in range(len(text) - order + 1))


def chrf(prediction: str, expected: str, *, max_order: int = CHRF_MAX_ORDER,
         beta: float = CHRF_BETA) -> float:
    """The chrF score of ``prediction`` against ``expected``, from 0 (nothing shared) to 100.

    Two empty strings are identical (100); an empty answer to a non-empty one scores 0.
    """
    hyp = _WHITESPACE.sub("", prediction)
    ref = _WHITESPACE.sub("", expected)
    if not hyp and not ref:
        return 100.0
    precisions: list[float] = []
    recalls: list[float] = []
    for order in range(1, max_order + 1):
        hyp_grams, ref_grams = _char_ngrams(hyp, order), _char_ngrams(ref, order)
        if not hyp_grams or not ref_grams:
            continue  # one string is shorter than the order: sacrebleu's effective order
        matches = sum((hyp_grams & ref_grams).values())
        precisions.append(matches / sum(hyp_grams.values()))
        recalls.append(matches / sum(ref_grams.values()))
    if not precisions:
        return 0.0
    precision = sum(precisions) / len(precisions)
    recall = sum(recalls) / len(recalls)
    if precision + recall == 0:
        return 0.0
    factor = beta ** 2
    return 100.0 * (1 + factor) * precision * recall / (factor * precision + recall)


_BUILTIN_FUNCTIONS: dict[str, MetricFunction] = {"exact_match": exact_match, "chrf": chrf}


@dataclass(frozen=True, slots=True)
class Metric:
    """One configured metric.

    Args:
        spec: as written in ``evaluation.metrics`` (``chrf``, ``pkg.mod:fn``).
        key: the MLflow metric and trial attribute name (``eval_chrf``, ``eval_fn``).
        objective: the objective name that selects it (``eval_chrf``, ``eval:fn``).
        function: ``(prediction, expected) -> float``.
    """

    spec: str
    key: str
    objective: str
    function: MetricFunction

    def score(self, prediction: str, expected: str) -> float:
        """The metric of one answer, checked to be a finite number.

        Raises:
            EvaluationError: the function raised or returned a non-number, naming the metric.
        """
        try:
            value = self.function(prediction, expected)
        except Exception as exc:  # a user's function may raise anything
            raise EvaluationError(f"evaluation metric {self.spec!r} raised "
                                  f"{type(exc).__name__}: {exc}") from exc
        return _as_score(self.spec, value)


def _as_score(spec: str, value: object) -> float:
    if not isinstance(value, numbers.Real):
        raise EvaluationError(f"evaluation metric {spec!r} returned {type(value).__name__} "
                              f"{value!r}; it must return a float")
    score = float(value)
    if not math.isfinite(score):
        raise EvaluationError(f"evaluation metric {spec!r} returned {score}; it must return "
                              "a finite float")
    return score


def metric_key(objective: str) -> str:
    """The trial attribute / MLflow key of an evaluation objective (``eval:fn`` -> ``eval_fn``)."""
    return "eval_" + objective.removeprefix("eval:") if objective.startswith("eval:") \
        else objective


def resolve_metrics(specs: list[str], *, probe: tuple[str, str] | None = None
                    ) -> tuple[Metric, ...]:
    """Import every metric of ``evaluation.metrics`` and try it once on ``probe``
    ``(prediction, expected)``, so a bad metric stops the sweep before any trial.

    Raises:
        ConfigError: naming the metric and what to fix (import error, not callable, not a
            float).
    """
    metrics = []
    for spec in specs:
        if spec in BUILTIN_METRICS:
            metric = Metric(spec, f"eval_{spec}", f"eval_{spec}", _BUILTIN_FUNCTIONS[spec])
        else:
            name = spec.rpartition(":")[2]
            metric = Metric(spec, f"eval_{name}", f"eval:{name}", _import_function(spec))
        if probe is not None:
            try:
                metric.score(*probe)
            except EvaluationError as exc:
                raise ConfigError(f"evaluation.metrics: {exc} (tried on the first "
                                  "validation example)") from None
        metrics.append(metric)
    return tuple(metrics)


def _import_function(spec: str) -> MetricFunction:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises at import
        raise ConfigError(f"evaluation.metrics: {spec!r}: cannot import module "
                          f"{module_name!r} ({type(exc).__name__}: {exc}); check the "
                          "spelling and that the package is installed or on PYTHONPATH"
                          ) from None
    function = getattr(module, attr, None)
    if function is None:
        raise ConfigError(f"evaluation.metrics: {spec!r}: module {module_name!r} has no "
                          f"{attr!r}")
    if not callable(function):
        raise ConfigError(f"evaluation.metrics: {spec!r}: {attr!r} is a "
                          f"{type(function).__name__}, not a function (prediction, "
                          "expected) -> float")
    return function  # type: ignore[no-any-return]


def score_answers(metrics: tuple[Metric, ...], pairs: list[tuple[str, str]]
                  ) -> dict[str, float]:
    """The mean of each metric over ``(prediction, expected)`` pairs, by metric key.

    Raises:
        EvaluationError: a metric failed on one answer.
    """
    if not pairs:
        return {}
    return {metric.key: sum(metric.score(p, e) for p, e in pairs) / len(pairs)
            for metric in metrics}


__all__ = [
    "EvaluationError",
    "Metric",
    "chrf",
    "exact_match",
    "metric_key",
    "normalize_whitespace",
    "resolve_metrics",
    "score_answers",
]
