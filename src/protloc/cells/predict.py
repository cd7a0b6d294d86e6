"""Labels per cell from a model trained on whole images (weak supervision, as in the HPA single-cell
competition, whose winners labelled cell crops with their image's labels and combined cell-level with
image-level predictions).

A cell can only show what its image shows: its candidate labels are its image's, as `protloc predict` gives them.
Two pieces of the cell's own evidence decide which of those it carries:

- its protein signal: the 90th percentile of the green (protein) stain in the cell, above the background,
  relative to the brightest cell of its image. A cell without the protein shows none of its image's patterns.
- the model on the cell alone: its image with every other pixel dark (the cell at the scale the model was
  trained on, where a tight crop blown up to the model's input size would not be), each class's probability
  relative to the image's most confident cell for that class.

Each saturates at EVIDENCE_LEVEL (0.3) of the image's best: evidence = min(1, signal / 0.3) * min(1, own / 0.3).
A cell's score for a class is its image's probability times that evidence (what ranks cells, for the
competition's mAP); its labels are the image's labels for which its evidence is full. On held-out demo data this
beat "every cell gets its image's labels" in per-cell macro F1 and mAP (docs/cells.md has the figures and what
each piece gained).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from protloc.cells.masks import GEOMETRY_COLUMNS, cell_geometry, find_mask, read_mask
from protloc.cells.segment import NoNuclei, Stains, segment_cells
from protloc.errors import DataError, ProtlocError


EVIDENCE_LEVEL = 0.3  # a cell's evidence is full from this share of its image's best cell up
SIGNAL_PERCENTILE = 90  # a cell's protein signal: this percentile of its green pixels, so a dotted pattern counts


@dataclass
class CellPrediction:
    """One image's cells: their numbers and geometry, the image's probabilities and labels, each cell's protein
    signal, the model's probabilities for the cell alone, its evidence, its scores and its labels."""

    image_id: str
    geometry: pd.DataFrame  # Cell, centroid_y, centroid_x, area, touches_border
    image_probabilities: np.ndarray  # (C,)
    image_predicted: np.ndarray  # (C,) bool
    signal: np.ndarray  # (K,): protein signal relative to the image's brightest cell
    own_probabilities: np.ndarray  # (K, C): the cell alone
    evidence: np.ndarray  # (K, C) in 0..1
    probabilities: np.ndarray  # (K, C): scores, the image's probability times the evidence
    predicted: np.ndarray  # (K, C) bool

    @property
    def cells(self) -> list[int]:
        return self.geometry["Cell"].tolist()


def protein_signal(image: np.ndarray, mask: np.ndarray, cells) -> np.ndarray:
    """Each cell's green (protein) signal above the background (the median of the pixels outside every cell, or
    the image's 1st percentile where cells cover nearly all of it), relative to the brightest cell's; 0..1."""
    green = image[:, :, 1 if image.shape[-1] >= 3 else 0].astype(np.float32)
    outside = mask == 0
    background = float(np.median(green[outside])) if outside.mean() >= 0.01 else float(np.percentile(green, 1))
    signal = np.array([np.percentile(green[mask == k], SIGNAL_PERCENTILE) for k in cells]) - background
    signal = np.clip(signal, 0.0, None)
    top = signal.max(initial=0.0)
    return signal / top if top > 0 else np.ones_like(signal)


def cell_evidence(signal: np.ndarray, own_probabilities: np.ndarray) -> np.ndarray:
    """(K, C) evidence in 0..1: each piece relative to the image's best cell, full from EVIDENCE_LEVEL up."""
    best = np.maximum(own_probabilities.max(axis=0, keepdims=True), 1e-6)
    own = np.minimum(1.0, own_probabilities / best / EVIDENCE_LEVEL)
    return np.minimum(1.0, signal[:, None] / EVIDENCE_LEVEL) * own


def isolate_cells(image: np.ndarray, mask: np.ndarray, cells) -> list[np.ndarray]:
    """For each cell number, the image with every pixel outside that cell dark."""
    return [np.where((mask == k)[:, :, None], image, 0).astype(image.dtype) for k in cells]


def to_model_size(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image resized as the run's eval preset resizes it, and the mask by nearest neighbour, when the image is
    larger than the model's input: each cell is then isolated on the small image, and the preset's resize of
    each isolated cell (a tenth of a second for a 512 px image on a CPU) is not needed."""
    if max(image.shape[:2]) <= size:
        return image, mask
    from protloc.data.images import to_chw_tensor
    from protloc.data.transforms import resize_transform

    small = resize_transform(size)(to_chw_tensor(image)).numpy().transpose(1, 2, 0)
    rows = ((np.arange(size) + 0.5) * mask.shape[0] / size).astype(int)
    cols = ((np.arange(size) + 0.5) * mask.shape[1] / size).astype(int)
    return np.ascontiguousarray(small), mask[np.ix_(rows, cols)]


def predict_cells(predictor, image: np.ndarray, mask: np.ndarray, image_id: str = "0", *,
                  image_probabilities: np.ndarray | None = None, threshold: float | None = None, tta: bool = False,
                  batch_size: int = 32) -> CellPrediction:
    """Per-cell scores and labels of one image (uint8 (H, W, channels) as the run reads it; see Predictor.read)
    and its mask (H, W) of cell numbers. `image_probabilities`, when the image was already predicted, saves
    predicting it again; the image's labels are decided as predict decides them (`threshold`: one for all)."""
    if image_probabilities is None:
        image_probabilities = predictor.predict_proba([image], tta=tta)[0]
    geometry, own = cells_alone(predictor, image, mask, tta=tta, batch_size=batch_size)
    return finish_cells(predictor, image_id, geometry, image_probabilities, own, threshold=threshold)


def cells_alone(predictor, image: np.ndarray, mask: np.ndarray, *, tta: bool = False,
                batch_size: int = 32) -> tuple[pd.DataFrame, np.ndarray]:
    """What each cell shows by itself: its geometry with its protein `signal` (a column), and the model's
    probabilities for the cell alone (K, C)."""
    geometry = cell_geometry(mask)
    geometry["signal"] = protein_signal(image, mask, geometry["Cell"])
    small_image, small_mask = to_model_size(image, mask, predictor.config.image_size)
    own = predictor.predict_proba(isolate_cells(small_image, small_mask, geometry["Cell"]), tta=tta,
                                  batch_size=batch_size)
    return geometry, own.reshape(len(geometry), len(predictor.label_names))


def finish_cells(predictor, image_id: str, geometry: pd.DataFrame, image_probabilities: np.ndarray,
                 own: np.ndarray, threshold: float | None = None) -> CellPrediction:
    """The cells' evidence, scores and labels, from what each shows by itself (cells_alone) and its image's
    probabilities."""
    image_probabilities = np.asarray(image_probabilities)
    image_predicted = predictor.decide(image_probabilities[None], threshold=threshold)[0]
    signal = geometry["signal"].to_numpy(dtype=np.float64)
    evidence = cell_evidence(signal, own) if len(geometry) else np.zeros_like(own)
    probabilities = image_probabilities[None, :] * evidence
    predicted = image_predicted[None, :] & (evidence >= 1.0)
    return CellPrediction(image_id, geometry, image_probabilities, image_predicted, signal, own, evidence,
                          probabilities, predicted)


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
    columns = ["Cell", *GEOMETRY_COLUMNS, "signal"]

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
