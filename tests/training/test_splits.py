"""Every split is sorted, disjoint, covers all rows and repeats for a seed; stratified beats random on rare classes."""
from __future__ import annotations

import numpy as np
import pytest

from protloc.errors import ProtlocError
from protloc.training.splits import (
    kfold_splits,
    make_split,
    split_by_mask,
    split_random,
    split_stratified,
)


def skewed_targets(n=400, seed=0):
    """Frequencies from common (50%) to rare (2%), like HPA's compartments."""
    rng = np.random.default_rng(seed)
    frequencies = np.array([0.5, 0.3, 0.15, 0.08, 0.04, 0.02])
    return (rng.random((n, frequencies.size)) < frequencies).astype(np.float32)


def assert_valid_split(train, val, n):
    for part in (train, val):
        assert part.dtype.kind == "i"
        assert np.all(np.diff(part) > 0), "sorted and without repeats"
        assert part.size > 0
    assert np.intersect1d(train, val).size == 0
    assert np.array_equal(np.union1d(train, val), np.arange(n))


@pytest.mark.parametrize("method", ["mask", "random", "stratified"])
def test_make_split_is_valid_and_repeatable(method):
    targets = skewed_targets(n=120)
    train, val = make_split(method, targets, 0.25, seed=3)
    assert_valid_split(train, val, 120)
    again = make_split(method, targets, 0.25, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    other = make_split(method, targets, 0.25, seed=4)
    assert not np.array_equal(val, other[1])


def test_mask_reproduces_the_seed_notebook_draw():
    train, val = split_by_mask(1000, 0.1, seed=7)
    expected_val = np.flatnonzero(np.random.default_rng(7).random(1000) < 0.1)
    assert np.array_equal(val, expected_val)
    assert 0.07 < val.size / 1000 < 0.13


@pytest.mark.parametrize("fraction", [0.01, 0.99])
def test_mask_never_leaves_a_side_empty(fraction):
    for seed in range(20):
        assert_valid_split(*split_by_mask(3, fraction, seed), 3)


def test_random_has_exact_size():
    train, val = split_random(101, 0.2, seed=0)
    assert_valid_split(train, val, 101)
    assert val.size == 21  # ceil(101 * 0.2)
    assert_valid_split(*split_random(2, 0.9, seed=0), 2)


def rare_class_share_error(targets, val, fraction):
    """Mean distance of the three rarest classes' validation share from the asked fraction."""
    share = targets[val].sum(0) / targets.sum(0)
    return np.abs(share - fraction)[-3:].mean()


def test_stratified_keeps_rare_classes_closer_to_the_fraction_than_random():
    fraction, stratified, shuffled = 0.2, [], []
    for seed in range(5):
        targets = skewed_targets(seed=seed)
        stratified.append(rare_class_share_error(targets, split_stratified(targets, fraction, seed)[1], fraction))
        shuffled.append(rare_class_share_error(targets, split_random(len(targets), fraction, seed)[1], fraction))
    assert np.mean(stratified) < np.mean(shuffled) / 2


def test_stratified_handles_rows_without_labels():
    targets = skewed_targets(n=60)
    targets[:10] = 0
    assert_valid_split(*split_stratified(targets, 0.3, seed=0), 60)


@pytest.mark.parametrize("method", ["stratified", "random"])
def test_kfold_validation_folds_partition_the_rows(method):
    targets = skewed_targets(n=90)
    folds = kfold_splits(targets, k=3, seed=1, method=method)
    assert len(folds) == 3
    for train, val in folds:
        assert_valid_split(train, val, 90)
    assert np.array_equal(np.sort(np.concatenate([val for _, val in folds])), np.arange(90))
    again = kfold_splits(targets, k=3, seed=1, method=method)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))


def test_bad_options_raise_protloc_error():
    targets = skewed_targets(n=20)
    with pytest.raises(ProtlocError, match="unknown split method"):
        make_split("alphabetical", targets, 0.2, seed=0)
    for fraction in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ProtlocError, match="fraction"):
            make_split("random", targets, fraction, seed=0)
    with pytest.raises(ProtlocError, match="at least 2"):
        make_split("mask", targets[:1], 0.2, seed=0)
    with pytest.raises(ProtlocError, match="folds"):
        kfold_splits(targets, k=1, seed=0)
    for method in ("bogus", "mask"):
        with pytest.raises(ProtlocError, match="unknown fold split method"):
            kfold_splits(targets, k=2, seed=0, method=method)


def fold_positives(targets, folds):
    """(folds, classes): how many of each class's positives each validation fold holds."""
    return np.array([targets[val].sum(axis=0) for _train, val in folds])


def test_kfold_is_stratified_by_default_each_fold_holds_its_share_of_every_class():
    targets = skewed_targets(n=400)
    expected = targets.sum(axis=0) / 5  # a fifth of each class's positives, 41 down to 1.6
    stratified = fold_positives(targets, kfold_splits(targets, k=5, seed=0))
    assert (np.abs(stratified - expected) < 1).all(), stratified
    # A shuffled K-fold misses by several images on the same data: the check above can fail.
    shuffled = fold_positives(targets, kfold_splits(targets, k=5, seed=0, method="random"))
    assert (np.abs(shuffled - expected) >= 1).any()


def test_kfold_runs_use_the_fold_split_whatever_the_validation_split():
    from protloc.training.config import TrainConfig, config_from_recipe

    config = TrainConfig(data="d", out="o", folds=5, validation_split="mask")
    assert config.fold_split == "stratified"
    # A K-fold run recorded before fold_split existed resumes on the folds it began with.
    assert config_from_recipe({"data": "d", "out": "o", "folds": 5, "validation_split": "mask"}).fold_split == "random"
    assert config_from_recipe({"data": "d", "out": "o", "folds": 5, "validation_split": "stratified"}).fold_split == "stratified"


def test_crops_keep_80_percent_of_the_area_by_default_and_earlier_runs_resume_with_half():
    from protloc.errors import ProtlocError
    from protloc.training.config import TrainConfig, check_config, config_from_recipe

    assert TrainConfig(data="d", out="o").crop_scale == 0.8
    assert config_from_recipe({"data": "d", "out": "o"}).crop_scale == 0.5  # recorded before the option existed
    assert config_from_recipe({"data": "d", "out": "o", "crop_scale": 0.3}).crop_scale == 0.3
    for wrong in (0.0, 1.5):
        with pytest.raises(ProtlocError, match=f"--crop-scale {wrong}: expected a share"):
            check_config(TrainConfig(data="d", out="o", crop_scale=wrong))
