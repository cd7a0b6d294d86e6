"""Validation scores label images as `predict` does, so the epoch kept is the one that labels best when deployed."""
from __future__ import annotations

import numpy as np
import pytest

from protloc.inference.thresholds import apply_thresholds
from protloc.metrics import multilabel_scores, scores_at_threshold
from protloc.training.module import validation_scores


def one_label_per_image(n: int, classes: int) -> np.ndarray:
    targets = np.zeros((n, classes), dtype=np.float32)
    targets[np.arange(n), np.arange(n) % classes] = 1
    return targets


def epoch_shy_but_right(targets: np.ndarray) -> np.ndarray:
    """Every image's own class highest, but under 0.5: plain thresholding labels nothing."""
    return np.where(targets > 0, 0.45, 0.1)


def epoch_sure_of_half(targets: np.ndarray) -> np.ndarray:
    """Half the images sure and right; the other half unsure, with a wrong class highest."""
    probabilities = np.where(targets > 0, 0.9, 0.05)
    unsure = np.arange(len(targets)) % 2 == 1
    probabilities[unsure] = np.where(targets[unsure] > 0, 0.2, 0.05)
    probabilities[unsure, (np.argmax(targets[unsure], axis=1) + 1) % targets.shape[1]] = 0.3
    return probabilities


def test_the_epoch_kept_is_the_one_that_labels_best_as_deployed_where_the_old_rule_kept_another():
    targets = one_label_per_image(40, 4)
    epochs = [epoch_sure_of_half(targets), epoch_shy_but_right(targets)]
    deployed = [validation_scores(targets, p)["val_f1_macro"] for p in epochs]
    old_rule = [scores_at_threshold(targets, p, 0.5)["f1_macro"] for p in epochs]
    assert int(np.argmax(old_rule)) == 0  # plain p >= 0.5 preferred the epoch that labels worse when deployed
    assert int(np.argmax(deployed)) == 1
    # What the kept epoch scores is what predict's labels score.
    for probabilities, score in zip(epochs, deployed):
        assert score == multilabel_scores(targets, apply_thresholds(probabilities, 0.5))["f1_macro"]
    assert deployed[1] == pytest.approx(1.0)


def test_the_course_f_score_of_the_notebooks_stays_under_its_own_name():
    targets = one_label_per_image(40, 4)
    scores = validation_scores(targets, epoch_shy_but_right(targets))
    # The notebooks label p >= 0.5 and allow empty images: here nothing, so their score is 0.
    assert scores["val_fscore_course_notebook"] == pytest.approx(0.0)
    assert scores["val_fscore_course"] == pytest.approx(1.0)
