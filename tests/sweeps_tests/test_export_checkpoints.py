"""The export names only epochs with a checkpoint, or says plainly that the plateau has none.

Vertex keeps about one checkpoint per epoch up to 10 epochs and about ten, spread, beyond
(the tuning-checkpoints page): a 12-epoch job may have none for epochs 3 and 9.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from optuna.trial import TrialState

from tests.sweeps_tests.test_status_export import add_trial
from tests.sweeps_tests.test_status_export import invoke
from tests.sweeps_tests.test_status_export import make_study
from tests.sweeps_tests.test_status_export import write_config

KEPT = (1, 2, 4, 5, 6, 7, 8, 10)  # gaps as in a job over 10 epochs


def test_a_plateau_epoch_without_a_checkpoint_names_the_nearest_kept_one(
        tmp_path: Path) -> None:
    config = write_config(tmp_path, {"kind": "vertex", "project": "p", "bucket": "bkt"})
    study = make_study(config)
    add_trial(study, TrialState.COMPLETE, value=0.3, epochs=10, plateau=3, checkpoints=[
        {"checkpoint_id": f"c{e}", "epoch": e} for e in KEPT])
    exported = yaml.safe_load(invoke("export", config).stdout)
    assert exported["plateau"]["checkpoint_id"] is None  # never a checkpoint of another epoch
    notes = " ".join(exported["notes"])
    assert "kept none for epoch 3" in notes
    assert "nearest is epoch 2 (checkpoint c2)" in notes
