"""Prediction files in the Kaggle submission formats.

- Zero-to-GANs (10 labels): `Image,Label`, Label = space-separated class numbers, Image = file name without .png.
- HPA 2018 (28 labels): `Id,Predicted`, same label format.
An input in one of these layouts gets its own format; folders, image files and generic CSVs get the format
of the layout the run was trained on (config.layout), which is `Image,Label` for a Zero-to-GANs run.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from protloc.data import HPA2018, Z2G

SUBMISSION_COLUMNS = {Z2G: ("Image", "Label"), HPA2018: ("Id", "Predicted")}
KAGGLE_LAYOUTS = tuple(SUBMISSION_COLUMNS)
# Six decimals are far below any threshold step and keep files a third of the size of full floats.
PROBABILITY_DECIMALS = 6
NAMES_COLUMN = "Class names"  # predict --label-names: the labels spelt out, "; "-joined (names hold spaces)
NAMES_SEPARATOR = "; "


def output_layout(input_layout: str, run_layout: str) -> str:
    """Which Kaggle format to write for an input of `input_layout` predicted by a run trained on `run_layout`."""
    if input_layout in KAGGLE_LAYOUTS:
        return input_layout
    return run_layout if run_layout in KAGGLE_LAYOUTS else Z2G


def class_names(predicted: np.ndarray, label_names: Sequence[str]) -> list[str]:
    """Each row's classes by name, "; "-joined, in class order."""
    return [NAMES_SEPARATOR.join(label_names[i] for i in np.flatnonzero(row)) for row in np.asarray(predicted, dtype=bool)]


def submission_frame(ids: Sequence[str], predicted: np.ndarray, layout: str,
                     label_names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per image: the id and its classes as space-separated numbers, in increasing order; with
    `label_names`, a last column of their names too (the file is then more than a Kaggle submission)."""
    id_column, label_column = SUBMISSION_COLUMNS[layout]
    labels = [" ".join(str(i) for i in np.flatnonzero(row)) for row in np.asarray(predicted, dtype=bool)]
    frame = pd.DataFrame({id_column: list(ids), label_column: labels})
    if label_names is not None:
        frame[NAMES_COLUMN] = class_names(predicted, label_names)
    return frame


def probability_frame(ids: Sequence[str], probabilities: np.ndarray, label_names: Sequence[str], layout: str,
                      predicted: np.ndarray | None = None) -> pd.DataFrame:
    """The id column of `layout`'s format, then one probability column per class, named by the class; with
    `predicted`, the predicted classes' names before them."""
    id_column = SUBMISSION_COLUMNS[layout][0]
    frame = pd.DataFrame(np.round(np.asarray(probabilities, dtype=np.float64), PROBABILITY_DECIMALS), columns=list(label_names))
    if predicted is not None:
        frame.insert(0, NAMES_COLUMN, class_names(predicted, label_names))
    frame.insert(0, id_column, list(ids))
    return frame
