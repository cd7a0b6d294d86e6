"""Which labels each synthetic image gets: draws that follow the real 10-label dataset's statistics.

The numbers come from shared/data/README.md (the 27,479 images of the real 10-label dataset).
"""
from __future__ import annotations

from functools import lru_cache
from itertools import combinations

import numpy as np

from protloc.errors import ProtlocError
from protloc.labels import HPA10_NAMES

N_CLASSES = len(HPA10_NAMES)

# The ten most common label sets and their share of images.
_COMMON_SETS: dict[tuple[int, ...], float] = {
    (4,): 0.143,
    (4, 6): 0.090,
    (6,): 0.083,
    (0,): 0.063,
    (7,): 0.051,
    (3,): 0.046,
    (9,): 0.044,
    (2, 4): 0.042,
    (1,): 0.041,
    (2,): 0.038,
}
# Share of images by number of labels.
_SIZE_SHARES = {1: 0.553, 2: 0.379, 3: 0.065, 4: 0.003}
# Class weights for the remaining mass: a set of size k that is not a common set is drawn with
# probability proportional to the product of its class weights. Fitted once (iterative
# proportional fitting over the 385 possible sets) so that the class shares come out as
# 0: 10.8%, 1: 9.1%, 2: 13.2%, 3: 10.3%, 4: 46.9%, 5: 5.7%, 6: 29.9%, 7: 13.7%, 8: 5.4%, 9: 6.8%
# (exact to 1e-4).
_REST_CLASS_WEIGHTS = (0.0484, 0.0540, 0.1021, 0.0620, 1.0, 0.0366, 0.4437, 0.0963, 0.0347, 0.0253)


@lru_cache(maxsize=1)
def _label_set_table() -> tuple[tuple[tuple[int, ...], ...], np.ndarray]:
    """Every label set that can be drawn, with its probability."""
    sets: list[tuple[int, ...]] = list(_COMMON_SETS)
    probs: list[float] = list(_COMMON_SETS.values())
    weights = np.asarray(_REST_CLASS_WEIGHTS, dtype=np.float64)
    for k, share in _SIZE_SHARES.items():
        rest = share - sum(p for s, p in _COMMON_SETS.items() if len(s) == k)
        candidates = [s for s in combinations(range(N_CLASSES), k) if s not in _COMMON_SETS]
        w = np.array([np.prod(weights[list(s)]) for s in candidates])
        sets.extend(candidates)
        probs.extend((w / w.sum() * rest).tolist())
    p = np.asarray(probs, dtype=np.float64)
    return tuple(sets), p / p.sum()


def sample_label_sets(n: int, rng: np.random.Generator) -> list[tuple[int, ...]]:
    """Draw ``n`` label sets (sorted tuples of hpa10 class numbers, never empty).

    They follow the real dataset's statistics: the shares of the ten most common sets, the
    distribution of labels per image (mean 1.52) and the share of images carrying each class.
    """
    if n < 0:
        raise ProtlocError(f"cannot draw {n} label sets")
    sets, p = _label_set_table()
    picks = rng.choice(len(sets), size=int(n), p=p)
    return [sets[i] for i in picks]
