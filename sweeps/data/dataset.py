"""Load and validate tuning examples (JSONL, JSON, CSV) before any job is submitted.

:func:`validate_dataset` reads a file and reports every problem at once, each with its file,
line (CSV row, JSON index) and field, plus warnings and summary statistics; it never raises
for content problems, so ``gemini-sweep validate`` can show them all. :func:`load_dataset`
is what a sweep uses: the same checks, raising :class:`~sweeps.errors.DatasetError` on any
error. Service limits come from :func:`gemini_backend.limits_for`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemini_backend import DatasetLimits
from gemini_backend import Example
from gemini_backend import InvalidRequestError
from gemini_backend import JobRequest
from gemini_backend import config_model
from gemini_backend import create_backend
from gemini_backend import limits_for
from sweeps.data import _checks as checks
from sweeps.data._formats import read_records
from sweeps.errors import DatasetError

logger = logging.getLogger(__name__)


def estimate_tokens(text: str) -> int:
    """Tokens a service would bill for ``text``: about 4 characters a token."""
    return math.ceil(len(text) / 4) if text else 0


@dataclass(frozen=True)
class Dataset:
    """Validated examples with their preamble and content hash.

    ``examples`` are as in the file; :meth:`prepared` applies the preamble, which is what
    every backend is sent and what production prompts must carry too.
    """

    path: Path
    examples: tuple[Example, ...]
    preamble: str
    content_hash: str
    warnings: tuple[str, ...] = ()

    def prepared(self, examples: tuple[Example, ...] | None = None) -> tuple[Example, ...]:
        """``examples`` (default: all) with the preamble in front of every input."""
        chosen = self.examples if examples is None else examples
        if not self.preamble:
            return chosen
        return tuple(
            Example(output=e.output, text_input=self.preamble + (e.text_input or ""))
            for e in chosen
        )

    def split(
        self, validation_fraction: float, seed: int
    ) -> tuple[tuple[Example, ...], tuple[Example, ...]]:
        """A deterministic (train, validation) split: same seed, same split.

        File order is kept inside each part; a positive fraction gives at least one
        validation example and always leaves at least one for training.
        """
        if validation_fraction <= 0 or len(self.examples) < 2:
            return self.examples, ()
        order = list(range(len(self.examples)))
        random.Random(seed).shuffle(order)
        n_validation = min(len(order) - 1, max(1, round(len(order) * validation_fraction)))
        validation = tuple(self.examples[i] for i in sorted(order[:n_validation]))
        train = tuple(self.examples[i] for i in sorted(order[n_validation:]))
        return train, validation

    def tokens_per_epoch(self, examples: tuple[Example, ...] | None = None) -> int:
        """Estimated training tokens of one pass over ``examples`` (preamble included)."""
        return sum(
            estimate_tokens(e.text_input or "") + estimate_tokens(e.output)
            for e in self.prepared(examples)
        )


def content_hash(examples: tuple[Example, ...], preamble: str) -> str:
    """SHA-256 of the examples and preamble: the same data gives the same hash anywhere."""
    canonical = json.dumps(
        {"preamble": preamble, "examples": [[e.text_input, e.output] for e in examples]},
        ensure_ascii=False, separators=(",", ":"),
    )
    # surrogatepass: a report on bad input (an unpaired surrogate) still gets a hash; valid
    # text encodes exactly as with the strict handler.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class LengthStats:
    """Characters per text, as sent (preamble included for inputs)."""

    p50_chars: int
    p95_chars: int
    max_chars: int

    @classmethod
    def of(cls, texts: Sequence[str]) -> LengthStats:
        lengths = sorted(len(text) for text in texts)
        return cls(checks.percentile(lengths, 0.5), checks.percentile(lengths, 0.95),
                   lengths[-1] if lengths else 0)


@dataclass(frozen=True, slots=True)
class DatasetStats:
    """What ``gemini-sweep validate`` summarises. Byte sizes are ``None`` when the backend
    has no such limit."""

    n_records: int
    n_examples: int
    n_train: int
    n_validation: int
    input_chars: LengthStats
    output_chars: LengthStats
    tokens_per_epoch: int
    request_bytes: int | None = None
    jsonl_bytes: int | None = None


@dataclass(frozen=True)
class DatasetReport:
    """Everything validation found. ``dataset`` is set only when there are no errors."""

    path: Path
    backend: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    stats: DatasetStats
    preamble: str = ""
    content_hash: str = ""
    dataset: Dataset | None = None

    @property
    def is_valid(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable report of ``gemini-sweep validate --json``."""
        stats = asdict(self.stats)
        counts = {key.removeprefix("n_"): stats.pop(key) for key in list(stats)
                  if key.startswith("n_")}
        counts.update(errors=len(self.errors), warnings=len(self.warnings))
        return {"path": str(self.path), "backend": self.backend, "is_valid": self.is_valid,
                "counts": counts, "errors": list(self.errors),
                "warnings": list(self.warnings), "stats": stats, "preamble": self.preamble,
                "content_hash": self.content_hash}


