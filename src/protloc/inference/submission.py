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


def output_layout(input_layout: str, run_layout: str) -> str:
    """Which Kaggle format to write for an input of `input_layout` predicted by a run trained on `run_layout`."""
    if input_layout in KAGGLE_LAYOUTS:
        return input_layout
    return run_layout if run_layout in KAGGLE_LAYOUTS else Z2G


def submission_frame(ids: Sequence[str], predicted: np.ndarray, layout: str) -> pd.DataFrame:
    """One row per image: the id and its classes as space-separated numbers, in increasing order."""
    id_column, label_column = SUBMISSION_COLUMNS[layout]
    labels = [" ".join(str(i) for i in np.flatnonzero(row)) for row in np.asarray(predicted, dtype=bool)]
    return pd.DataFrame({id_column: list(ids), label_column: labels})


def probability_frame(ids: Sequence[str], probabilities: np.ndarray, label_names: Sequence[str], layout: str) -> pd.DataFrame:
    """The id column of `layout`'s format, then one probability column per class, named by the class."""
    id_column = SUBMISSION_COLUMNS[layout][0]
    frame = pd.DataFrame(np.round(np.asarray(probabilities, dtype=np.float64), PROBABILITY_DECIMALS), columns=list(label_names))
    frame.insert(0, id_column, list(ids))
    return frame
