"""Scores checked against independent implementations: torchmetrics, numpy formulas and the course code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import MultilabelF1Score

from protloc.errors import ProtlocError
from protloc.metrics import fscore_course, multilabel_scores, scores_at_threshold


def course_f_score(output, label, threshold=0.5, beta=1):
    """The Zero-to-GANs course's F_score, copied verbatim."""
    prob = output > threshold
    label = label > threshold
    TP = (prob & label).sum(1).float()
    TN = ((~prob) & (~label)).sum(1).float()  # noqa: F841 (unused in the original too)
    FP = (prob & (~label)).sum(1).float()
    FN = ((~prob) & label).sum(1).float()
    precision = torch.mean(TP / (TP + FP + 1e-12))
    recall = torch.mean(TP / (TP + FN + 1e-12))
    F2 = (1 + beta**2) * precision * recall / (beta**2 * precision + recall + 1e-12)
    return F2.mean(0)


def f1_from_counts(true_pos, false_pos, false_neg):
    denominator = 2 * true_pos + false_pos + false_neg
    return np.divide(2.0 * true_pos, denominator, out=np.zeros(np.shape(true_pos)), where=denominator > 0)


def random_pair(seed, n=60, c=7):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.3).astype(np.float32)
    predictions = (rng.random((n, c)) < 0.35).astype(np.float32)
    return targets, predictions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_macro_micro_and_per_class_match_torchmetrics(seed):
    targets, predictions = random_pair(seed)
    scores = multilabel_scores(targets, predictions)
    c = targets.shape[1]
    t, p = torch.from_numpy(targets).int(), torch.from_numpy(predictions)
    for average, key in (("macro", "f1_macro"), ("micro", "f1_micro")):
        expected = MultilabelF1Score(num_labels=c, average=average, zero_division=0)(p, t)
        assert scores[key] == pytest.approx(float(expected), abs=1e-6)
    per_class = MultilabelF1Score(num_labels=c, average="none", zero_division=0)(p, t)
    assert scores["f1_per_class"] == pytest.approx(per_class.tolist(), abs=1e-6)


def test_samples_f1_is_the_mean_of_per_image_f1():
    targets, predictions = random_pair(3)
    actual, predicted = targets.astype(bool), predictions.astype(bool)
    per_image = f1_from_counts(
        (actual & predicted).sum(1), (~actual & predicted).sum(1), (actual & ~predicted).sum(1)
    )
    assert multilabel_scores(targets, predictions)["f1_samples"] == pytest.approx(per_image.mean())


def test_class_without_positives_scores_zero_and_counts_in_macro():
    targets, predictions = random_pair(4, c=4)
    targets[:, 2] = 0
    predictions[:, 2] = 0
    scores = multilabel_scores(targets, predictions)
    assert scores["f1_per_class"][2] == 0.0
    assert scores["f1_macro"] == pytest.approx(np.mean(scores["f1_per_class"]))
    assert scores["f1_macro"] < np.mean([s for i, s in enumerate(scores["f1_per_class"]) if i != 2])


def test_all_negative_predictions_score_zero_everywhere():
    targets, _ = random_pair(5)
    scores = multilabel_scores(targets, np.zeros_like(targets))
    assert scores["f1_macro"] == scores["f1_micro"] == scores["f1_samples"] == 0.0
    assert scores["fscore_course"] == pytest.approx(0.0, abs=1e-9)
    assert scores["f1_per_class"] == [0.0] * targets.shape[1]


def test_perfect_predictions_score_one():
    targets, _ = random_pair(6)
    targets[:, 0] = 1  # every image has a label, so per-image scores are defined
    scores = multilabel_scores(targets, targets.copy())
    assert scores["f1_macro"] == scores["f1_micro"] == scores["f1_samples"] == pytest.approx(1.0)
    assert scores["fscore_course"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fscore_course_matches_the_course_function(seed):
    generator = torch.Generator().manual_seed(seed)
    output = torch.rand(50, 10, generator=generator)
    label = (torch.rand(50, 10, generator=generator) < 0.25).float()
    expected = float(course_f_score(output, label))
    assert fscore_course(label.numpy(), (output > 0.5).numpy()) == pytest.approx(expected, rel=1e-6)
    via_scores = scores_at_threshold(label, output, 0.5)["fscore_course"]
    assert via_scores == pytest.approx(expected, rel=1e-6)


def test_fscore_course_differs_from_samples_f1():
    # It averages precision and recall before combining them, so it is its own number.
    targets, predictions = random_pair(7)
    scores = multilabel_scores(targets, predictions)
    assert abs(scores["fscore_course"] - scores["f1_samples"]) > 1e-3


def test_scores_at_threshold_accepts_per_class_thresholds():
    rng = np.random.default_rng(8)
    probabilities = rng.random((40, 3))
    targets = (rng.random((40, 3)) < 0.4).astype(int)
    thresholds = np.array([0.2, 0.5, 0.9])
    assert scores_at_threshold(targets, probabilities, thresholds) == multilabel_scores(
        targets, probabilities >= thresholds
    )
    assert scores_at_threshold(targets, probabilities, 0.2) != scores_at_threshold(targets, probabilities, 0.9)


def test_bad_inputs_raise_protloc_error():
    targets, predictions = random_pair(9)
    with pytest.raises(ProtlocError, match="shape"):
        multilabel_scores(targets, predictions[:, :3])
    with pytest.raises(ProtlocError, match="0/1"):
        multilabel_scores(targets, predictions * 0.7)
    with pytest.raises(ProtlocError, match="2-D"):
        multilabel_scores(targets[0], predictions[0])
    with pytest.raises(ProtlocError, match="one per class"):
        scores_at_threshold(targets, predictions, [0.5, 0.5])
