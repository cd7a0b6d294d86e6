"""Multi-label scores for validation and `evaluate`: scikit-learn F1s plus the course's F-score.

One labelling rule from training to deployment: `scores_as_deployed` labels probabilities exactly as `predict`,
`evaluate` and the service do (`apply_thresholds`: p >= threshold, and every image at least one label), and
that is what validation scores, best-epoch selection and threshold tuning see. Scoring validation under another
rule picks epochs by a number no deployed model produces: plain p >= 0.5 leaves images with no label, so an
epoch whose rare classes sit just under 0.5 looks worse than it labels.

`fscore_course` is the Zero-to-GANs course's F-score, kept because published notebooks on this data
report it: it averages precision and recall over images *before* combining them, so it is neither
sklearn's "samples" F1 (which averages per-image F1s) nor its micro F1. It is a transcription, in
torch float32, so numbers line up with those notebooks to the last digit. `fscore_course_notebook_rule`
labels as those notebooks did (plain p >= 0.5, images may get no label), for metrics.csv's column of that name.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import f1_score

from protloc.errors import ProtlocError
from protloc.inference.thresholds import apply_thresholds
from protloc.runs import DEFAULT_THRESHOLD

_COURSE_EPSILON = 1e-12


# What each score means, in the words every report prints beside it (F1 = 2 x precision x recall / (precision
# + recall), 0 to 1).
SCORE_MEANINGS = {
    "f1_macro": "macro F1: each class's F1, averaged over the classes; a rare class counts as much as a common one",
    "f1_micro": "micro F1: one F1 over every (image, class) decision pooled; common classes weigh most",
    "f1_samples": "samples F1: each image's F1 over its classes, averaged over the images",
    "fscore_course": "course F-score: precision and recall each averaged over the images, then combined; the "
                     "Zero-to-GANs course's score, which published notebooks on this data report",
}

def as_class_matrix(values, name: str) -> np.ndarray:
    """An (images, classes) numpy array from an array-like or tensor; a ProtlocError naming `name` otherwise."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 2:
        raise ProtlocError(f"{name}: expected a 2-D (images, classes) array, got shape {array.shape}")
    return array


def _to_binary(values, name: str) -> np.ndarray:
    array = as_class_matrix(values, name)
    if not np.isin(array, (0, 1)).all():
        raise ProtlocError(f"{name}: expected only 0/1 values")
    return array.astype(bool)


def _check_same_shape(targets: np.ndarray, other: np.ndarray, other_name: str) -> None:
    if targets.shape != other.shape:
        raise ProtlocError(f"targets have shape {targets.shape} but {other_name} have shape {other.shape}")


def fscore_course(targets: np.ndarray, predictions: np.ndarray) -> float:
    """The course's F_score (beta=1) on 0/1 arrays: mean per-image precision and recall, then 2PR/(P+R)."""
    predicted = torch.from_numpy(np.asarray(predictions, dtype=bool))
    actual = torch.from_numpy(np.asarray(targets, dtype=bool))
    true_pos = (predicted & actual).sum(1).float()
    false_pos = (predicted & ~actual).sum(1).float()
    false_neg = (~predicted & actual).sum(1).float()
    precision = torch.mean(true_pos / (true_pos + false_pos + _COURSE_EPSILON))
    recall = torch.mean(true_pos / (true_pos + false_neg + _COURSE_EPSILON))
    return float(2 * precision * recall / (precision + recall + _COURSE_EPSILON))


def multilabel_scores(targets, predictions) -> dict:
    """F1 scores of 0/1 `predictions` against 0/1 `targets`, both (images, classes).

    Returns f1_macro, f1_micro, f1_samples, fscore_course and f1_per_class (a list, one float per class).
    A class (or image) with nothing true and nothing predicted scores 0, never a warning (zero_division=0).
    """
    actual = _to_binary(targets, "targets")
    predicted = _to_binary(predictions, "predictions")
    _check_same_shape(actual, predicted, "predictions")
    if actual.shape[0] == 0:
        raise ProtlocError("targets: expected at least one image to score")

    def f1(average):
        return f1_score(actual, predicted, average=average, zero_division=0)

    return {
        "f1_macro": float(f1("macro")),
        "f1_micro": float(f1("micro")),
        "f1_samples": float(f1("samples")),
        "fscore_course": fscore_course(actual, predicted),
        "f1_per_class": [float(score) for score in f1(None)],
    }


def scores_as_deployed(targets, probabilities, thresholds=DEFAULT_THRESHOLD) -> dict:
    """`multilabel_scores` of the labels `predict` would give: `apply_thresholds` at `thresholds` (a scalar or
    one per class), every image at least one label."""
    actual = as_class_matrix(targets, "targets")
    probs = as_class_matrix(probabilities, "probabilities")
    _check_same_shape(actual, probs, "probabilities")
    return multilabel_scores(actual, apply_thresholds(probs, thresholds))


def fscore_course_notebook_rule(targets, probabilities) -> float:
    """The course F-score labelled as the published notebooks label: plain p >= 0.5, an image may get none."""
    return scores_at_threshold(targets, probabilities, DEFAULT_THRESHOLD)["fscore_course"]


def scores_at_threshold(targets, probabilities, thresholds=DEFAULT_THRESHOLD) -> dict:
    """`multilabel_scores` after labelling p >= threshold (a scalar or one threshold per class).

    Plain thresholding: an image may end up with no label here, unlike `apply_thresholds(allow_empty=False)`.
    No deployed model labels this way; it is here for the notebooks' course F-score (and their comparisons).
    """
    actual = as_class_matrix(targets, "targets")
    probs = as_class_matrix(probabilities, "probabilities").astype(np.float64)
    _check_same_shape(actual, probs, "probabilities")
    cutoffs = np.asarray(thresholds, dtype=np.float64)
    if cutoffs.ndim > 1 or (cutoffs.ndim == 1 and cutoffs.shape[0] != probs.shape[1]):
        raise ProtlocError(
            f"thresholds: expected a scalar or {probs.shape[1]} values (one per class), got shape {cutoffs.shape}"
        )
    return multilabel_scores(actual, probs >= cutoffs)
