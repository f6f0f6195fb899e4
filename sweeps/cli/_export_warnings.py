"""What an export must warn about before a user submits it: a body the service will refuse,
or files that name a placeholder bucket.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Gemini API base models that were tunable and are retired: a create body naming one is
#: refused (404 NOT_FOUND). Since Gemini 1.5 Flash-001 was retired in May 2025 the Gemini
#: API has had no tunable base model (reference: tuning_api.md, "Deprecation text").
RETIRED_GEMINI_API_MODELS = frozenset({
    "models/gemini-1.5-flash-001-tuning",
    "models/gemini-1.0-pro-001",
})
#: The bucket a Vertex export names when the sweep's config has none (sweeps.results.export).
PLACEHOLDER_BUCKET = "YOUR_BUCKET"


def export_warnings(*, gemini_api_model: str | None, file_uris: Iterable[str]) -> list[str]:
    """The warnings of an export whose Gemini API body names ``gemini_api_model`` (None: not
    a Gemini API export) and whose Vertex body names ``file_uris``."""
    warnings = []
    if gemini_api_model in RETIRED_GEMINI_API_MODELS:
        warnings.append(
            f"base model {gemini_api_model} is retired and the Gemini API has had no "
            "tunable base model since May 2025: the service will refuse this request "
            "(404 NOT_FOUND). Tune on Vertex AI instead: `--format vertex` (docs/vertex.md), "
            "or name a tunable model with `--base-model`.")
    placeholders = [uri for uri in file_uris if uri.startswith(f"gs://{PLACEHOLDER_BUCKET}/")]
    if placeholders:
        warnings.append(
            f"the body names {placeholders[0]}: {PLACEHOLDER_BUCKET} is a placeholder (this "
            "sweep's config names no Cloud Storage bucket). Replace it with your bucket in "
            "the body and the upload commands, or set `bucket:` in a vertex backend config "
            "and export again.")
    return warnings
