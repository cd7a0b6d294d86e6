"""Per-cell truth: which of its image's labels each cell shows, and the instance mask of the cells in view.

Real fields are mixed: in HPA's single-cell annotations a protein often shows its pattern in some cells of an
image and not in others. Here each cell in view shows each of its image's labels with probability
SHOW_PROBABILITY, independently; a label that no cell in view drew is given to the largest cell in view, so the
image's labels are exactly the union of its cells'. A cell that draws none of them is negative (for an image of
one label, 45% of the cells). The draws come from a generator of their own, so an image's other draws are the
same with or without per-cell truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from protloc.data.synthetic.field import Field

SHOW_PROBABILITY = 0.55
# A cell with fewer pixels in view than this share of its whole area is left out of the mask (its pixels are
# background there): a sliver at the border that neither a person nor a segmenter would call a cell.
MIN_SHARE_IN_VIEW = 0.1


@dataclass
class CellTruth:
    """The instance mask (uint16: 0 background, cell k = k) and the labels each cell k shows (cell_labels[k - 1])."""

    mask: np.ndarray
    cell_labels: list[tuple[int, ...]]
    shown: dict[int, np.ndarray]  # per image label: a boolean per cell of the field (in view or not)


def choose_cell_labels(labels: tuple[int, ...], field: Field, rng: np.random.Generator) -> CellTruth:
    """Which cells of `field` are in the mask and which of the image's `labels` each one shows."""
    n = len(field.cells)
    inside = field.label >= 0
    area = np.bincount(field.label[inside], minlength=n)
    whole = np.array([math.pi * cell.radius**2 for cell in field.cells])
    in_view = np.flatnonzero(area >= MIN_SHARE_IN_VIEW * whole)
    if in_view.size == 0:  # the first cell is always near the middle; kept whatever its size, so no mask is empty
        in_view = np.array([int(np.argmax(area))])
    draws = rng.uniform(0.0, 1.0, (len(labels), n)) < SHOW_PROBABILITY
    largest = in_view[np.argmax(area[in_view])]
    shown: dict[int, np.ndarray] = {}
    for row, c in enumerate(labels):
        show = np.zeros(n, dtype=bool)
        show[in_view] = draws[row, in_view]
        if not show.any():
            show[largest] = True
        shown[c] = show
    number = np.zeros(n + 1, dtype=np.uint16)  # field cell index + 1 -> mask number; 0 stays background
    number[in_view + 1] = np.arange(1, in_view.size + 1, dtype=np.uint16)
    mask = number[field.label + 1]
    cell_labels = [tuple(c for c in labels if shown[c][i]) for i in in_view]
    return CellTruth(mask, cell_labels, shown)
