"""--sampler rare: images of rare classes are drawn more often, the draw a function of (seed, epoch) alone."""
from __future__ import annotations

import numpy as np
import pytest

from protloc.training.datamodule import EpochSeededSampler
from protloc.training.sampling import rare_class_weights


def skewed_targets(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 4)) < np.array([0.5, 0.2, 0.05, 0.02])).astype(np.float32)


def test_an_image_weighs_by_its_rarest_label():
    targets = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
    weights = rare_class_weights(targets, power=1.0)
    assert weights.mean() == pytest.approx(1.0)
    # Class 0 has 5 images, class 1 has 2: an image with class 1 weighs 5/2 times one of class 0 alone.
    assert weights[4] == pytest.approx(2.5 * weights[0]) and weights[5] == pytest.approx(weights[4])
    assert weights[6] == pytest.approx(weights[0])  # no label: as the most frequent class
    assert rare_class_weights(targets, power=0.5)[4] == pytest.approx(np.sqrt(2.5) * rare_class_weights(targets, 0.5)[0])


def draws(weights, *, epoch=0, replicas=1, rank=0, seed=7):
    sampler = EpochSeededSampler(range(len(weights)), num_replicas=replicas, rank=rank, seed=seed, weights=weights)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_weighted_epochs_draw_rare_class_images_more_often_and_repeat_for_a_seed():
    targets = skewed_targets()
    weights = rare_class_weights(targets)
    first = draws(weights)
    assert len(first) == len(targets)
    rows = np.array([row for row, _seed in first])
    rarest = targets[:, 3] > 0
    share_drawn, share_present = rarest[rows].mean(), rarest.mean()
    assert share_drawn > 2 * share_present  # uniform draws would hold about share_present
    assert first == draws(weights) and first != draws(weights, epoch=1)
    # A row drawn twice gets two augmentations.
    seeds_by_row = {}
    for row, seed in first:
        seeds_by_row.setdefault(row, []).append(seed)
    repeated = [seeds for seeds in seeds_by_row.values() if len(seeds) > 1]
    assert repeated and all(len(set(seeds)) == len(seeds) for seeds in repeated)


def test_two_replicas_draw_equal_shares_of_one_weighted_draw():
    weights = rare_class_weights(skewed_targets(n=101))
    halves = [[row for row, _ in draws(weights, replicas=2, rank=rank)] for rank in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 51  # padded to equal length, as DistributedSampler does
    assert halves[0] != halves[1]
    assert halves == [[row for row, _ in draws(weights, replicas=2, rank=rank)] for rank in (0, 1)]


def test_uniform_epochs_are_unchanged_by_the_weighted_path():
    sampler = EpochSeededSampler(range(50), num_replicas=1, rank=0, seed=3)
    rows = [row for row, _ in sampler]
    assert sorted(rows) == list(range(50))
