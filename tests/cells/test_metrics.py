"""Matching cells at an IoU, per-cell F1 and the competition's mAP, on masks and scores worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest

from protloc.cells.metrics import (cell_macro_f1, competition_map, f1_from_counts, match_cells, overlap_iou,
                                   segmentation_f1)


def test_cells_match_one_to_one_at_the_iou():
    truth = np.zeros((4, 8), dtype=np.uint16)
    truth[:, :4], truth[:, 4:] = 1, 2
    predicted = np.zeros((4, 8), dtype=np.uint16)
    predicted[:, :3] = 5  # 12 of cell 1's 16 pixels: IoU 0.75
    predicted[:, 3:6] = 7  # 8 of cell 2's pixels, and 4 of cell 1's: IoU 8/20
    iou, true_numbers, predicted_numbers = overlap_iou(truth, predicted)
    assert true_numbers.tolist() == [1, 2] and predicted_numbers.tolist() == [5, 7]
    assert iou[0, 0] == pytest.approx(0.75) and iou[1, 1] == pytest.approx(8 / 20)
    assert match_cells(truth, predicted, 0.5) == {1: 5}
    assert segmentation_f1(truth, predicted, 0.5) == (1, 2, 2)
    assert f1_from_counts(1, 2, 2) == 0.5
    with pytest.raises(ValueError):
        match_cells(truth, predicted, 0.3)
    # Large cell numbers cost nothing more.
    assert match_cells(truth.astype(np.int64) * 1_000_000_000, predicted, 0.5) == {1_000_000_000: 5}


def test_cell_macro_f1_counts_only_classes_that_occur():
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    predicted = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0]])
    # class 0: tp 2, fp 1 -> 0.8; class 1: tp 1, fn 1 -> 2/3; class 2 never occurs
    assert cell_macro_f1(targets, predicted) == pytest.approx((0.8 + 2 / 3) / 2)


def test_competition_map_counts_missed_cells_against_recall():
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]])
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.3], [0.5, 0.7]])
    # class 0: ranked 0.9 (pos), 0.5 (neg), 0.4 (pos): AP = (1 + 2/3) / 2; class 1: 0.8 (pos) first: AP 1
    assert competition_map(targets, scores) == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    missed = np.array([[0, 1]])  # a class-1 cell no predicted cell found: half of class 1's positives found
    assert competition_map(targets, scores, missed) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
