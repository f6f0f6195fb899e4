"""The sweep config: a YAML file validated with pydantic.

Every error names the key path and its line in the YAML file (``n_trials (line 7): ...``);
unknown keys are errors, so a typo never silently falls back to a default. The ``backend``
section is validated by the model of the backend its ``kind`` selects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated
from typing import Any
from typing import Literal
from typing import get_args

from pydantic import Field
from pydantic import SerializeAsAny
from pydantic import ValidationError
from pydantic import field_validator
from pydantic import model_validator

from gemini_backend import BackendConfig
from gemini_backend import BackendError
from gemini_backend import config_model
from sweeps.config._errors import format_problems
from sweeps.config._knobs import KNOB_TAGS
from sweeps.config._knobs import Choices
from sweeps.config._knobs import Fixed
from sweeps.config._knobs import FloatRange
from sweeps.config._knobs import FromCurve
from sweeps.config._knobs import IntRange
from sweeps.config._knobs import KnobSpec
from sweeps.config._knobs import SearchSpace
from sweeps.config._knobs import Strict
from sweeps.config._numbers import BACKEND_FIELD_RANGES
from sweeps.config._numbers import DEFAULT_MAX_CONCURRENCY
from sweeps.config._numbers import MAX_EPOCHS
from sweeps.config._numbers import MAX_POLL_INTERVAL_S
from sweeps.config._numbers import MAX_TOKENS
from sweeps.config._numbers import MAX_TRIALS
from sweeps.config._numbers import MIN_POLL_INTERVAL_S
from sweeps.config._numbers import max_concurrency
from sweeps.config._numbers import number_problems
from sweeps.config._numbers import problem
from sweeps.config._numbers import raise_problems
from sweeps.config._yaml_lines import LineMap
from sweeps.config._yaml_lines import load_yaml_with_lines
from sweeps.errors import ConfigError

STATE_DIR_NAME = ".gemini_sweep"

# --- sampler, pruner, plateau, budget ---------------------------------------------------------


class SamplerConfig(Strict):
    """Optuna sampler. ``seed`` makes a sweep's proposals repeatable."""

    kind: Literal["tpe", "random", "grid", "gp", "cmaes"] = "tpe"
    # Optuna's samplers seed numpy, which takes 0 to 2**32 - 1 and raises on anything else.
    seed: int | None = Field(default=None, ge=0, lt=2**32)
    n_startup_trials: int | None = Field(default=None, ge=0, le=MAX_TRIALS)
    start: Literal["random", "stratified"] = Field(
        default="random", description="tpe only: how the n_startup_trials first trials are "
        "drawn; stratified spreads them over every knob's range (a Latin hypercube)")

    @model_validator(mode="after")
    def _stratified_start_needs_tpe(self) -> SamplerConfig:
        if self.start == "stratified" and self.kind != "tpe":
            raise ValueError(f"start: stratified is for kind: tpe; the {self.kind} sampler "
                             "draws its own start: remove start or set kind: tpe")
        return self


class NoPruner(Strict):
    kind: Literal["none"] = "none"


class MedianPrunerConfig(Strict):
    kind: Literal["median"]
    n_startup_trials: int = Field(default=3, ge=0, le=MAX_TRIALS)
    n_warmup_steps: int = Field(default=1, ge=0, le=MAX_EPOCHS,
                                description="epochs before any pruning")


class PatientPrunerConfig(Strict):
    kind: Literal["patient"]
    patience: int = Field(default=2, ge=0, le=MAX_EPOCHS)
    min_delta: float = Field(default=0.0, ge=0)


class HyperbandPrunerConfig(Strict):
    kind: Literal["hyperband"]
    min_resource: int = Field(default=1, ge=1, le=MAX_EPOCHS,
                              description="epochs before any pruning")
    reduction_factor: int = Field(default=3, ge=2, le=MAX_EPOCHS)


class SuccessiveHalvingPrunerConfig(Strict):
    """Asynchronous successive halving on the per-epoch loss: a hopeless job is cancelled
    (stopping type: jobs can never be paused), never before ``min_epochs``."""

    kind: Literal["successive_halving"]
    min_epochs: int = Field(default=1, ge=1, le=MAX_EPOCHS,
                            description="epochs before any cancel")
    reduction_factor: int = Field(default=3, ge=2, le=MAX_EPOCHS)
    min_early_stopping_rate: int = Field(default=0, ge=0, le=MAX_EPOCHS)