def validate_dataset(path: str | Path, *, preamble: str = "", backend: str = "local",
                     validation_split: float = 0.0, seed: int = 0) -> DatasetReport:
    """Check ``path`` for ``backend`` and report every error and warning; never raises for
    content problems.

    Args:
        path: a ``.jsonl``, ``.json`` or ``.csv`` file of ``text_input``/``output`` examples.
        preamble: text put in front of every input (counted in the input length limit).
        backend: the backend kind whose limits apply (``local``, ``gemini-api``, ``vertex``).
        validation_split: fraction held out for validation; checked against the limits.
        seed: the seed of the split.
    """
    path = Path(path)
    limits = limits_for(backend)
    read = read_records(path)
    errors, warnings = list(read.problems), list[str]()
    if not checks.is_encodable(preamble):
        errors.append(f"{path}: preamble: contains an unpaired surrogate (a \\ud800-\\udfff "
                      "escape without its pair); fix the escape in the config")
    located = []
    for record in read.records:
        example, problems = checks.check_record(record, limits, preamble=preamble)
        errors += problems
        if example is not None:
            located.append(checks.Located(record.where, example))
    if read.records or not read.problems:
        count_errors, warnings = checks.check_count(str(path), len(read.records), limits)
        errors += count_errors
    errors += checks.check_same_type(located)
    empty_errors, empty_warnings = checks.check_empty_inputs(read.records, limits,
                                                             preamble=preamble)
    errors += empty_errors
    warnings += empty_warnings + checks.warn_duplicates(located) + checks.warn_format(located)
    examples = tuple(item.example for item in located)
    dataset = Dataset(path=path, examples=examples, preamble=preamble,
                      content_hash=content_hash(examples, preamble), warnings=tuple(warnings))
    train, validation = dataset.split(validation_split, seed)
    stats = _stats(dataset, train, validation, limits, n_records=len(read.records))
    if located:
        errors += _size_errors(str(path), stats, limits, validation_split)
    logger.debug("validated %s: %d errors, %d warnings", path, len(errors), len(warnings))
    return DatasetReport(path=path, backend=backend, errors=tuple(errors),
                         warnings=tuple(warnings), stats=stats, preamble=preamble,
                         content_hash=dataset.content_hash,
                         dataset=None if errors else dataset)


def load_dataset(path: str | Path, *, preamble: str = "", backend: str = "local",
                 validation_split: float = 0.0, seed: int = 0) -> Dataset:
    """Read ``path`` (by extension: .jsonl, .json, .csv) and validate it for ``backend``.

    Raises:
        DatasetError: listing every problem with file, line (or row / index) and field.
    """
    report = validate_dataset(path, preamble=preamble, backend=backend,
                              validation_split=validation_split, seed=seed)
    if report.dataset is None:
        raise DatasetError(f"{path}: invalid dataset, {len(report.errors)} problem(s):\n  "
                           + "\n  ".join(report.errors), list(report.errors))
    for warning in report.warnings:
        logger.warning("dataset: %s", warning)
    return report.dataset


def gemini_api_request_bytes(examples: Sequence[Example]) -> int | None:
    """Size of a ``tunedModels.create`` body carrying ``examples`` inline, measured by the
    gemini-api backend on the body it sends, with the longest name and all knobs, so a
    dataset that passes here is never rejected for size at submit."""
    request = JobRequest(train=tuple(examples), epochs=100, batch_size=64,
                         learning_rate_multiplier=1.0, display_name="x" * 40,
                         base_model="models/gemini-1.5-flash-001-tuning", idempotency_key="size")
    return _measured_by("gemini-api", request)


