"""Retuning a run's per-class thresholds on other labelled data: the policy of `protloc tune`, callable from Python.

Each class gets the threshold with the best F1 on the data (inference/thresholds.py), except a class without
positive images there, which says nothing about its threshold and keeps the run's. Scores before and after are
those of labels as `predict` gives them (every image at least one label).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from protloc.data.readers import DatasetTable
from protloc.errors import DataError, ProtlocError, listed
from protloc.data.check import find_missing_files
from protloc.inference.predictor import Predictor
from protloc.inference.thresholds import apply_thresholds, tune_thresholds
from protloc.metrics import multilabel_scores
from protloc.runs import RunConfig


@dataclass
class Retuning:
    """What retuning found: thresholds and scores before and after, per class."""

    label_names: list[str]
    old: np.ndarray  # (C,) the run's thresholds
    new: np.ndarray  # (C,) tuned; the run's where `absent`
    absent: np.ndarray  # (C,) bool: no positive image of the class in the data
    before: dict  # multilabel_scores at the old thresholds
    after: dict
    data: str
    images: int
    tta: bool

    def table(self) -> pd.DataFrame:
        """One row per class, then macro F1."""
        report = pd.DataFrame({"class": self.label_names, "threshold before": self.old, "threshold after": self.new,
                               "F1 before": self.before["f1_per_class"], "F1 after": self.after["f1_per_class"]})
        report.loc[len(report)] = ["macro F1", np.nan, np.nan, self.before["f1_macro"], self.after["f1_macro"]]
        return report

    @property
    def kept(self) -> list[str]:
        """The classes that kept the run's threshold (no positive images in the data)."""
        return [name for name, gone in zip(self.label_names, self.absent) if gone]

    def apply_to(self, config: RunConfig) -> None:
        """The new thresholds into `config`, with the record of what they were tuned on."""
        config.thresholds = [float(value) for value in self.new]
        config.training.thresholds_tuned_on = {
            "data": self.data, "images": self.images, "tta": self.tta,
            "f1_macro_before": self.before["f1_macro"], "f1_macro_after": self.after["f1_macro"],
        }


def check_tuning_data(table: DatasetTable, config: RunConfig, data: str, run: str) -> None:
    """Refuse data that cannot tune the run: unlabelled, labelled with other classes, or naming missing files."""
    if not table.labelled:  # tuning on no positives would set every threshold to 0.5
        raise DataError(f"{data}: has no labels ({table.layout} layout); tune needs labelled data with the run's "
                        f"classes, e.g. a train.csv; thresholds unchanged")
    if list(table.label_set.names) != list(config.label_names):
        raise ProtlocError(
            f"{data}: its labels are {table.label_set.name} ({len(table.label_set)} classes) but {run} predicts "
            f"{config.label_set} ({config.num_classes} classes); tune on data labelled with the run's classes (see --labels)"
        )
    missing = find_missing_files(table)
    if missing:
        raise DataError(*listed(missing), f"{len(missing)} image files named by {data} are missing; thresholds unchanged")


def retune(predictor: Predictor, table: DatasetTable, *, data: str, tta: bool = False, batch_size: int = 32,
           workers: int = 0, show_progress: bool = False) -> Retuning:
    """Predict `table` (labelled with the run's classes; check_tuning_data) and tune each class's threshold."""
    result = predictor.predict_table(table, batch_size=batch_size, workers=workers, tta=tta, show_progress=show_progress)
    if result.unreadable:
        raise DataError(*listed(result.unreadable),
                        f"{len(result.unreadable)} of {len(table)} images could not be read; thresholds unchanged")
    probabilities, targets = result.outputs, table.targets
    old = np.asarray(predictor.config.thresholds, dtype=np.float64)
    absent = targets.sum(axis=0) == 0
    new = np.where(absent, old, tune_thresholds(targets, probabilities))
    return Retuning(label_names=list(predictor.config.label_names), old=old, new=new, absent=absent,
                    before=multilabel_scores(targets, apply_thresholds(probabilities, old)),
                    after=multilabel_scores(targets, apply_thresholds(probabilities, new)),
                    data=data, images=len(table), tta=bool(tta))