class LeaderGapPrunerConfig(Strict):
    """Cancel a job whose loss at an epoch is more than ``ratio`` x the lowest loss any other
    trial had at that epoch (:class:`sweeps.policy.pruners.LeaderGapPruner`); never before
    ``min_epochs``. Unlike rank-based rules it keeps configurations that learn late."""

    kind: Literal["behind_leader"]
    ratio: float = Field(default=1.3, gt=1.0, description="how far behind the leader")
    min_epochs: int = Field(default=2, ge=1, le=MAX_EPOCHS,
                            description="epochs before any cancel")
    spare_catching_up: bool = Field(
        default=False, description="keep a job whose gap to the leader, shrinking at the "
        "pace of its last epoch, would close by its last epoch")


_PRUNER_MODELS = (NoPruner, MedianPrunerConfig, PatientPrunerConfig, HyperbandPrunerConfig,
                  SuccessiveHalvingPrunerConfig, LeaderGapPrunerConfig)
PRUNER_KINDS = tuple(get_args(model.model_fields["kind"].annotation)[0]
                     for model in _PRUNER_MODELS)
PrunerConfig = Annotated[
    NoPruner | MedianPrunerConfig | PatientPrunerConfig | HyperbandPrunerConfig
    | SuccessiveHalvingPrunerConfig | LeaderGapPrunerConfig,
    Field(discriminator="kind"),
]


class PlateauConfig(Strict):
    """Options of :func:`sweeps.plateau.analysis.find_plateau` (reference/plateau.md 1.10)."""

    smoothing: float = Field(default=0.3, ge=0.0, lt=1.0, description="EMA weight per epoch")
    tolerance: float = Field(default=0.03, gt=0.0, lt=1.0,
                             description="fraction of the training loss range above the "
                             "minimum that counts as the plateau")
    validation_tolerance: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="the same on validation loss, which a job with a validation split is "
        "judged by; 0 picks its smoothed minimum (benchmarks/plateau_regret.py chose it on "
        "held-out test loss, leaving each curve set out in turn)")
    convergence_threshold: float = Field(default=0.02, gt=0.0,
                                         description="relative fall over the last epoch that "
                                         "still counts as 'not converged'")
    spike_threshold: float = Field(default=0.25, gt=0.0,
                                   description="relative rise that counts as a spike")


class BudgetConfig(Strict):
    """Spend limits. Jobs in flight count as already spent (committed)."""

    max_training_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS)
    max_cost: float | None = Field(default=None, gt=0)
    price_per_million_tokens: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _cost_needs_price(self) -> BudgetConfig:
        if self.max_cost is not None and self.price_per_million_tokens is None:
            raise ValueError("max_cost needs price_per_million_tokens to turn tokens into cost")
        return self


class DatasetConfig(Strict):
    """The tuning examples. A relative ``path`` is relative to the config file."""

    path: Path
    validation_split: float = Field(default=0.0, ge=0.0, lt=1.0)
    preamble: str = ""
    seed: int = 0

    @field_validator("preamble")
    @classmethod
    def _encodable_preamble(cls, preamble: str) -> str:
        # A "\ud800" escape loads as a str no service (nor the dataset hash) can encode.
        try:
            preamble.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("contains an unpaired surrogate escape (a \\ud800-\\udfff "
                             "escape without its pair); fix the escape") from None
        return preamble


class EvaluationConfig(Strict):
    """Held-out evaluation of each succeeded job's tuned model on the validation split.

    ``metrics`` are ``exact_match``, ``chrf`` or a user function given as an import path
    ``"package.module:function"`` taking ``(prediction, expected)`` and returning a float; its
    objective name is ``eval:<function>``.
    """

    enabled: bool = False
    metrics: list[str] = Field(default_factory=lambda: ["exact_match", "chrf"], min_length=1)
    max_examples: int = Field(default=50, ge=1, le=MAX_TRIALS)
    concurrency: int = Field(default=4, ge=1, le=DEFAULT_MAX_CONCURRENCY,
                             description="generation requests in flight")

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, metrics: list[str]) -> list[str]:
        for metric in metrics:
            if metric not in BUILTIN_METRICS and not _IMPORT_PATH.match(metric):
                raise ValueError(
                    f"unknown metric {metric!r}: use {', '.join(BUILTIN_METRICS)} or an import "
                    "path 'package.module:function'"
                )
        return metrics

    def objective_names(self) -> list[str]:
        """The objective each metric provides: ``eval_exact_match``, ``eval:<function>``."""
        return [f"eval_{m}" if m in BUILTIN_METRICS else f"eval:{m.rpartition(':')[2]}"
                for m in self.metrics]


