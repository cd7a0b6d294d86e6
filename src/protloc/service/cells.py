"""POST /predict with cells=true: each image's cells, found by segmentation, labelled one by one, with outlines
the page can draw (polygons in the image's pixel coordinates)."""
from __future__ import annotations

import numpy as np
from skimage import measure

from protloc.cells.predict import cell_mask, predict_cells
from protloc.service.schemas import CellResult

OUTLINE_TOLERANCE = 1.0  # pixels an outline's polygon may stray from the mask's boundary: a few dozen points a cell


def cell_outline(mask: np.ndarray, cell: int) -> list[list[float]]:
    """The longest boundary of cell `cell` as [x, y] points, a closed polygon (first point repeated last)."""
    padded = np.pad(mask == cell, 1)  # a cell at the image's edge still gets a closed outline
    contours = measure.find_contours(padded.astype(np.uint8), 0.5)
    if not contours:
        return []
    longest = measure.approximate_polygon(max(contours, key=len), OUTLINE_TOLERANCE) - 1.0
    return [[round(float(x), 1), round(float(y), 1)] for y, x in longest]


def cell_results(predictor, image: np.ndarray, probabilities: np.ndarray, name: str,
                 threshold: float | None = None) -> list[CellResult]:
    """The cells of one decoded image (uint8 (H, W, channels)). Raises DataError ('NAME: no nuclei ...')."""
    mask = cell_mask(image, name, name)
    prediction = predict_cells(predictor, image, mask, name, image_probabilities=probabilities, threshold=threshold)
    decided = prediction.predicted
    names = predictor.label_names
    results = []
    for row, geometry in enumerate(prediction.geometry.itertuples(index=False)):
        classes = [int(c) for c in np.flatnonzero(decided[row])]
        results.append(CellResult(
            cell=int(geometry.Cell), labels=[names[c] for c in classes], classes=classes,
            probabilities={label: float(p) for label, p in zip(names, prediction.probabilities[row])},
            centroid=[float(geometry.centroid_x), float(geometry.centroid_y)], area=int(geometry.area),
            touches_border=bool(geometry.touches_border), outline=cell_outline(mask, int(geometry.Cell))))
    return results
