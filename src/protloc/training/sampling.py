"""Which training images an epoch draws: each once (uniform), or rare-class images more often (`--sampler rare`).

A compartment in 1% of the images gets a few dozen gradient steps per epoch with a positive in the batch; drawing
each image with a weight that grows with the rarity of its rarest label gives rare classes more positives per
epoch, at the price of seeing common-only images less often (the epoch keeps its length). The weight is
(most frequent class count / rarest label's count) ** power: power 0.5 halves the imbalance on a log scale rather
than removing it, since repeating a handful of rare images many times over mostly teaches the model those images.
"""
from __future__ import annotations

import numpy as np


DEFAULT_POWER = 0.5


def rare_class_weights(targets, power: float = DEFAULT_POWER) -> np.ndarray:
    """One drawing weight per image (mean 1): (largest class count / count of the image's rarest label) ** power;
    an image without labels weighs as one of the most frequent class."""
    labels = np.asarray(targets, dtype=np.float64) > 0.5
    counts = labels.sum(axis=0)
    present = counts > 0
    rarity = np.ones(labels.shape[1])
    rarity[present] = (counts[present].max() / counts[present]) ** power
    weights = np.where(labels, rarity[None, :], 1.0).max(axis=1) if labels.shape[1] else np.ones(len(labels))
    return weights / weights.mean()
