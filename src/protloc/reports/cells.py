"""Pictures of cells: an image with each cell outlined and labelled with its predicted classes.

White outlines for cells with labels, grey for cells with none; each cell's class numbers at its centre, and a
legend of the numbers under the image. explain --cells, the run report's samples and the service share them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.segmentation import find_boundaries

from protloc.cells.predict import CellPrediction
from protloc.plots import rgb_view, subplots
from protloc.reports import html

LABELLED_OUTLINE = (255, 255, 255)
NEGATIVE_OUTLINE = (140, 140, 140)


def outline_cells(image: np.ndarray, mask: np.ndarray, labelled_cells) -> np.ndarray:
    """The RGB view of `image` (uint8) with each cell's boundary drawn: white for the cells in `labelled_cells`,
    grey for the others."""
    picture = rgb_view(image).copy()
    edges = find_boundaries(mask, mode="inner")
    labelled = np.isin(mask, list(labelled_cells))
    picture[edges & labelled] = LABELLED_OUTLINE
    picture[edges & ~labelled] = NEGATIVE_OUTLINE
    return picture


def cell_label_text(prediction: CellPrediction) -> list[str]:
    """Each cell's classes as numbers, "-" for none."""
    return [",".join(map(str, np.flatnonzero(row))) or "-" for row in prediction.predicted]


def plot_cells(image: np.ndarray, mask: np.ndarray, prediction: CellPrediction, label_names: list[str],
               title: str = ""):
    """The figure: the image with its cells outlined and numbered by class, and a legend of the classes shown."""
    labelled = [cell for cell, row in zip(prediction.cells, prediction.predicted) if row.any()]
    side = 7.0
    figure, axes = subplots(figsize=(side, side + 0.9), layout="constrained")
    axes.imshow(outline_cells(image, mask, labelled))
    axes.set_axis_off()
    font = 7.0
    for (y, x), text in zip(prediction.geometry[["centroid_y", "centroid_x"]].to_numpy(), cell_label_text(prediction)):
        axes.text(x, y, text, color="white", fontsize=font, ha="center", va="center",
                  bbox=dict(boxstyle="round,pad=0.15", facecolor="black", alpha=0.55, linewidth=0))
    shown = sorted({int(c) for row in prediction.predicted for c in np.flatnonzero(row)})
    legend = "; ".join(f"{c} {label_names[c]}" for c in shown) or "no cell has a label"
    negative = len(prediction.cells) - len(labelled)
    axes.set_title(f"{title}\n{len(prediction.cells)} cells, {negative} without a label (grey)".strip(), fontsize=9)
    figure.text(0.5, 0.01, legend, ha="center", va="bottom", fontsize=8, wrap=True)
    return figure


def cell_figure_name(figure_name: str) -> str:
    """'abc.png' -> 'abc_cells.png', beside an image's explanation figure."""
    return figure_name[:-4] + "_cells.png" if figure_name.endswith(".png") else figure_name + "_cells.png"


def cell_blocks(figures: list[tuple[str, str]], prefix: str = "") -> list[str]:
    """The page's blocks for (image id, figure file) pairs."""
    if not figures:
        return []
    blocks = [html.heading("Cells"),
              html.paragraph("Each cell outlined with the classes it was given (numbers, legend below each picture): "
                             "the cell shown to the model alone, its probabilities combined with its image's "
                             "(docs/cells.md).")]
    return blocks + [html.image(prefix + name, f"{image_id}: cells") for image_id, name in figures]


def write_cell_figures(predictor, table, out_dir: str | Path, figure_names: list[str], masks_dir=None) -> tuple[
        list[tuple[str, str]], list[str]]:
    """One cell picture per image of `table` into `out_dir`, named after each image's figure; returns the (id,
    file) pairs drawn and a line for each image whose cells could not be found."""
    from protloc.cells.predict import predict_table_cells
    from protloc.files import save_figure

    probabilities = predictor.predict_table(table).outputs
    drawn, problems = [], []
    for row, prediction, mask, problem in predict_table_cells(predictor, table, probabilities, masks_dir):
        if problem:
            problems.append(problem)
            continue
        image = predictor.read(table.frame["source"][row])
        name = cell_figure_name(figure_names[row])
        save_figure(Path(out_dir) / name, plot_cells(image, mask, prediction, predictor.label_names,
                                                     prediction.image_id))
        drawn.append((prediction.image_id, name))
    return drawn, problems
