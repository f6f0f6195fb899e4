"""The data a sweep trains on stays the data it began with.

A study ranks its trials against each other; trials trained on different examples (or a
different split of them) cannot be ranked together. The first run of a sweep stores what it
trains on in the study; a later run (a restart, another worker) whose dataset differs is
refused, saying what changed, before it asks or submits anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from sweeps import trial_record as ts
from sweeps.engine._outcome import PreparedData
from sweeps.errors import DatasetError

STUDY_ATTR_DATASET = "gemini_sweep.dataset"


def dataset_identity(data: PreparedData) -> dict[str, Any]:
    return {"content_hash": data.content_hash, "n_train": len(data.train),
            "n_validation": len(data.validation)}


def check_dataset_unchanged(study: optuna.Study, data: PreparedData, *, path: Path,
                            sweep_name: str) -> None:
    """Store the sweep's dataset on its first run; refuse a different one afterwards.

    Call under the study's lock, so workers starting together agree on one dataset.

    Raises:
        DatasetError: the dataset (or its split) differs from the one the sweep began with.
    """
    now = dataset_identity(data)
    began = study.user_attrs.get(STUDY_ATTR_DATASET)
    if not isinstance(began, dict):
        # A sweep begun before its dataset was stored: its trials carry the hash they used.
        used = {str(t.user_attrs[ts.ATTR_DATASET_HASH])
                for t in study.get_trials(deepcopy=False)
                if t.user_attrs.get(ts.ATTR_DATASET_HASH) is not None}
        if used and used != {now["content_hash"]}:
            raise _changed(path, sweep_name, [_hash_change(sorted(used)[0], now)])
        study.set_user_attr(STUDY_ATTR_DATASET, now)
        return
    changes = []
    if began.get("content_hash") != now["content_hash"]:
        changes.append(_hash_change(str(began.get("content_hash")), now))
    if (began.get("n_train"), began.get("n_validation")) != (now["n_train"],
                                                             now["n_validation"]):
        changes.append(f"examples for training / validation: {began.get('n_train')} / "
                       f"{began.get('n_validation')} then, {now['n_train']} / "
                       f"{now['n_validation']} now")
    if changes:
        raise _changed(path, sweep_name, changes)


def _hash_change(then: str, now: dict[str, Any]) -> str:
    return (f"content (examples or preamble): hash {then[:12]} then, "
            f"{str(now['content_hash'])[:12]} now")


def _changed(path: Path, sweep_name: str, changes: list[str]) -> DatasetError:
    return DatasetError(
        f"{path}: the dataset changed since sweep {sweep_name!r} began: {'; '.join(changes)}. "
        "Trials trained on different data cannot be ranked together: restore the file (and "
        "dataset.validation_split / seed), or give the sweep a new name to start a new sweep "
        "on this data", changes)


__all__ = ["STUDY_ATTR_DATASET", "check_dataset_unchanged", "dataset_identity"]
