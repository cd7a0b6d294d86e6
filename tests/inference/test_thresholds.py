"""Tuned thresholds never lose to 0.5 on the tuning data, and win clearly when probabilities run low."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from protloc.errors import ProtlocError
from protloc.inference.thresholds import (apply_thresholds, class_ratio_thresholds, cross_fitted_labels,
                                         tune_thresholds)


def noisy_predictions(seed=0, n=200, c=6):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < np.linspace(0.05, 0.5, c)).astype(np.float32)
    probabilities = np.clip(0.35 * targets + rng.normal(0.3, 0.2, (n, c)), 0.0, 1.0)
    return targets, probabilities


def per_class_f1(targets, labels):
    return f1_score(targets, labels, average=None, zero_division=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tuned_thresholds_never_lose_to_half_on_tuning_data(seed):
    targets, probabilities = noisy_predictions(seed)
    thresholds = tune_thresholds(targets, probabilities)
    assert thresholds.shape == (targets.shape[1],)
    assert ((thresholds >= 0.05) & (thresholds <= 0.95)).all()
    tuned = per_class_f1(targets, probabilities >= thresholds)
    default = per_class_f1(targets, probabilities >= 0.5)
    assert (tuned >= default - 1e-12).all()
    assert tuned.mean() > default.mean()


def test_tuned_thresholds_find_systematically_low_probabilities():
    rng = np.random.default_rng(3)
    targets = (rng.random((300, 4)) < 0.2).astype(int)
    probabilities = np.where(targets == 1, rng.normal(0.3, 0.03, targets.shape), rng.normal(0.1, 0.03, targets.shape))
    thresholds = tune_thresholds(torch.from_numpy(targets), torch.from_numpy(probabilities), shrinkage=0)
    assert ((thresholds > 0.12) & (thresholds < 0.28)).all()
    tuned = f1_score(targets, probabilities >= thresholds, average="macro", zero_division=0)
    default = f1_score(targets, probabilities >= 0.5, average="macro", zero_division=0)
    assert tuned > 0.95 and default == 0.0


def test_class_without_positives_keeps_half_and_ties_prefer_half():
    rng = np.random.default_rng(4)
    probabilities = rng.random((50, 2))
    targets = np.zeros((50, 2))
    targets[:, 1] = probabilities[:, 1] > 0.7  # perfectly separable anywhere in (max negative, min positive]
    thresholds = tune_thresholds(targets, probabilities, shrinkage=0)
    assert thresholds[0] == 0.5
    # Every cut in the gap gives F1 = 1; the one nearest 0.5 is the gap's lower end.
    gap_low = probabilities[targets[:, 1] == 0, 1].max()
    gap_high = probabilities[targets[:, 1] == 1, 1].min()
    assert gap_low < thresholds[1] <= gap_high
    assert thresholds[1] - gap_low <= 0.01 + 1e-9


def test_thresholds_fitted_to_few_positives_stay_near_half():
    rng = np.random.default_rng(5)
    n = 400
    targets = np.zeros((n, 2), dtype=int)
    targets[:4, 0] = 1  # 4 positives
    targets[:200, 1] = 1  # 200 positives
    probabilities = np.where(targets == 1, rng.uniform(0.15, 0.25, targets.shape), rng.uniform(0.0, 0.1, targets.shape))
    # Under plain p >= cut (allow_empty): the shrinkage alone, without the check under predict's fallback rule.
    optimum = tune_thresholds(targets, probabilities, shrinkage=0, allow_empty=True)
    shrunk = tune_thresholds(targets, probabilities, shrinkage=20, allow_empty=True)
    assert (optimum < 0.16).all()
    # Both classes have the same optimum; the class with 4 positives moves 4/24 of the way, the other 200/220.
    assert abs(shrunk[0] - (0.5 + (optimum[0] - 0.5) * 4 / 24)) <= 0.01 + 1e-9
    assert abs(shrunk[1] - (0.5 + (optimum[1] - 0.5) * 200 / 220)) <= 0.01 + 1e-9
    # A pulled cut that scores below 0.5 on the data falls back to 0.5. Optimum 0.2 (F1 8/9); pulled to
    # 0.5 - 0.3 * 4/24 = 0.45, where the negative at 0.47 gets in (F1 4/7) while 0.5 keeps it out (F1 4/6).
    column = np.array([[0.2], [0.2], [0.55], [0.55], [0.47]] + [[0.05]] * 20)
    truth = np.zeros_like(column)
    truth[:4] = 1
    assert tune_thresholds(truth, column, shrinkage=0)[0] == 0.2
    assert tune_thresholds(truth, column, shrinkage=20)[0] == 0.5
    with pytest.raises(ProtlocError, match="shrinkage"):
        tune_thresholds(targets, probabilities, shrinkage=-1)


def test_custom_grid_is_used_and_validated():
    targets, probabilities = noisy_predictions(5)
    thresholds = tune_thresholds(targets, probabilities, grid=[0.2, 0.4])
    assert set(thresholds) <= {0.2, 0.4, 0.5}
    for bad in ([0.0, 0.5], [1.0], []):
        with pytest.raises(ProtlocError, match="grid"):
            tune_thresholds(targets, probabilities, grid=bad)
    with pytest.raises(ProtlocError, match="shape"):
        tune_thresholds(targets[:, :2], probabilities)


def test_apply_thresholds_labels_by_class_and_fills_empty_rows():
    probabilities = np.array(
        [
            [0.9, 0.1, 0.1],  # labelled by its own thresholds
            [0.2, 0.4, 0.03],  # nothing passes: 0.2/0.25 = 0.8 beats 0.4/0.8 and 0.03/0.06 (both 0.5)
            [0.1, 0.1, 0.05],  # nothing passes: 0.05/0.06 = 0.83 is the closest call
        ]
    )
    thresholds = np.array([0.25, 0.8, 0.06])
    labels = apply_thresholds(probabilities, thresholds)
    assert labels.dtype == bool
    assert labels.tolist() == [[True, False, True], [True, False, False], [False, False, True]]
    empty_allowed = apply_thresholds(probabilities, thresholds, allow_empty=True)
    assert empty_allowed.tolist() == [[True, False, True], [False, False, False], [False, False, False]]


def test_apply_thresholds_gives_every_row_a_label_unless_allowed_empty():
    rng = np.random.default_rng(6)
    probabilities = torch.from_numpy(rng.random((100, 5)) * 0.6)
    labels = apply_thresholds(probabilities, 0.5)
    assert labels.any(axis=1).all()
    plain = probabilities.numpy() >= 0.5
    assert (labels | ~plain).all(), "thresholding never removes a label"
    assert (labels.sum(1)[~plain.any(1)] == 1).all(), "empty rows get exactly one"
    assert not apply_thresholds(probabilities, 0.5, allow_empty=True).any(axis=1).all()


def test_apply_thresholds_rejects_bad_thresholds():
    probabilities = np.full((2, 3), 0.5)
    with pytest.raises(ProtlocError, match="one per class"):
        apply_thresholds(probabilities, [0.5, 0.5])
    with pytest.raises(ProtlocError, match="above 0"):
        apply_thresholds(probabilities, [0.5, 0.0, 0.5])


def test_cross_fitted_labels_tune_each_group_on_the_others_and_score_below_in_sample():
    targets, probabilities = noisy_predictions(seed=3, n=300)
    groups = np.arange(300) % 3
    labels = cross_fitted_labels(targets, probabilities, groups)
    for group in range(3):
        others = groups != group
        expected = apply_thresholds(probabilities[~others], tune_thresholds(targets[others], probabilities[others]))
        assert np.array_equal(labels[~others], expected)
    in_sample = apply_thresholds(probabilities, tune_thresholds(targets, probabilities))
    # Tuning on the images scored flatters the score; tuning without them does not get that help.
    assert per_class_f1(targets, labels).mean() < per_class_f1(targets, in_sample).mean()
    with pytest.raises(ProtlocError, match="two groups"):
        cross_fitted_labels(targets, probabilities, np.zeros(300))


def test_class_ratio_thresholds_label_each_class_as_often_as_training_had_it():
    targets, probabilities = noisy_predictions(seed=4, n=400)
    prevalence = np.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.0])
    thresholds = class_ratio_thresholds(probabilities, prevalence)
    labelled = (probabilities >= thresholds).mean(axis=0)
    # Within a grid step of the asked share (the grid moves by 0.01; a step passes few images here).
    assert np.abs(labelled[:5] - prevalence[:5]).max() < 0.03
    assert thresholds[5] == 0.5  # a class never seen in training: nothing to follow
    assert thresholds[0] > thresholds[4]  # rarer classes get higher cuts on these equally spread scores
    with pytest.raises(ProtlocError, match="prevalence"):
        class_ratio_thresholds(probabilities, prevalence[:3])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_tuned_thresholds_never_lose_to_half_under_the_rule_predict_labels_with(seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((120, 5)) < np.array([0.5, 0.3, 0.15, 0.08, 0.04])).astype(np.float32)
    targets[targets.sum(axis=1) == 0, 0] = 1  # every protein sits somewhere
    probabilities = np.clip(0.3 * targets + rng.normal(0.25, 0.15, targets.shape), 0.0, 1.0)

    def deployed_macro_f1(thresholds):
        return f1_score(targets, apply_thresholds(probabilities, thresholds), average="macro", zero_division=0)

    assert deployed_macro_f1(tune_thresholds(targets, probabilities)) >= deployed_macro_f1(0.5) - 1e-12
