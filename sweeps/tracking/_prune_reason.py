"""Why a pruned trial was cancelled, in words, for its MLflow run.

A pruner only answers yes or no; what a user browsing MLflow wants is which rule cancelled
the job, after which epoch and on what loss. The epoch is the last one the trial was scored
on (the pruner decides at the end of an epoch), the loss the one the pruner read there:
validation loss when the trial has it, training loss otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from sweeps.trial_record import TrialOutcome

TAG_PRUNE_REASON = "gemini_sweep.prune_reason"
TAG_PRUNED_AFTER_EPOCH = "gemini_sweep.pruned_after_epoch"


def prune_tags(outcome: TrialOutcome, pruner_setting: str | None) -> dict[str, str]:
    """The reason and epoch tags of a pruned trial's run (``pruner_setting``: the config's
    ``pruner`` section as JSON, as the parent run's params hold it)."""
    losses = outcome.eval_epoch_loss or outcome.train_epoch_loss
    if not losses:
        return {TAG_PRUNE_REASON: f"{_rule(pruner_setting)}; no epoch had ended"}
    epoch = len(losses)
    which = "validation" if outcome.eval_epoch_loss else "training"
    reason = (f"cancelled after epoch {epoch} ({which} loss {losses[-1]:.4g} there): "
              f"{_rule(pruner_setting)}")
    return {TAG_PRUNE_REASON: reason, TAG_PRUNED_AFTER_EPOCH: str(epoch)}


def _rule(pruner_setting: str | None) -> str:
    """The pruner's rule with the config's numbers, e.g. "behind_leader: the loss was more
    than 1.3 x the lowest loss another trial had at that epoch"."""
    try:
        pruner: dict[str, Any] = json.loads(pruner_setting or "{}")
    except ValueError:
        pruner = {}
    kind = pruner.get("kind", "the pruner")
    if kind == "behind_leader":
        rule = (f"behind_leader: the loss was more than {pruner.get('ratio')} x the lowest "
                "loss another trial had at that epoch")
        if pruner.get("spare_catching_up"):
            rule += ", and the gap was not closing fast enough to catch up by the last epoch"
        return rule
    if kind == "median":
        return "median: the loss was worse than the median of earlier trials at that epoch"
    if kind in ("successive_halving", "hyperband"):
        return (f"{kind}: the loss was not in the best 1/{pruner.get('reduction_factor')} "
                "of the trials that reached that epoch")
    if kind == "patient":
        return f"patient: the loss had not improved for {pruner.get('patience')} epochs"
    return f"{kind} decided the trial was not worth finishing"
