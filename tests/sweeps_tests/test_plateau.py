"""The plateau rule (reference/plateau.md section 1.10) on the curves users actually see."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from gemini_backend import LossSnapshot
from sweeps.config.schema import PlateauConfig
from sweeps.plateau.analysis import epoch_means
from sweeps.plateau.analysis import find_plateau
from sweeps.plateau.analysis import objective_value

# Google's tuning-guide curve (seed document): the per-epoch mean loss "spikes between the
# first and the second epochs, then sharply declines ... and levels out", plateauing at
# about epochs 4-6, so "you can set the Epoch parameter to 4 and still get the same
# performance". Per-epoch means in that shape: a 37% rise from epoch 1 to 2 (above the
# default 25% spike threshold), the drop over epochs 3-4, then under 1% of the range per epoch.
SEED_CURVE = [1.9, 2.6, 0.9, 0.35, 0.33, 0.32, 0.32]

# Validation loss that bottoms out at epoch 5 and then climbs while training loss keeps falling.
OVERFIT_TRAIN = [2.0, 1.2, 0.8, 0.6, 0.5, 0.45, 0.40, 0.36, 0.33]
OVERFIT_EVAL = [2.1, 1.3, 0.9, 0.75, 0.72, 0.78, 0.86, 0.95, 1.05]


def test_seed_curve_plateaus_at_epoch_4_with_the_default_options() -> None:
    result = find_plateau(SEED_CURVE, **PlateauConfig().model_dump())

    assert result.epoch == 4
    assert result.recommended_epochs == 4
    assert result.spike
    assert not result.not_converged and not result.overfitting and not result.flat
    assert not result.used_validation
    assert result.raw_loss == pytest.approx(0.35)
    assert 0.32 <= result.loss <= 0.35  # smoothed with the epochs after it
    assert "epoch 4" in result.reason and "spike at epoch 2" in result.reason
    assert "no validation split" in result.reason


def test_pick_is_stable_under_noise() -> None:
    rng = random.Random(4)
    picks = []
    for _ in range(50):
        noisy = [v + rng.gauss(0.0, 0.01) for v in SEED_CURVE]
        picks.append(find_plateau(noisy).epoch)
    assert set(picks) <= {4, 5}
    assert picks.count(4) >= 45


def test_overfitting_validation_curve_picks_near_its_minimum_and_flags_it() -> None:
    result = find_plateau(OVERFIT_TRAIN, OVERFIT_EVAL)

    assert result.used_validation
    assert result.overfitting
    assert result.epoch in (4, 5)  # validation minimum is epoch 5; 0.75 vs 0.72 is within 3%
    assert not result.not_converged
    assert result.recommended_epochs == result.epoch
    assert "overfitting" in result.reason
    # Training loss alone would have said "keep going": it is still falling at the end.
    assert find_plateau(OVERFIT_TRAIN).not_converged


def test_the_default_pick_on_validation_loss_is_its_smoothed_minimum() -> None:
    # A validation loss that levels off at epoch 5 and keeps gaining a little until epoch 8:
    # the held-out quality is best where the validation loss is lowest, so the shipped
    # options pick epoch 8, not the first epoch "within tolerance" (epoch 5), and still say
    # the curve is falling too slowly to call it unconverged.
    train = [2.0, 1.3, 0.9, 0.7, 0.6, 0.55, 0.5, 0.47, 0.45, 0.44]
    evals = [2.1, 1.4, 1.0, 0.82, 0.75, 0.745, 0.74, 0.735, 0.74, 0.745]
    shipped = find_plateau(train, evals, **PlateauConfig().model_dump())
    tolerant = find_plateau(train, evals, **{**PlateauConfig().model_dump(),
                                             "validation_tolerance": 0.03})

    assert shipped.used_validation and shipped.epoch == 8
    assert tolerant.epoch == 5
    assert "lowest at epoch 8" in shipped.reason
    # Training loss alone keeps the seed guide's rule: the tolerance, not the minimum.
    assert find_plateau(SEED_CURVE, **PlateauConfig().model_dump()).epoch == 4


def test_curve_that_never_flattens_is_not_converged_and_asks_for_more_epochs() -> None:
    falling = [2.0, 1.6, 1.3, 1.05, 0.85, 0.7]
    result = find_plateau(falling)

    assert result.not_converged
    assert result.epoch == 6
    assert result.recommended_epochs is not None and result.recommended_epochs > 6
    assert "not converged" in result.reason


def test_curve_still_falling_at_the_end_is_not_converged_even_if_within_tolerance() -> None:
    # Within 3% of the range from epoch 5, but still 4-5% lower per epoch at the end.
    result = find_plateau([3.0, 1.0, 0.5, 0.42, 0.40, 0.38, 0.365])
    assert result.epoch < 7
    assert result.not_converged


def test_flat_curve_is_flat_from_epoch_1() -> None:
    result = find_plateau([0.51, 0.505, 0.5, 0.502, 0.499])

    assert result.flat
    assert result.epoch == 1
    assert not result.not_converged
    assert result.reason.startswith("flat from epoch 1")


def test_constant_curve_is_flat_from_epoch_1() -> None:
    result = find_plateau([0.7, 0.7, 0.7])
    assert (result.epoch, result.flat, result.loss) == (1, True, 0.7)


def test_single_epoch_cannot_show_a_plateau() -> None:
    result = find_plateau([1.25])

    assert result.epoch == 1
    assert result.loss == 1.25
    assert result.not_converged
    assert result.recommended_epochs is not None and result.recommended_epochs > 1


def test_two_epochs_still_falling_picks_the_last_and_is_not_converged() -> None:
    result = find_plateau([1.0, 0.5])
    assert (result.epoch, result.not_converged) == (2, True)


def test_nan_and_inf_are_ignored_and_epochs_keep_their_numbers() -> None:
    nan, inf = math.nan, math.inf
    clean = find_plateau(SEED_CURVE)
    dirty = find_plateau([1.9, 2.6, nan, 0.35, 0.33, inf, 0.32, 0.32])

    assert clean.epoch == 4
    assert dirty.epoch == 4  # epoch 3 is missing; the drop to 0.35 is still epoch 4
    assert math.isnan(dirty.smoothed[2]) and math.isinf(dirty.smoothed[5])
    assert math.isfinite(dirty.loss)


def test_validation_with_nan_falls_back_to_training_loss_when_too_short() -> None:
    result = find_plateau(SEED_CURVE, [math.nan] * 5 + [0.5, 0.4])
    assert not result.used_validation
    assert result.epoch == 4
    assert "training loss was used" in result.reason


@pytest.mark.parametrize(
    ("train", "eval_loss", "message"),
    [
        ([], None, "at least one epoch"),
        ([math.nan, math.inf], None, "no finite training loss"),
        ([1.0, 0.5], [1.0], "eval_loss has 1"),
    ],
)
def test_unusable_input_raises_a_clear_value_error(train, eval_loss, message) -> None:
    with pytest.raises(ValueError, match=message):
        find_plateau(train, eval_loss)


def test_option_out_of_range_names_the_option() -> None:
    with pytest.raises(ValueError, match="smoothing=1.5"):
        find_plateau(SEED_CURVE, smoothing=1.5)


def test_epoch_means_handles_uneven_steps_duplicates_and_eval_per_epoch() -> None:
    snapshots = [
        LossSnapshot(step=1, epoch=1, loss=3.0),
        LossSnapshot(step=2, epoch=1, loss=2.0),
        LossSnapshot(step=3, epoch=1, loss=1.0, eval_loss=1.5),
        LossSnapshot(step=4, epoch=2, loss=0.8),
        LossSnapshot(step=4, epoch=2, loss=0.8),  # re-polled: counts once
        LossSnapshot(step=5, epoch=2, loss=math.nan),  # a diverged step is left out
        LossSnapshot(step=6, epoch=2, loss=0.6, eval_loss=0.9),
        LossSnapshot(step=7, epoch=3, loss=0.5, eval_loss=0.7),
    ]
    train, evaluation = epoch_means(list(reversed(snapshots)))

    assert train == pytest.approx([2.0, 0.7, 0.5])
    assert evaluation == [1.5, 0.9, 0.7]


def test_epoch_means_gives_no_eval_unless_every_epoch_has_one_and_keeps_gaps() -> None:
    snapshots = [
        LossSnapshot(step=1, epoch=1, loss=2.0, eval_loss=1.9),
        LossSnapshot(step=2, epoch=3, loss=1.0, eval_loss=1.1),
    ]
    train, evaluation = epoch_means(snapshots)

    assert train[0] == 2.0 and math.isnan(train[1]) and train[2] == 1.0
    assert evaluation is None
    assert epoch_means([]) == ([], None)


def test_epoch_means_rejects_zero_based_epochs() -> None:
    with pytest.raises(ValueError, match="1-based"):
        epoch_means([LossSnapshot(step=1, epoch=0, loss=1.0)])


def test_objective_values() -> None:
    plateau = find_plateau(OVERFIT_TRAIN, OVERFIT_EVAL)

    assert objective_value("plateau_loss", OVERFIT_TRAIN, OVERFIT_EVAL, plateau) == plateau.loss
    assert objective_value("final_loss", OVERFIT_TRAIN, OVERFIT_EVAL, plateau) == 1.05
    assert objective_value("final_loss", [1.0, 0.5, math.nan], None, plateau) == 0.5
    assert objective_value("eval_loss", OVERFIT_TRAIN, OVERFIT_EVAL, plateau) == 0.72
    with pytest.raises(ValueError, match="add a validation split"):
        objective_value("eval_loss", OVERFIT_TRAIN, None, plateau)
    with pytest.raises(ValueError, match="unknown objective 'best'"):
        objective_value("best", OVERFIT_TRAIN, None, plateau)


loss_values = st.one_of(
    st.floats(min_value=0.0, max_value=1e4, allow_nan=False),
    st.sampled_from([math.nan, math.inf]),
)


@settings(max_examples=300, deadline=None)
@given(
    curve=st.lists(loss_values, min_size=1, max_size=30).filter(
        lambda c: any(math.isfinite(v) for v in c)
    ),
    smoothing=st.floats(min_value=0.0, max_value=0.9),
    tolerance=st.floats(min_value=0.001, max_value=0.5),
)
def test_pick_is_in_range_and_within_tolerance_of_the_minimum(curve, smoothing, tolerance) -> None:
    result = find_plateau(curve, smoothing=smoothing, tolerance=tolerance)

    assert 1 <= result.epoch <= len(curve)
    assert math.isfinite(curve[result.epoch - 1])
    finite = [v for v in result.smoothed if math.isfinite(v)]
    best, spread = min(finite), max(finite) - min(finite)
    allowed = tolerance * (abs(best) if result.flat else spread)
    assert result.loss - best <= allowed + 1e-9 * max(1.0, abs(best))
