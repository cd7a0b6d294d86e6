"""Scores per cell on data with per-cell truth (`demo-data --cells`: DATA/cells.csv and DATA/cells/<Image>.png),
each beside the baseline "every cell gets its image's predicted labels":

- per-cell macro F1: cells as samples, labels from the run's thresholds;
- the competition's metric: mean over classes of the average precision over cells (the baseline's score of a
  cell is its image's probability), a predicted cell counting for a true cell at IoU >= 0.6.

With the true masks every cell matches itself. With masks of a segmenter, a true cell no predicted cell matches
is missed (its labels are false negatives, its positives never found) and a predicted cell that matches no true
cell is a cell without labels (its predicted labels are false positives).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from protloc.cells.masks import CELLS_CSV, find_mask, read_mask
from protloc.cells.metrics import COMPETITION_IOU, cell_macro_f1, competition_map, match_cells
from protloc.cells.predict import CellPrediction
from protloc.errors import DataError

TRUTH_MASKS_DIR = "cells"


def read_cell_truth(data_root: str | Path, num_classes: int) -> dict[str, dict[int, np.ndarray]]:
    """{image id: {cell number: multi-hot labels}} from DATA/cells.csv. Raises DataError naming the row."""
    path = Path(data_root) / CELLS_CSV
    if not path.is_file():
        raise DataError(f"{path}: not found; per-cell scores need per-cell truth (Image,Cell,Label rows and "
                        f"{Path(data_root) / TRUTH_MASKS_DIR}/<Image>.png masks; protloc demo-data --cells writes them)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns[:3]) != ["Image", "Cell", "Label"]:
        raise DataError(f"{path}: header {','.join(frame.columns)}; expected Image,Cell,Label")
    truth: dict[str, dict[int, np.ndarray]] = {}
    for line, (image, cell, label) in enumerate(frame[["Image", "Cell", "Label"]].itertuples(index=False), 2):
        row = np.zeros(num_classes, dtype=bool)
        try:
            number = int(cell)
            classes = [int(c) for c in label.split()]
        except ValueError:
            raise DataError(f"{path} line {line}: Cell {cell!r}, Label {label!r}; expected a cell number and "
                            "space-separated class numbers") from None
        if number < 1 or any(not 0 <= c < num_classes for c in classes):
            raise DataError(f"{path} line {line}: cell {number}, labels {label!r}; expected a cell number from 1 "
                            f"and classes 0..{num_classes - 1}")
        row[classes] = True
        truth.setdefault(image, {})[number] = row
    return truth


@dataclass
class CellScores:
    """Rows of (true labels, the method's labels and scores, the baseline's labels and scores) over all cells."""

    num_classes: int
    targets: list = field(default_factory=list)
    predicted: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    baseline_predicted: list = field(default_factory=list)
    baseline_scores: list = field(default_factory=list)
    missed: list = field(default_factory=list)  # true cells no predicted cell matched
    matched_cells: int = 0
    true_cells: int = 0
    predicted_cells: int = 0

    def add(self, prediction: CellPrediction, image_predicted: np.ndarray, true_mask: np.ndarray,
            true_labels: dict[int, np.ndarray], predicted_mask: np.ndarray) -> None:
        """One image: its cell prediction (on `predicted_mask`), its image-level labels and its truth."""
        pairs = match_cells(true_mask, predicted_mask, COMPETITION_IOU)
        row_of = {cell: row for row, cell in enumerate(prediction.cells)}
        empty = np.zeros(self.num_classes, dtype=bool)
        for true_cell, labels in true_labels.items():
            if true_cell in pairs and pairs[true_cell] in row_of:
                self._row(labels, prediction, row_of.pop(pairs[true_cell]), image_predicted)
                self.matched_cells += 1
            else:
                self.missed.append(labels)
        for row in row_of.values():  # predicted cells that match no true cell
            self._row(empty, prediction, row, image_predicted)
        self.true_cells += len(true_labels)
        self.predicted_cells += len(prediction.cells)

    def _row(self, labels, prediction: CellPrediction, row: int, image_predicted: np.ndarray) -> None:
        self.targets.append(labels)
        self.predicted.append(prediction.predicted[row])
        self.scores.append(prediction.probabilities[row])
        self.baseline_predicted.append(np.asarray(image_predicted, dtype=bool))
        self.baseline_scores.append(prediction.image_probabilities)

    def summary(self) -> dict:
        """Per-cell macro F1 and mAP of the method and of the baseline, and how many cells matched."""
        targets = np.array(self.targets, dtype=bool).reshape(-1, self.num_classes)
        missed = np.array(self.missed, dtype=bool).reshape(-1, self.num_classes)
        # Missed true cells get no labels from either: false negatives in F1 and never found in the mAP.
        all_targets = np.concatenate([targets, missed])
        no_labels = np.zeros_like(missed)

        def f1(predicted):
            return cell_macro_f1(all_targets, np.concatenate([np.array(predicted, dtype=bool).reshape(targets.shape),
                                                              no_labels]))

        def average_precision(scores):
            return competition_map(targets, np.array(scores).reshape(targets.shape), missed)

        return {
            "true_cells": self.true_cells, "predicted_cells": self.predicted_cells,
            "matched_cells": self.matched_cells, "match_iou": COMPETITION_IOU,
            "cell_macro_f1": f1(self.predicted), "baseline_cell_macro_f1": f1(self.baseline_predicted),
            "cell_map": average_precision(self.scores), "baseline_cell_map": average_precision(self.baseline_scores),
        }


def truth_mask(data_root: str | Path, image_id: str, shape: tuple[int, int]) -> np.ndarray:
    return read_mask(find_mask(Path(data_root) / TRUTH_MASKS_DIR, image_id), shape)


CELL_METRICS_FILE = "cell_metrics.json"


def evaluate_cells(predictor, table, image_probabilities: np.ndarray, data_root: str | Path, masks_dir=None, *,
                   tta: bool = False, batch_size: int = 32, show_progress: bool = False) -> dict:
    """Per-cell scores of a run on a table of images with per-cell truth under `data_root`, beside the baseline.
    The cells are `masks_dir`'s, else found by segmentation; the truth is always DATA/cells.csv and DATA/cells/.
    Raises DataError listing the images that could not be scored."""
    from protloc.cells.predict import predict_table_cells

    truth = read_cell_truth(data_root, predictor.config.num_classes)
    scores = CellScores(predictor.config.num_classes)
    problems = []
    keep = np.array([str(i) in truth for i in table.frame["id"]])
    if not keep.any():
        raise DataError(f"{Path(data_root) / CELLS_CSV}: none of the {len(table)} images has rows here")
    table, image_probabilities = table.subset(np.flatnonzero(keep)), image_probabilities[keep]
    image_predicted = predictor.decide(image_probabilities)
    for row, prediction, mask, problem in predict_table_cells(predictor, table, image_probabilities, masks_dir,
                                                              tta=tta, batch_size=batch_size,
                                                              show_progress=show_progress):
        if problem:
            problems.append(problem)
            continue
        image_id = prediction.image_id
        try:
            true_mask = truth_mask(data_root, image_id, mask.shape)
        except DataError as error:
            problems.extend(error.lines)
            continue
        scores.add(prediction, image_predicted[row], true_mask, truth[image_id], mask)
    if problems:
        raise DataError(*problems)
    return {"images": int(len(table)), "masks": "segmentation" if masks_dir is None else str(masks_dir),
            **scores.summary()}
