"""Labels per cell from a model trained on whole images (weak supervision, as in the HPA single-cell
competition, whose winners labelled cell crops with their image's labels and combined cell-level with
image-level predictions).

Each cell is shown to the run's model alone: its image with every other pixel dark (the cell at the scale the
model was trained on, where a tight crop blown up to the model's input size would not be). That gives the cell's
own probabilities. A cell's probability of a class is the geometric mean of its own and its image's:
sqrt(p_cell * p_image). The image's probability says whether the field shows the pattern at all (seen over many
cells, it is the surer of the two); the cell's says whether this cell is one of those that show it. Labels come
from the run's thresholds, as for images, and a cell may have none (the run's rule that every image gets at
least one label does not hold for cells: negative cells are common).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from protloc.cells.masks import GEOMETRY_COLUMNS, cell_geometry, find_mask, read_mask
from protloc.cells.segment import NoNuclei, Stains, segment_cells
from protloc.errors import DataError, ProtlocError


@dataclass
class CellPrediction:
    """One image's cells: their numbers and geometry, and per class the image's, each cell's own and the combined
    probabilities, and the labels."""

    image_id: str
    geometry: pd.DataFrame  # Cell, centroid_y, centroid_x, area, touches_border
    image_probabilities: np.ndarray  # (C,)
    own_probabilities: np.ndarray  # (K, C): the cell alone
    probabilities: np.ndarray  # (K, C): combined
    predicted: np.ndarray  # (K, C) bool

    @property
    def cells(self) -> list[int]:
        return self.geometry["Cell"].tolist()


def combine(image_probabilities: np.ndarray, own_probabilities: np.ndarray) -> np.ndarray:
    """A cell's probability of each class: the geometric mean of its own and its image's."""
    return np.sqrt(np.clip(own_probabilities, 0.0, 1.0) * np.clip(image_probabilities, 0.0, 1.0)[None, :])


def isolate_cells(image: np.ndarray, mask: np.ndarray, cells) -> list[np.ndarray]:
    """For each cell number, the image with every pixel outside that cell dark."""
    return [np.where((mask == k)[:, :, None], image, 0).astype(image.dtype) for k in cells]


def predict_cells(predictor, image: np.ndarray, mask: np.ndarray, image_id: str = "0", *,
                  image_probabilities: np.ndarray | None = None, tta: bool = False,
                  batch_size: int = 32) -> CellPrediction:
    """Per-cell probabilities and labels of one image (uint8 (H, W, channels) as the run reads it; see
    Predictor.read) and its mask (H, W) of cell numbers. `image_probabilities`, when the image was already
    predicted, saves predicting it again."""
    if image_probabilities is None:
        image_probabilities = predictor.predict_proba([image], tta=tta)[0]
    geometry, own = cells_alone(predictor, image, mask, tta=tta, batch_size=batch_size)
    return finish_cells(predictor, image_id, geometry, image_probabilities, own)


def cells_alone(predictor, image: np.ndarray, mask: np.ndarray, *, tta: bool = False,
                batch_size: int = 32) -> tuple[pd.DataFrame, np.ndarray]:
    """The cells' geometry and each cell's own probabilities (K, C): the model on the cell alone."""
    geometry = cell_geometry(mask)
    own = predictor.predict_proba(isolate_cells(image, mask, geometry["Cell"]), tta=tta, batch_size=batch_size)
    return geometry, own.reshape(len(geometry), len(predictor.label_names))


def finish_cells(predictor, image_id: str, geometry: pd.DataFrame, image_probabilities: np.ndarray,
                 own: np.ndarray) -> CellPrediction:
    """The cells' probabilities (combined with the image's) and labels by the run's thresholds."""
    probabilities = combine(image_probabilities, own)
    predicted = predictor.decide(probabilities, allow_empty=True)
    return CellPrediction(image_id, geometry, np.asarray(image_probabilities), own, probabilities, predicted)


def baseline_labels(prediction: CellPrediction, image_predicted: np.ndarray) -> np.ndarray:
    """The baseline: every cell gets its image's predicted labels."""
    return np.repeat(np.asarray(image_predicted, dtype=bool)[None, :], len(prediction.geometry), axis=0)