def vertex_jsonl_bytes(examples: Sequence[Example]) -> int | None:
    """Size of the Vertex AI training file, measured by the Vertex backend on the file it
    uploads (without a system instruction, which the sweep's run adds to the check)."""
    request = JobRequest(train=tuple(examples), epochs=1, learning_rate_multiplier=1.0,
                         base_model="", display_name="size", idempotency_key="size")
    return _measured_by("vertex", request)


_SIZE_PROBE_SETTINGS: dict[str, dict[str, str]] = {
    "gemini-api": {"kind": "gemini-api"},
    "vertex": {"kind": "vertex", "project": "size-check", "bucket": "size-check"},
}


def _measured_by(kind: str, request: JobRequest) -> int | None:
    """What the ``kind`` backend says it sends for ``request`` (it never calls out here);
    ``None`` when it would send nothing: examples it refuses (an empty input for Vertex),
    which the example checks report with their lines."""
    settings = config_model(kind).model_validate(_SIZE_PROBE_SETTINGS[kind])
    with create_backend(settings, base_dir=Path(".")) as backend:
        try:
            size = backend.upload_bytes(request)
        except InvalidRequestError:
            return None
    assert size is not None, f"the {kind} backend has a size limit, so it measures its upload"
    return size


def _stats(dataset: Dataset, train: tuple[Example, ...], validation: tuple[Example, ...],
           limits: DatasetLimits, *, n_records: int) -> DatasetStats:
    prepared = dataset.prepared()
    prepared_train = dataset.prepared(train)
    has_request_limit = limits.max_inline_request_bytes is not None
    return DatasetStats(
        n_records=n_records, n_examples=len(prepared), n_train=len(train),
        n_validation=len(validation),
        input_chars=LengthStats.of([e.text_input for e in prepared if e.text_input is not None]),
        output_chars=LengthStats.of([e.output for e in prepared]),
        tokens_per_epoch=dataset.tokens_per_epoch(train),
        request_bytes=gemini_api_request_bytes(prepared_train) if has_request_limit else None,
        jsonl_bytes=(vertex_jsonl_bytes(prepared_train)
                     if limits.max_jsonl_bytes is not None else None),
    )


def _size_errors(label: str, stats: DatasetStats, limits: DatasetLimits,
                 validation_split: float) -> list[str]:
    """The limits on the whole request or file, and on the split."""
    errors = []
    request_cap, jsonl_cap = limits.max_inline_request_bytes, limits.max_jsonl_bytes
    if stats.request_bytes is not None and request_cap and stats.request_bytes > request_cap:
        errors.append(f"{label}: the create request with the examples inline would be "
                      f"{_size(stats.request_bytes)}, over the "
                      f"{_size(request_cap)} limit of the Gemini API; "
                      "use fewer or shorter examples, or the vertex backend (a JSONL file "
                      "of up to 1 GB)")
    if stats.jsonl_bytes is not None and jsonl_cap and stats.jsonl_bytes > jsonl_cap:
        errors.append(f"{label}: the training JSONL would be {_size(stats.jsonl_bytes)}, "
                      f"over the {_size(jsonl_cap)} limit")
    if validation_split > 0:
        # Only when the whole set is big enough; otherwise the count error says it already.
        if stats.n_train < limits.min_examples <= stats.n_examples:
            errors.append(f"{label}: validation_split {validation_split:g} leaves "
                          f"{stats.n_train} training examples; at least "
                          f"{limits.min_examples} are needed")
        cap = limits.max_validation_examples
        if cap is not None and stats.n_validation > cap:
            errors.append(f"{label}: validation_split {validation_split:g} gives "
                          f"{stats.n_validation:,} validation examples, over the {cap:,} "
                          "limit; lower validation_split")
    return errors


def _size(n_bytes: int) -> str:
    """``4.21 MB (4,212,345 bytes)``: decimal units, as the services state their limits."""
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit} ({n_bytes:,} bytes)"
    return f"{n_bytes:,} bytes"