BUILTIN_METRICS = ("exact_match", "chrf")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: Objectives computed from the loss curve; minimized.
LOSS_OBJECTIVES = ("plateau_loss", "final_loss", "eval_loss")


def is_score_objective(name: str) -> bool:
    """Evaluation scores (``eval_exact_match``, ``eval:<custom>``) are maximized; losses and
    cost are minimized."""
    is_builtin_score = name.startswith("eval_") and name not in LOSS_OBJECTIVES
    return is_builtin_score or name.startswith("eval:")


class SweepConfig(Strict):
    """A whole sweep. The field names are the YAML contract."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    dataset: DatasetConfig
    backend: SerializeAsAny[BackendConfig]
    search_space: SearchSpace = SearchSpace()
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = NoPruner()
    n_trials: int = Field(default=10, ge=1, le=MAX_TRIALS)
    concurrency: int = Field(default=1, ge=1)
    objective: str | list[str] = "plateau_loss"
    evaluation: EvaluationConfig = EvaluationConfig()
    plateau: PlateauConfig = PlateauConfig()
    budget: BudgetConfig = BudgetConfig()
    max_consecutive_failures: int = Field(default=3, ge=1, le=MAX_TRIALS)
    study_concurrency: int | None = Field(
        default=None, ge=1, le=MAX_TRIALS,
        description="jobs in flight across all workers of the study")
    lease_s: float = Field(
        default=300.0, gt=0, le=7 * 86400, description="a running trial whose worker has "
        "not written a heartbeat for this long is taken over by another worker")
    warm_start: list[str] = Field(
        default_factory=list, description="earlier sweeps (a config path or a study name in "
        "this storage) whose trials on the same dataset seed the sampler")
    cost_tolerance: float = Field(
        default=0.02, ge=0.0, description="status/export also show the cheapest trial within "
        "this fraction of the best objective")
    poll_interval_s: float | None = Field(default=None, ge=MIN_POLL_INTERVAL_S,
                                          le=MAX_POLL_INTERVAL_S)
    storage: str | None = None
    tracking_uri: str | None = None

    #: The folder of the YAML file; relative paths resolve against it. Not a YAML key.
    config_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("backend", mode="wrap")
    @classmethod
    def _backend_by_kind(cls, value: Any, handler: Any) -> BackendConfig:
        if isinstance(value, BackendConfig):
            return value
        if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
            raise ValueError("needs a 'kind': local, gemini-api, vertex, replay or "
                             "'package.module:Class'")
        try:
            model = config_model(value["kind"])
        except BackendError as exc:
            raise ValueError(exc.message) from None
        # A backend's own model may take .inf or true for a number; none of them is meant.
        raise_problems("backend", number_problems(model, value, BACKEND_FIELD_RANGES))
        return model.model_validate(value)

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_kind_is_text(cls, value: Any) -> Any:
        # pydantic quotes an unknown tag via str(): a list of aliased lists ("billion
        # laughs") as `kind` would be rendered as 10**9 items.
        if isinstance(value, dict) and not isinstance(value.get("kind", ""), str):
            raise ValueError(f"kind must be one of {', '.join(PRUNER_KINDS)}")
        return value

    @model_validator(mode="after")
    def _concurrency_within_reach(self) -> SweepConfig:
        highest = max_concurrency(self.backend.kind)
        if self.concurrency > highest:
            raise_problems("concurrency", [problem(
                ("concurrency",), f"at most {highest} jobs in flight per worker with the "
                f"{self.backend.kind} backend, got {self.concurrency}; run more workers "
                "for more", self.concurrency)])
        return self

    @model_validator(mode="after")
    def _patience_leaves_a_model_to_evaluate(self) -> SweepConfig:
        epochs = self.search_space.epochs
        if isinstance(epochs, FromCurve) and epochs.patience and self.evaluation.enabled:
            raise ValueError(
                "search_space.epochs.patience cancels jobs past their plateau, and a cancelled "
                "job leaves no tuned model to evaluate: remove patience or disable evaluation")
        return self

    @model_validator(mode="after")
    def _objective_is_known(self) -> SweepConfig:
        names = [self.objective] if isinstance(self.objective, str) else list(self.objective)
        if isinstance(self.objective, list) and (len(names) != 2 or names[1] != "cost"):
            raise ValueError("a multi-objective is [<quality objective>, cost], e.g. "
                             "[eval_exact_match, cost]")
        quality = names[0]
        eval_names = self.evaluation.objective_names() if self.evaluation.enabled else []
        if quality not in LOSS_OBJECTIVES and quality not in eval_names:
            hint = ("; eval_* objectives need evaluation: {enabled: true, metrics: [...]}"
                    if quality.startswith("eval") else "")
            raise ValueError(
                f"unknown objective {quality!r}: use one of "
                f"{', '.join(LOSS_OBJECTIVES + tuple(eval_names))}{hint}"
            )
        return self

    @property
    def objectives(self) -> list[str]:
        """The objective names, the quality one first (``cost`` second when multi-objective)."""
        return [self.objective] if isinstance(self.objective, str) else list(self.objective)

    @property
    def directions(self) -> list[str]:
        """Optuna directions: losses and cost are minimized, evaluation scores maximized."""
        return ["maximize" if is_score_objective(name) else "minimize"
                for name in self.objectives]

    # Resolved locations -------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        """Where the embedded defaults keep their files: ``.gemini_sweep/`` next to the config."""
        return self.config_dir / STATE_DIR_NAME

    @property
    def dataset_path(self) -> Path:
        path = self.dataset.path.expanduser()
        return path if path.is_absolute() else (self.config_dir / path).resolve()

    @property
    def storage_url(self) -> str:
        """The Optuna storage; default an SQLite file next to the config."""
        return self.storage or f"sqlite:///{(self.state_dir / 'optuna.db').resolve()}"

    @property
    def tracking_url(self) -> str:
        """The MLflow tracking URI; default an SQLite file next to the config."""
        return self.tracking_uri or f"sqlite:///{(self.state_dir / 'mlflow.db').resolve()}"


def load_config(path: str | Path, **overrides: Any) -> SweepConfig:
    """Read and validate a sweep config file.

    Args:
        path: the YAML file.
        overrides: top-level keys that replace the file's (the CLI's ``--storage``, ...).

    Raises:
        ConfigError: the file is missing, is not YAML, or breaks a rule; the message lists
            every problem with its key path and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    data, lines = load_yaml_with_lines(text, source=str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys (name, dataset, ...)")
    data.update({k: v for k, v in overrides.items() if v is not None})
    data["config_dir"] = path.parent.resolve()
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path, lines)) from None


def format_validation_error(error: ValidationError, path: Path, lines: LineMap) -> str:
    """One line per problem: ``file: key.path (line N): message``."""
    return format_problems(error, path, lines, union_labels=_UNION_LABELS)


#: pydantic's names for union branches, dropped from error paths unless the YAML has them.
_UNION_LABELS = frozenset({*KNOB_TAGS, *PRUNER_KINDS})


#: The knob shapes live in :mod:`sweeps.config._knobs`; they are part of this module's API.
__all__ = [
    "BUILTIN_METRICS",
    "LOSS_OBJECTIVES",
    "BudgetConfig",
    "Choices",
    "DatasetConfig",
    "EvaluationConfig",
    "Fixed",
    "FloatRange",
    "FromCurve",
    "HyperbandPrunerConfig",
    "IntRange",
    "KnobSpec",
    "LeaderGapPrunerConfig",
    "MedianPrunerConfig",
    "PatientPrunerConfig",
    "PlateauConfig",
    "SamplerConfig",
    "SearchSpace",
    "SuccessiveHalvingPrunerConfig",
    "SweepConfig",
    "format_validation_error",
    "is_score_objective",
    "load_config",
]
