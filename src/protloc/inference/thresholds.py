"""Per-class decision thresholds: tuned on validation data after training, applied at prediction time.

A rare compartment's probabilities rarely reach 0.5 even when the model ranks it well, so one global
0.5 cut under-predicts it; a threshold per class, chosen for F1, recovers those labels.
"""
from __future__ import annotations

import numpy as np
import torch

from protloc.errors import ProtlocError
from protloc.runs import DEFAULT_THRESHOLD


def _to_numpy(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ProtlocError(f"{name}: expected a 2-D (images, classes) array, got shape {array.shape}")
    return array


def _default_grid() -> np.ndarray:
    return np.linspace(0.05, 0.95, 91)


# How many positives a class needs before its tuned threshold moves halfway from 0.5 to its F1 optimum.
# Fitted to few positives, the optimum is mostly noise: on the demo data, unshrunk thresholds tuned on a
# 145-image validation split (2 positives for the rarest class) lost 0.03 macro F1 on held-out images
# against a plain 0.5, while shrunk ones gained.
DEFAULT_SHRINKAGE = 20.0


def _f1(predicted: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """F1 over the last axis but one: predicted (..., N) against actual (N,), 0 where nothing is true or predicted."""
    true_pos = (predicted & actual).sum(axis=-1)
    errors = (predicted != actual).sum(axis=-1)  # false positives + false negatives
    denominator = 2 * true_pos + errors
    return np.divide(2 * true_pos, denominator, out=np.zeros(denominator.shape), where=denominator > 0)


def _macro_f1(actual: np.ndarray, probs: np.ndarray, thresholds: np.ndarray, allow_empty: bool) -> float:
    return float(_f1(apply_thresholds(probs, thresholds, allow_empty).T, actual.T).mean())


def tune_thresholds(targets, probabilities, grid=None, shrinkage: float = DEFAULT_SHRINKAGE,
                    allow_empty: bool = False) -> np.ndarray:
    """One threshold per class for that class's F1 on (targets, probabilities), checked under the rule `predict`
    labels with (`apply_thresholds`: unless `allow_empty`, an image no class reaches gets its closest class).

    Each class's F1-optimal cut on the grid (default 0.05, 0.06, ..., 0.95, always with 0.5) is pulled
    towards 0.5 by n / (n + shrinkage) for a class with n positives, then kept only if it scores at least
    as well as 0.5 on this data. Among equally good cuts the one closest to 0.5 wins: a flat F1 plateau
    says nothing, and the middle of it moves least when the data changes.

    Those cuts are chosen class by class, where labels are p >= cut; the deployed rule also gives an image that
    no class reaches its closest class, which couples the classes (a lower cut leaves fewer images to fall back
    to another class). So the cuts are then checked under that rule: class by class, a cut goes back to 0.5
    where that raises the macro F1 of the labels `predict` would give, and if the cuts still score below 0.5
    everywhere, 0.5 everywhere it is. Tuned thresholds thus never score below 0.5 on this data, under the rule
    they are used with.
    """
    actual = _to_numpy(targets, "targets") > 0.5
    probs = _to_numpy(probabilities, "probabilities")
    if actual.shape != probs.shape:
        raise ProtlocError(f"targets have shape {actual.shape} but probabilities have shape {probs.shape}")
    if shrinkage < 0:
        raise ProtlocError(f"threshold shrinkage: expected 0 or more, got {shrinkage}")
    candidates = _default_grid() if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    if candidates.size == 0 or not ((candidates > 0) & (candidates < 1)).all():
        raise ProtlocError("threshold grid: expected one or more values strictly between 0 and 1")
    # Rounding keeps linspace's 0.49999999999999994 from standing in for 0.5.
    candidates = np.unique(np.append(np.round(candidates, 6), DEFAULT_THRESHOLD))

    f1 = np.stack([_f1((probs >= cut).T, actual.T) for cut in candidates])  # (cuts, classes)
    is_best = f1 >= f1.max(axis=0) - 1e-12
    distance = np.where(is_best, np.abs(candidates - DEFAULT_THRESHOLD)[:, None], np.inf)
    optimum = candidates[np.argmin(distance, axis=0)]
    positives = actual.sum(axis=0)
    # With no positives the weight is 0: F1 is 0 at every cut and the data says nothing, so 0.5 stays.
    pulled = DEFAULT_THRESHOLD + (optimum - DEFAULT_THRESHOLD) * positives / (positives + shrinkage + 1e-12)
    rows = np.abs(candidates[:, None] - pulled[None, :]).argmin(axis=0)
    classes = np.arange(actual.shape[1])
    at_default = f1[np.flatnonzero(candidates == DEFAULT_THRESHOLD)[0]]
    thresholds = np.where(f1[rows, classes] >= at_default, candidates[rows], DEFAULT_THRESHOLD)
    if allow_empty:
        return thresholds  # the rule is plain p >= cut: the classes do not interact
    best = _macro_f1(actual, probs, thresholds, allow_empty)
    for c in np.flatnonzero(thresholds != DEFAULT_THRESHOLD):
        trial = thresholds.copy()
        trial[c] = DEFAULT_THRESHOLD
        score = _macro_f1(actual, probs, trial, allow_empty)
        if score > best:
            thresholds, best = trial, score
    if best < _macro_f1(actual, probs, np.full_like(thresholds, DEFAULT_THRESHOLD), allow_empty):
        return np.full_like(thresholds, DEFAULT_THRESHOLD)
    return thresholds


def class_ratio_thresholds(probabilities, prevalence, grid=None) -> np.ndarray:
    """One threshold per class that labels class i on a share `prevalence[i]` of these images (the class's share
    of the training images): the cut follows the class ratio, not the F1 of a few validation positives (the
    choice of the HPA 2018 winning solution). The cut is the grid value (default 0.05 ... 0.95) whose share of
    images at or above it comes closest; a class never seen in training keeps 0.5."""
    probs = _to_numpy(probabilities, "probabilities")
    share = np.asarray(prevalence, dtype=np.float64).ravel()
    if share.shape != (probs.shape[1],) or not ((share >= 0) & (share <= 1)).all():
        raise ProtlocError(f"prevalence: expected {probs.shape[1]} shares between 0 and 1, got {share}")
    candidates = _default_grid() if grid is None else np.asarray(grid, dtype=np.float64).ravel()
    candidates = np.unique(np.append(np.round(candidates, 6), DEFAULT_THRESHOLD))
    labelled = (probs[None, :, :] >= candidates[:, None, None]).mean(axis=1)  # (cuts, classes)
    # Among equally close cuts, the one nearest 0.5.
    distance = np.abs(labelled - share[None, :]) + 1e-9 * np.abs(candidates - DEFAULT_THRESHOLD)[:, None]
    return np.where(share > 0, candidates[np.argmin(distance, axis=0)], DEFAULT_THRESHOLD)


def apply_thresholds(probabilities, thresholds, allow_empty: bool = False) -> np.ndarray:
    """Boolean labels (images, classes): class i where p_i >= t_i.

    Every protein sits somewhere, so unless `allow_empty`, an image with no label gets the one class
    that comes closest to its threshold in relative terms, argmax of p_i / t_i (a class at 0.2 against a
    0.25 cut beats one at 0.4 against 0.8).
    """
    probs = _to_numpy(probabilities, "probabilities")
    cutoffs = np.asarray(thresholds, dtype=np.float64)
    if cutoffs.ndim == 0:
        cutoffs = np.full(probs.shape[1], float(cutoffs))
    if cutoffs.shape != (probs.shape[1],):
        raise ProtlocError(
            f"thresholds: expected {probs.shape[1]} values (one per class), got shape {cutoffs.shape}"
        )
    if not (cutoffs > 0).all():
        raise ProtlocError("thresholds: expected every threshold to be above 0")
    labels = probs >= cutoffs
    if not allow_empty:
        empty = ~labels.any(axis=1)
        best = np.argmax(probs[empty] / cutoffs, axis=1)
        labels[np.flatnonzero(empty), best] = True
    return labels


def cross_fitted_labels(targets, probabilities, groups, shrinkage: float = DEFAULT_SHRINKAGE) -> np.ndarray:
    """Labels of every image at thresholds tuned without it: each group's images (a K-fold's validation folds)
    at `tune_thresholds` of all the other groups' images, then `apply_thresholds`.

    Thresholds tuned on the images they are scored on flatter the score (in-sample); these labels give the
    honest score of tuning, at the price of tuning each time on (K-1)/K of the images.
    """
    actual = _to_numpy(targets, "targets")
    probs = _to_numpy(probabilities, "probabilities")
    groups = np.asarray(groups)
    if groups.shape != (probs.shape[0],):
        raise ProtlocError(f"groups: expected one per image ({probs.shape[0]}), got shape {groups.shape}")
    if np.unique(groups).size < 2:
        raise ProtlocError("groups: expected at least two groups to tune on one and score another")
    labels = np.zeros(probs.shape, dtype=bool)
    for group in np.unique(groups):
        held_out = groups == group
        cutoffs = tune_thresholds(actual[~held_out], probs[~held_out], shrinkage=shrinkage)
        labels[held_out] = apply_thresholds(probs[held_out], cutoffs)
    return labels
