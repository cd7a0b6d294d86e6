"""Train/validation splits of a dataset's rows: each returns sorted, disjoint row indices covering every row.

"mask" reproduces the seed notebook (each row independently to validation); "random" is an exact-size
shuffle; "stratified" keeps every class's validation share near the fraction, which matters for the
rare compartments a random split can leave out of validation entirely.
"""
from __future__ import annotations

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
from sklearn.model_selection import KFold, train_test_split

from protloc.errors import ProtlocError
from protloc.metrics import as_class_matrix
from protloc.training.config import FOLD_SPLITS, VALIDATION_SPLITS

Split = tuple[np.ndarray, np.ndarray]


def _check_rows(n: int) -> None:
    if n < 2:
        raise ProtlocError(f"cannot split {n} image(s) into training and validation: need at least 2")


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise ProtlocError(f"validation fraction must be between 0 and 1 (exclusive), got {val_fraction}")


def _sorted_pair(train, val) -> Split:
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def split_by_mask(n: int, val_fraction: float, seed: int) -> Split:
    """Send each row to validation independently with probability `val_fraction` (the seed notebook's mask)."""
    _check_rows(n)
    _check_fraction(val_fraction)
    draws = np.random.default_rng(seed).random(n)
    is_val = draws < val_fraction
    # A tiny dataset can draw an empty side; move the row closest to the cut rather than fail.
    if not is_val.any():
        is_val[np.argmin(draws)] = True
    elif is_val.all():
        is_val[np.argmax(draws)] = False
    return _sorted_pair(np.flatnonzero(~is_val), np.flatnonzero(is_val))


def _val_count(n: int, val_fraction: float) -> int:
    # sklearn rounds the test side up; clip so neither side is ever empty.
    return int(min(max(np.ceil(n * val_fraction), 1), n - 1))


def split_random(n: int, val_fraction: float, seed: int) -> Split:
    """A shuffled split with exactly ceil(n * val_fraction) validation rows (at least 1 on each side)."""
    _check_rows(n)
    _check_fraction(val_fraction)
    train, val = train_test_split(np.arange(n), test_size=_val_count(n, val_fraction), random_state=seed)
    return _sorted_pair(train, val)


def split_stratified(targets, val_fraction: float, seed: int) -> Split:
    """Iterative multi-label stratification: each class's validation share stays close to `val_fraction`."""
    labels = as_class_matrix(targets, "targets")
    _check_rows(labels.shape[0])
    _check_fraction(val_fraction)
    splitter = MultilabelStratifiedShuffleSplit(
        n_splits=1, test_size=_val_count(labels.shape[0], val_fraction), random_state=seed
    )
    train, val = next(splitter.split(np.zeros(labels.shape[0]), labels))
    return _sorted_pair(train, val)


def kfold_splits(targets, k: int, seed: int, method: str = "stratified") -> list[Split]:
    """K (train, val) folds; every row is in exactly one validation fold.

    "stratified" (iterative multi-label stratification, the default) keeps each class's positives near a K-th
    per fold; "random" is a shuffled K-fold, which can leave a fold with none of a rare class. (An independent
    mask, a single run's "mask" split, cannot make K disjoint folds.)
    """
    labels = as_class_matrix(targets, "targets")
    n = labels.shape[0]
    if method not in FOLD_SPLITS:
        raise ProtlocError(f"unknown fold split method {method!r}: expected one of {', '.join(FOLD_SPLITS)}")
    if not 2 <= k <= n:
        raise ProtlocError(f"number of folds must be between 2 and the number of images ({n}), got {k}")
    if method == "stratified":
        folds = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n), labels)
    else:
        folds = KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n))
    return [_sorted_pair(train, val) for train, val in folds]


def make_split(method: str, targets, val_fraction: float, seed: int) -> Split:
    """Split the rows of `targets` (images, classes) by the named method: "mask", "random" or "stratified"."""
    labels = as_class_matrix(targets, "targets")
    if method == "mask":
        return split_by_mask(labels.shape[0], val_fraction, seed)
    if method == "random":
        return split_random(labels.shape[0], val_fraction, seed)
    if method == "stratified":
        return split_stratified(labels, val_fraction, seed)
    raise ProtlocError(f"unknown split method {method!r}: expected one of {', '.join(VALIDATION_SPLITS)}")
