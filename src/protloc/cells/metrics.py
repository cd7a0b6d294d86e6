"""How well cells match and how well they are labelled: instance matching at an IoU, per-cell F1 and the HPA
single-cell competition's metric.

The competition (Kaggle 2021, "Human Protein Atlas - Single Cell Classification") scored the mean over classes of
the average precision over cells, where a predicted cell counts for a true cell when their masks overlap at
IoU >= 0.6; a true cell no predicted cell matches is a positive never found.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, f1_score

COMPETITION_IOU = 0.6


def overlap_iou(true_mask: np.ndarray, predicted_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(iou, true cells, predicted cells): the IoU of every pair of cells, rows in the order of the true cell
    numbers, columns in that of the predicted ones (background left out). Counted on the cells present, so masks
    with large cell numbers cost no more than others."""
    true_numbers, t = np.unique(true_mask, return_inverse=True)
    predicted_numbers, p = np.unique(predicted_mask, return_inverse=True)
    rows, cols = len(true_numbers), len(predicted_numbers)
    intersection = np.bincount(t.ravel() * cols + p.ravel(), minlength=rows * cols).reshape(rows, cols)
    intersection = intersection.astype(np.float64)
    union = intersection.sum(axis=1, keepdims=True) + intersection.sum(axis=0, keepdims=True) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / union, 0.0)
    keep_rows, keep_cols = true_numbers != 0, predicted_numbers != 0
    return iou[np.ix_(keep_rows, keep_cols)], true_numbers[keep_rows], predicted_numbers[keep_cols]


def match_cells(true_mask: np.ndarray, predicted_mask: np.ndarray, iou: float = 0.5) -> dict[int, int]:
    """{true cell: predicted cell} for the pairs that overlap at IoU >= `iou`. From 0.5 up, a cell can overlap
    another that much only once, so the pairs are one to one without a search."""
    if iou < 0.5:
        raise ValueError(f"IoU {iou}: matching is one to one only from 0.5 up")
    table, true_numbers, predicted_numbers = overlap_iou(true_mask, predicted_mask)
    rows, cols = np.nonzero(table >= iou)
    return {int(true_numbers[r]): int(predicted_numbers[c]) for r, c in zip(rows, cols)}


def segmentation_f1(true_mask: np.ndarray, predicted_mask: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """(matched, true cells, predicted cells) at IoU >= `iou`; F1 = 2 matched / (true + predicted)."""
    matched = len(match_cells(true_mask, predicted_mask, iou))
    return matched, len(_numbers(true_mask)), len(_numbers(predicted_mask))


def _numbers(mask: np.ndarray) -> np.ndarray:
    values = np.unique(mask)
    return values[values > 0]


def f1_from_counts(matched: int, true_cells: int, predicted_cells: int) -> float:
    total = true_cells + predicted_cells
    return 2.0 * matched / total if total else 1.0


def cell_macro_f1(targets: np.ndarray, predicted: np.ndarray) -> float:
    """Macro F1 over the classes that have a positive cell or a predicted one, cells as samples."""
    present = (targets.sum(axis=0) + predicted.sum(axis=0)) > 0
    if not present.any():
        return 1.0
    return float(f1_score(targets[:, present], predicted[:, present], average="macro", zero_division=0))


def competition_map(targets: np.ndarray, scores: np.ndarray, missed: np.ndarray | None = None) -> float:
    """Mean over classes (with a positive cell) of the average precision over cells.

    `targets` and `scores` (cells, classes) hold the true cells that a predicted cell matched, with that cell's
    scores, and the predicted cells that matched none (targets all zero). `missed` (true cells, classes) holds the
    true cells no predicted cell matched: their positives count against recall, as never found."""
    missed_positives = np.zeros(targets.shape[1]) if missed is None else missed.sum(axis=0)
    values = []
    for c in range(targets.shape[1]):
        positives = targets[:, c].sum() + missed_positives[c]
        if positives == 0:
            continue
        if targets[:, c].sum() == 0:
            values.append(0.0)
            continue
        found = targets[:, c].sum() / positives
        values.append(float(average_precision_score(targets[:, c], scores[:, c])) * found)
    return float(np.mean(values)) if values else float("nan")