def cell_frame(predictions: list[CellPrediction], label_names: list[str], *, probabilities: bool = False,
               id_column: str = "Image") -> pd.DataFrame:
    """One row per cell: the image id, the cell number and its labels (space-separated class numbers), or with
    `probabilities` one column per class (named by class) and the cell's geometry."""
    frames = []
    for prediction in predictions:
        if probabilities:
            frame = pd.DataFrame(np.round(prediction.probabilities.astype(np.float64), 6), columns=list(label_names))
            frame = pd.concat([frame, prediction.geometry[GEOMETRY_COLUMNS].reset_index(drop=True)], axis=1)
        else:
            frame = pd.DataFrame({"Label": [" ".join(map(str, np.flatnonzero(row))) for row in prediction.predicted]})
        frame.insert(0, "Cell", prediction.cells)
        frame.insert(0, id_column, prediction.image_id)
        frames.append(frame)
    columns = [id_column, "Cell"] + (list(label_names) + GEOMETRY_COLUMNS if probabilities else ["Label"])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def cell_mask(image: np.ndarray, image_id: str, where: str, masks_dir=None) -> np.ndarray:
    """The cells of an image (uint8 (H, W, channels) as the run reads it): DIR/<id>.png from `masks_dir`, checked
    against the image's size, or found by `segment_cells` in its red, blue (and yellow) channels. Raises
    DataError naming the file (`where` names the image)."""
    if masks_dir is not None:
        return read_mask(find_mask(masks_dir, image_id), image.shape[:2])
    channels = image.shape[-1]
    if channels < 3:
        raise DataError(f"{where}: a run of the green channel alone cannot find cells; give masks with --masks DIR")
    planes = image.astype(np.float32)
    try:
        return segment_cells(Stains(blue=planes[..., 2], red=planes[..., 0],
                                    yellow=planes[..., 3] if channels == 4 else None)).astype(np.int32)
    except NoNuclei as error:
        raise DataError(f"{where}: {error}") from None


def predict_table_cells(predictor, table, image_probabilities: np.ndarray, masks_dir=None, *, tta: bool = False,
                        batch_size: int = 32, show_progress: bool = False):
    """(row, CellPrediction or None, mask or None, problem) for each image of a table, in its order; the image's
    probabilities come from predicting the table first. A problem (unreadable image or mask, no nuclei) is one
    line naming the file."""
    from tqdm import tqdm

    rows = zip(table.frame["id"], table.frame["source"], image_probabilities)
    for row, (image_id, source, probabilities) in enumerate(tqdm(list(rows), desc="cells", unit="img",
                                                               disable=not show_progress, leave=False)):
        where = source if isinstance(source, str) else source[0]
        try:
            image = predictor.read(source)
            mask = cell_mask(image, str(image_id), where, masks_dir)
        except ProtlocError as error:
            yield row, None, None, error.lines[0]
            continue
        prediction = predict_cells(predictor, image, mask, str(image_id), image_probabilities=probabilities,
                                   tta=tta, batch_size=batch_size)
        yield row, prediction, mask, ""


def cells_on_ranks(predictor, table, masks_dir=None, *, ranks, tta: bool = False, batch_size: int = 32,
                   show_progress: bool = False) -> list[tuple[pd.DataFrame | None, np.ndarray | None, str]] | None:
    """The per-cell step of predict_table_cells spread over the processes of a distributed prediction
    (protloc.inference.distributed.Ranks), each its share of the table's images: every process calls it with the
    same table. On process 0, per row of the table, (geometry, the cells' own probabilities, "") or (None, None,
    problem); finish_cells then combines them with the images' probabilities. None on the other processes."""
    columns = ["Cell", *GEOMETRY_COLUMNS]

    def run_item(row: int):
        image_id, source = table.frame["id"].iloc[row], table.frame["source"].iloc[row]
        where = source if isinstance(source, str) else source[0]
        try:
            image = predictor.read(source)
            mask = cell_mask(image, str(image_id), where, masks_dir)
        except ProtlocError as error:
            return {}, error.lines[0]
        geometry, own = cells_alone(predictor, image, mask, tta=tta, batch_size=batch_size)
        return {"own": own.astype(np.float32), **{column: geometry[column].to_numpy() for column in columns}}, ""

    collected = ranks.run_each(run_item, len(table), show_progress=show_progress, desc="cells")
    if collected is None:
        return None
    results = []
    for parts, problem in zip(collected.pieces_by_row(), collected.problems):
        if problem:
            results.append((None, None, problem))
        elif not parts:  # a mask without cells
            results.append((pd.DataFrame({column: [] for column in columns}),
                            np.zeros((0, len(predictor.label_names)), np.float32), ""))
        else:
            results.append((pd.DataFrame({column: parts[column] for column in columns}), parts["own"], ""))
    return results
